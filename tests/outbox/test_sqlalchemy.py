"""The outbox in SQLAlchemy 2.x sessions (sync and asyncio) and CRUD capture, on PostgreSQL and
SQLite; the Alembic helper."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Numeric, String, create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from tests.outbox.conftest import Recorder, create_database, drop_database, wait_until
from tidings.context import event_context
from tidings.event import Event
from tidings.outbox import Outbox, OutboxError, Relay, schema
from tidings.outbox import sqlalchemy as sa_outbox


class Base(DeclarativeBase):
    pass


class Link(Base):
    __tablename__ = "sa_links"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    amount: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    status: Mapped[str] = mapped_column(String, default="active")
    secret: Mapped[str | None] = mapped_column(String, nullable=True)


class LinkArchived(Event, type="outbox.sa.link_archived"):
    link_id: str


def _sa_url(url: str, asyncio_driver: bool = False) -> str:
    if url.startswith("sqlite"):
        return url.replace("sqlite://", "sqlite+aiosqlite://") if asyncio_driver else url
    return url.replace("postgresql://", "postgresql+psycopg://")


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'sa.db'}"
        engine = create_engine(db)
        with engine.begin() as conn:
            for statement in schema.statements("sqlite"):
                conn.exec_driver_sql(statement)
        Base.metadata.create_all(engine)
        engine.dispose()
        yield db
        return
    db = create_database("tidings_outbox_sa")
    engine = create_engine(_sa_url(db))
    Base.metadata.create_all(engine)
    engine.dispose()
    try:
        yield db
    finally:
        drop_database(db)


def _outbox_rows(url: str) -> list[dict[str, Any]]:
    engine = create_engine(_sa_url(url))
    with engine.connect() as conn:
        found = conn.execute(text("SELECT type, payload FROM tidings_outbox ORDER BY id")).all()
    engine.dispose()
    return [{"type": t, **json.loads(p if isinstance(p, str) else json.dumps(p))} for t, p in found]


def test_add_writes_in_the_session_transaction_and_rollback_drops_it(url: str) -> None:
    outbox = Outbox()
    engine = create_engine(_sa_url(url))
    with Session(engine) as session, session.begin():
        session.add(Link(id="l1", amount=Decimal("10.50")))
        outbox.add(session, LinkArchived(link_id="l1", aggregate_id="l1"))
        assert sa_outbox.pending_events(session) == 1
    with Session(engine) as session:
        session.add(Link(id="l2", amount=Decimal("1")))
        outbox.add(session, LinkArchived(link_id="l2", aggregate_id="l2"))
        session.flush()  # written by the flush, then rolled back with it
        session.rollback()
    with Session(engine) as session, session.begin():
        # no ORM change at all: the event is written when the session commits
        outbox.add(session, LinkArchived(link_id="l3", aggregate_id="l3"))
    with engine.begin() as conn:  # a Core connection writes at once, in its transaction
        outbox.add(conn, LinkArchived(link_id="l4", aggregate_id="l4"))
    with engine.connect() as conn:
        outbox.add(conn, LinkArchived(link_id="l5", aggregate_id="l5"))
        conn.rollback()
    engine.dispose()
    assert [r["data"]["link_id"] for r in _outbox_rows(url)] == ["l1", "l3", "l4"]


def test_a_savepoint_that_rolls_back_drops_its_events(url: str) -> None:
    outbox = Outbox()
    engine = create_engine(_sa_url(url))
    with Session(engine) as session, session.begin():
        outbox.add(session, LinkArchived(link_id="outer", aggregate_id="o"))
        nested = session.begin_nested()
        outbox.add(session, LinkArchived(link_id="inner", aggregate_id="i"))
        nested.rollback()
        with session.begin_nested():
            outbox.add(session, LinkArchived(link_id="kept", aggregate_id="k"))
    engine.dispose()
    assert [r["data"]["link_id"] for r in _outbox_rows(url)] == ["outer", "kept"]


def test_a_bad_event_fails_the_session_even_if_the_error_is_swallowed(url: str) -> None:
    outbox = Outbox()
    engine = create_engine(_sa_url(url))
    with Session(engine) as session:
        session.add(Link(id="orphan", amount=Decimal("1")))
        bad = Event(type="outbox.sa.bad", data={"x": {1, 2}.__iter__()})
        try:
            outbox.add(session, bad)
        except OutboxError as exc:
            assert bad.id in str(exc) and "'outbox.sa.bad'" in str(exc)
        with pytest.raises(OutboxError, match="cannot commit"):
            session.commit()
        session.rollback()
        session.add(Link(id="fine", amount=Decimal("2")))
        session.commit()  # a new transaction is not doomed
        assert session.scalars(select(Link.id)).all() == ["fine"]
    engine.dispose()


def test_crud_capture_emits_create_update_delete_with_changes_and_context(url: str) -> None:
    outbox = Outbox()
    sa_outbox.capture(Link, outbox, exclude=["secret"])
    try:
        engine = create_engine(_sa_url(url))
        with (
            event_context(user_id="u-7", tenant_id="t-1", request_id="r-1", correlation_id="c-1"),
            Session(engine) as session,
        ):
            with session.begin():
                session.add(Link(id="p1", amount=Decimal("10.00"), secret="s3cr3t"))
            with session.begin():
                link = session.get(Link, "p1")
                assert link is not None
                link.amount = Decimal("12.00")
                link.status = "paused"
            with session.begin():
                session.delete(link)
            with session.begin():
                session.get(Link, "nothing")  # reads are off by default
        engine.dispose()
    finally:
        sa_outbox.uncapture(Link)
    got = _outbox_rows(url)
    assert [r["type"] for r in got] == [
        "public.sa_links.create",
        "public.sa_links.update",
        "public.sa_links.delete",
    ]
    create, update, delete = got
    assert create["data"] == {"id": "p1", "amount": "10.00", "status": "active"}
    assert update["data"] == {
        "key": {"id": "p1"},
        "changes": {
            "amount": {"old": "10.00", "new": "12.00"},
            "status": {"old": "active", "new": "paused"},
        },
    }
    assert delete["data"]["id"] == "p1"
    for r in got:
        assert "secret" not in json.dumps(r)
        assert (r["userid"], r["tenantid"], r["requestid"], r["correlationid"]) == (
            "u-7",
            "t-1",
            "r-1",
            "c-1",
        )
        assert r["aggregateid"] == "p1" and r["aggregatetype"] == "sa_links"
        assert r["metadata"]["entity"] == "sa_links"


def test_read_capture_when_asked(url: str) -> None:
    outbox = Outbox()
    sa_outbox.capture(Link, outbox, schema="shop", entity="links", operations=["create", "read"])
    try:
        engine = create_engine(_sa_url(url))
        with Session(engine) as session:
            with session.begin():
                session.add(Link(id="r1", amount=Decimal("1")))
            session.expunge_all()
            with session.begin():
                assert session.get(Link, "r1") is not None
        engine.dispose()
    finally:
        sa_outbox.uncapture(Link)
    assert [r["type"] for r in _outbox_rows(url)] == ["shop.links.create", "shop.links.read"]


def test_capture_refuses_what_it_cannot_do() -> None:
    with pytest.raises(OutboxError, match="not a mapped SQLAlchemy class"):
        sa_outbox.capture(dict, Outbox())
    with pytest.raises(OutboxError, match="operations"):
        sa_outbox.capture(Link, Outbox(), operations=["upsert"])


def test_async_session_uses_the_same_call(url: str) -> None:
    outbox = Outbox()
    sa_outbox.capture(Link, outbox)

    async def main() -> None:
        engine = create_async_engine(_sa_url(url, asyncio_driver=True))
        async with AsyncSession(engine) as session:
            async with session.begin():
                session.add(Link(id="a1", amount=Decimal("3")))
                outbox.add(session, LinkArchived(link_id="a1", aggregate_id="a1"))
            async with session.begin():
                outbox.add(session, LinkArchived(link_id="a2", aggregate_id="a2"))
                await session.rollback()
        await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        sa_outbox.uncapture(Link)
    assert [r["type"] for r in _outbox_rows(url)] == [
        "outbox.sa.link_archived",
        "public.sa_links.create",
    ]


def test_relay_wakes_on_a_session_commit_and_publishes(url: str) -> None:
    outbox = Outbox()
    engine = create_engine(_sa_url(url))
    got = Recorder()
    with Relay(url, got, poll_interval=30.0):  # only a wake-up can be this quick
        with Session(engine) as session, session.begin():
            session.add(Link(id="w1", amount=Decimal("1")))
            outbox.add(session, LinkArchived(link_id="w1", aggregate_id="w1"))
        wait_until(lambda: len(got) == 1, 10, lambda: f"{len(got)} published")
    engine.dispose()
    assert isinstance(got.events[0], LinkArchived) and got.events[0].link_id == "w1"


def test_alembic_helper_creates_and_drops_the_table(url: str) -> None:
    engine = create_engine(_sa_url(url))
    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        schema.downgrade(op)
        schema.upgrade(op)
        schema.upgrade(op)  # idempotent: a later `tidings migrate` finds it done
    with Session(engine) as session, session.begin():
        Outbox().add(session, LinkArchived(link_id="al", aggregate_id="al"))
    assert len(_outbox_rows(url)) == 1
    with engine.begin() as conn:
        schema.downgrade(Operations(MigrationContext.configure(conn)))
        found = conn.execute(
            text(
                "SELECT count(*) FROM sqlite_master WHERE name = 'tidings_outbox'"
                if url.startswith("sqlite")
                else "SELECT count(*) FROM pg_tables WHERE tablename = 'tidings_outbox'"
            )
        ).scalar()
    engine.dispose()
    assert found == 0
    assert "CREATE TABLE IF NOT EXISTS tidings_outbox" in schema.ddl("postgresql")
