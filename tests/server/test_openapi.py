"""``/openapi.json`` describes the server it comes from, ``/docs`` shows it, and Schemathesis,
driven by that description, finds no 5xx and no error outside the problem shape.

The fuzz run is bounded (``EXAMPLES`` per operation, valid and invalid input) so it stays well
inside a minute on two busy cores; it runs against a real ``tidings serve`` app under uvicorn
in a thread, with an admin key so every route is reached.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from tests.server.conftest import Running, free_port
from tidings.config import load
from tidings.server.app import create_app
from tidings.server.service import Service

Start = Callable[..., Awaitable[Running]]

EXAMPLES = 6  # per operation and mode; ~30 operations x 2 modes
KEY = "fuzz-admin-key-0123456789"
PROBLEM_KEYS = {"type", "title", "status", "detail"}


async def test_the_document_is_openapi_3_1_of_every_route(serve: Start) -> None:
    app = await serve()
    status, doc = await app.get("/openapi.json")
    assert status == 200 and doc["openapi"] == "3.1.0", doc
    paths = doc["paths"]
    for path, method in [
        ("/events", "get"), ("/events", "post"), ("/streams/{stream}", "get"),
        ("/subscriptions", "get"), ("/endpoints/{id}", "patch"), ("/dlq", "get"),
        ("/deliveries/{id}", "get"), ("/replays", "post"), ("/replays/{id}", "get"),
        ("/api-keys", "post"), ("/health", "get"), ("/metrics", "get"),
    ]:  # fmt: skip
        assert method in paths.get(path, {}), (path, method, sorted(paths))
    get_events = paths["/events"]["get"]
    names = {p["name"] for p in get_events["parameters"]}
    assert {"type", "stream", "since", "until", "correlation_id", "cursor", "limit"} <= names
    assert get_events["x-scope"] == "read"
    assert paths["/events"]["post"]["x-scope"] == "publish"
    assert paths["/health"]["get"]["security"] == []
    problem = paths["/events"]["get"]["responses"]["400"]["content"]["application/problem+json"]
    assert problem["schema"] == {"$ref": "#/components/schemas/Problem"}, problem
    ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(ids) == len(set(ids)), "operation ids are unique"
    endpoint_in = doc["components"]["schemas"]["EndpointIn"]["properties"]
    assert {"url", "events", "timeout", "max_delay"} <= set(endpoint_in)

    async with app.session.get(app.url + "/docs") as resp:
        page = await resp.text()
        assert resp.status == 200 and resp.content_type == "text/html", page[:200]
    assert "<script" not in page and "http://" not in page.replace("http://127", ""), page[:500]
    for path in ("/events", "/replays/{id}", "/api-keys"):
        assert f"<code>{path}</code>" in page, path


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A tidings serve app (SQLite, an admin key) under uvicorn in a thread of its own."""
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    config = {
        "store": {"url": f"sqlite:///{tmp / 'tidings.db'}"},
        "server": {"port": port, "api_key": KEY},
        "events": {"enabled": True, "allow_networks": ["127.0.0.0/8"]},
    }
    path = tmp / "tidings.yaml"
    path.write_text(yaml.safe_dump(config))
    service = Service(load(path, env={}), path)
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="critical")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


def test_schemathesis_finds_no_5xx_and_only_problem_shaped_errors(api_url: str) -> None:
    import schemathesis  # noqa: PLC0415 (a dev dependency: missing is a failure, not a skip)
    from hypothesis import HealthCheck, Phase, given, settings  # noqa: PLC0415
    from hypothesis.errors import Unsatisfiable  # noqa: PLC0415
    from schemathesis.generation import GenerationMode  # noqa: PLC0415

    schema = schemathesis.openapi.from_url(api_url + "/openapi.json")
    headers = {"Authorization": f"Bearer {KEY}"}
    seen: dict[str, int] = {}
    failures: list[str] = []
    started = time.monotonic()

    def check(label: str, case: Any) -> None:
        response = case.call(base_url=api_url, headers=headers, timeout=30)
        status = response.status_code
        seen[f"{label} {status}"] = seen.get(f"{label} {status}", 0) + 1
        where = f"{case.method} {case.formatted_path} query={case.query} body={case.body!r:.300}"
        if status >= 500:
            failures.append(f"{status} on {where}: {response.text[:500]}")
        if status >= 400:
            values = response.headers.get("content-type") or [""]
            ctype = values[0] if isinstance(values, list) else values
            body = response.json() if "json" in ctype else None
            if not ctype.startswith("application/problem+json") or not (
                isinstance(body, dict) and set(body) >= PROBLEM_KEYS and body["status"] == status
            ):
                failures.append(f"{status} not a problem on {where}: {ctype} {response.text[:300]}")

    def fuzz(operation: Any, label: str, mode: GenerationMode) -> None:
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: Any) -> None:
            check(label, case)

        try:
            run()
        except Unsatisfiable:  # no invalid input exists (a route without parameters or body)
            assert mode == GenerationMode.NEGATIVE, label

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events/stream":  # never ends by itself: tests/server/test_streams
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, f"{operation.method.upper()} {operation.path}", mode)
    elapsed = time.monotonic() - started
    print(f"{elapsed:.1f}s", sorted(seen.items()))
    assert not failures, "\n".join(failures[:20])
    assert len({k.rsplit(" ", 1)[0] for k in seen}) >= 25, seen
    assert elapsed < 120, f"the fuzz run took {elapsed:.0f}s; lower EXAMPLES"
