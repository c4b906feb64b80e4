"""A store URL's credentials, in the userinfo or the query, never leave through ``/health``
(which needs no API key) or the log."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import require_service
from tests.server.conftest import Running
from tests.webhooks.conftest import BASE, HOST, PORT, pg_sql

SECRETS = ("userinfo-pw", "query-pw", "ssl-pw")


@pytest.fixture
def pg_url_with_passwords() -> Iterator[str]:
    """A fresh migrated database whose URL carries passwords where libpq reads them; the
    loopback server trusts its clients, so they are carried, not needed."""
    require_service("PostgreSQL", HOST, PORT)
    migrate = pytest.importorskip("tidings.store.migrate").migrate
    name = f"tidings_test_{uuid.uuid4().hex[:12]}"
    pg_sql(f"{BASE}/postgres", f'CREATE DATABASE "{name}"')
    try:
        migrate(f"{BASE}/{name}")
        yield (
            f"postgresql://postgres:userinfo-pw@{HOST}:{PORT}/{name}"
            "?password=query-pw&sslpassword=ssl-pw&application_name=redaction-test"
        )
    finally:
        pg_sql(f"{BASE}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_health_and_log_show_the_store_url_without_credentials(
    serve: Callable[..., Awaitable[Running]],
    pg_url_with_passwords: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tidings")
    app = await serve({"store": {"url": pg_url_with_passwords}})
    status, health = await app.get("/health")
    assert status == 200, health
    shown = health["store"]["url"]
    assert [s for s in SECRETS if s in str(health)] == [], health
    database = urlsplit(pg_url_with_passwords).path.lstrip("/")
    assert shown == (
        f"postgresql://postgres:***@{HOST}:{PORT}/{database}"
        "?password=***&sslpassword=***&application_name=redaction-test"
    )
    started = [r.getMessage() for r in caplog.records if "service started" in r.getMessage()]
    assert started, caplog.text
    assert shown in started[0]
    assert [s for s in SECRETS if s in caplog.text] == [], caplog.text
