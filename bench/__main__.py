"""``python -m bench <name> [options]``: run the benchmark in ``bench/<name>.py``.

Benchmarks are found by module name, so a new one (store, transports, webhooks) plugs in by
adding its file with a ``main(argv) -> int``; nothing here needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import bench


def available() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    names = available()
    usage = f"usage: python -m bench {{{','.join(names)}}} [options]  (<name> --help for options)"
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in names:
        print(f"unknown benchmark {name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"bench.{name}")
    return int(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
