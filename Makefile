# The two commands of the README. Both set everything up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test lint bench clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "tidings needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: set up, then run the main job: `tidings serve` on the embedded SQLite store
run: $(STAMP)
	$(BIN)/tidings --config examples/serve.yaml serve

## test: set up, then lint, type-check and run the whole test suite
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -q

# The dashboard's browser tests drive Debian's chromium (Playwright with executable_path):
# installed from Debian's packages when it is missing (with sudo when not root).
browser:
	@[ -x /usr/bin/chromium ] || { s=; [ "$$(id -u)" = 0 ] || s=sudo; \
	  $$s apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$s apt-get install -y -qq chromium; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench bus

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
