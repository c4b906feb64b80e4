"""Seed 004's payment links service on tidings: FastAPI + SQLAlchemy + PostgreSQL, with typed
domain events emitted through the transactional outbox to Kafka/Redpanda and the event store.

Each endpoint writes its row and its event in ONE database transaction (``outbox.add``); the
relay started by the lifespan publishes committed events to the publisher the environment
names (``EVENT_PUBLISHER_TYPE=redpanda`` + ``REDPANDA_BROKERS`` + ``REDPANDA_TOPIC_PREFIX``,
or ``TIDINGS_PUBLISHER``) and appends them to the event store. A crash between the commit and
the publish loses nothing; a rollback publishes nothing. Run it: see README.md beside this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import Boolean, Numeric, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tidings import Event
from tidings.integrations.fastapi import RequestContextMiddleware, running
from tidings.outbox import Outbox, Relay, schema
from tidings.publishers import open_publisher
from tidings.store import open_store

DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/payment_links")
EVENT_STORE_URL = os.environ.get("EVENT_STORE_URL", DATABASE_URL)


# --- typed domain events ----------------------------------------------------------------------


class PaymentLinkCreated(Event, type="payment_link.created"):
    payment_link_id: str
    organization_id: str
    amount: float
    currency: str
    short_code: str


class PaymentLinkUpdated(Event, type="payment_link.updated"):
    payment_link_id: str
    changes: dict[str, Any]


class PaymentLinkArchived(Event, type="payment_link.archived"):
    payment_link_id: str


outbox = Outbox(types=["payment_link.*"])  # a typo in an event type fails the request


# --- the database -----------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class PaymentLink(Base):
    __tablename__ = "payment_links"
    id: Mapped[str] = mapped_column(String, primary_key=True)
    organization_id: Mapped[str] = mapped_column(String)
    amount: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    currency: Mapped[str] = mapped_column(String(3))
    short_code: Mapped[str] = mapped_column(String, unique=True)
    description: Mapped[str | None] = mapped_column(String, nullable=True)
    archived: Mapped[bool] = mapped_column(Boolean, default=False)


engine = create_async_engine(DATABASE_URL.replace("postgresql://", "postgresql+psycopg://", 1))
Session = async_sessionmaker(engine, expire_on_commit=False)


async def session() -> AsyncIterator[AsyncSession]:
    async with Session() as s:
        yield s


SessionDep = Annotated[AsyncSession, Depends(session)]


def prepare_database() -> None:
    """Create the tables (a real service runs its migrations: Alembic + schema.upgrade(op))."""
    with psycopg.connect(DATABASE_URL) as conn:
        schema.apply(conn)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await asyncio.to_thread(prepare_database)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    store = await asyncio.to_thread(open_store, EVENT_STORE_URL, migrate=True)
    # The relay publishes to the environment's publisher AND appends to the event store.
    relay = Relay(DATABASE_URL, [open_publisher(), store])
    async with running(relays=[relay]) as state:
        app.state.tidings = state
        yield
    store.close()
    await engine.dispose()


app = FastAPI(title="payment links", lifespan=lifespan)
app.add_middleware(RequestContextMiddleware)


# --- the API ----------------------------------------------------------------------------------


class PaymentLinkCreate(BaseModel):
    organization_id: str
    amount: Decimal = Field(gt=0)
    currency: str = Field(min_length=3, max_length=3)
    description: str | None = None


class PaymentLinkUpdate(BaseModel):
    amount: Decimal | None = Field(default=None, gt=0)
    description: str | None = None


def _out(link: PaymentLink) -> dict[str, Any]:
    return {
        "id": link.id,
        "organization_id": link.organization_id,
        "amount": str(link.amount),
        "currency": link.currency,
        "short_code": link.short_code,
        "description": link.description,
        "archived": link.archived,
    }


@app.post("/payment-links", status_code=201)
async def create_payment_link(body: PaymentLinkCreate, db: SessionDep) -> dict[str, Any]:
    async with db.begin():
        link = PaymentLink(
            id=f"pl_{secrets.token_hex(8)}",
            organization_id=body.organization_id,
            amount=body.amount,
            currency=body.currency.upper(),
            short_code=secrets.token_urlsafe(6),
            description=body.description,
        )
        db.add(link)
        outbox.add(
            db,
            PaymentLinkCreated(
                payment_link_id=link.id,
                organization_id=link.organization_id,
                amount=float(link.amount),
                currency=link.currency,
                short_code=link.short_code,
                aggregate_id=link.id,
                aggregate_type="payment_link",
            ),
        )
    return _out(link)


async def _get(db: AsyncSession, link_id: str) -> PaymentLink:
    link = await db.get(PaymentLink, link_id, with_for_update=True)
    if link is None:
        raise HTTPException(404, f"payment link {link_id!r} does not exist")
    return link


@app.patch("/payment-links/{link_id}")
async def update_payment_link(
    link_id: str, body: PaymentLinkUpdate, db: SessionDep
) -> dict[str, Any]:
    async with db.begin():
        link = await _get(db, link_id)
        changes: dict[str, Any] = {}
        if body.amount is not None and body.amount != link.amount:
            changes["amount"] = {"old": float(link.amount), "new": float(body.amount)}
            link.amount = body.amount
        if body.description is not None and body.description != link.description:
            changes["description"] = {"old": link.description, "new": body.description}
            link.description = body.description
        if changes:  # no change, no event
            outbox.add(
                db,
                PaymentLinkUpdated(
                    payment_link_id=link.id,
                    changes=changes,
                    aggregate_id=link.id,
                    aggregate_type="payment_link",
                ),
            )
    return _out(link)


@app.post("/payment-links/{link_id}/archive")
async def archive_payment_link(link_id: str, db: SessionDep) -> dict[str, Any]:
    async with db.begin():
        link = await _get(db, link_id)
        if not link.archived:
            link.archived = True
            outbox.add(
                db,
                PaymentLinkArchived(
                    payment_link_id=link.id, aggregate_id=link.id, aggregate_type="payment_link"
                ),
            )
    return _out(link)
