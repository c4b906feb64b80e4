"""Fixtures of the saved-triggers, API, monitoring and backfill tests: the triggers' job-test
fixtures (a SQLite file, a fresh PostgreSQL schema, a Redis prefix of their own), reused."""

from tests.triggers.jobs.conftest import (  # noqa: F401 - fixtures, found by name
    db_url,
    pg_url,
    queue_url,
    redis_url,
    triggers_pg_database,
)
