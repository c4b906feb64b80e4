"""The durable webhook delivery queue, in the event store's own database (SQLite or PostgreSQL).

One row per (event, endpoint) in ``tidings_webhook_deliveries``; its id is the Standard Webhooks
message id and stays the same across retries, so receivers can deduplicate. ``accept`` writes
the events and their delivery rows in one transaction (``store.append(also=...)``): a delivery
exists exactly when its event does. Workers ``claim`` due rows under a lease (a time limit and a
token); a worker that dies loses its lease when it expires and another worker takes the row over
with a new token, so the old worker's late ``finish`` changes nothing. At-least-once: a request
may be sent twice around a takeover, never lost. The other sources of events (the store's own
subscription, a transport, a Bus; see ``tidings.webhooks.sources``) write deliveries with
``write_deliveries`` or ``ingest`` in their own transactions: at most one set per event.

Concurrency: on PostgreSQL claims lock rows ``FOR UPDATE SKIP LOCKED``, so any number of
processes claim at once without double-claiming; on SQLite each claim is one ``BEGIN IMMEDIATE``
transaction. The queue opens its own connection(s) to the store's database (a pool on
PostgreSQL, one locked connection on SQLite; see ``queue_db``) and applies its migrations
(component ``webhooks``, ``sql/<dialect>/NNN_*.sql``) on open. Its statements are the named
queries of ``sql/<dialect>/queries.sql``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.event import Event, decode, new_id
from tidings.store.base import Criteria, DuplicateEvent, Recorded
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue_db import open_database
from tidings.webhooks.records import (
    MAX_RESPONSE_BODY,
    REPLAY_SHARE,
    STATES,
    Attempt,
    Claimed,
    Outcome,
    QueueStats,
    WebhookDelivery,
    WebhookQueueFull,
    outcome_rows,
    replay_bound,
)

if TYPE_CHECKING:
    from tidings.store.postgres import PostgresStore
    from tidings.store.sqlite import SqliteStore

__all__ = [
    "MAX_RESPONSE_BODY",
    "REPLAY_SHARE",
    "STATES",
    "Attempt",
    "Claimed",
    "DeliveryQueue",
    "Outcome",
    "QueueStats",
    "WebhookDelivery",
    "WebhookQueueFull",
    "replay_bound",
]

log = logging.getLogger("tidings.webhooks.queue")

REMOVED_FROM_CONFIG = "removed from the config"
_EVENT_GONE = "the event is no longer in the store (retention?); nothing to deliver"


def _delivery(row: Sequence[Any]) -> WebhookDelivery:
    return WebhookDelivery(*row[:12])


def _routes(route: Callable[[Event], Sequence[str]], event: Event) -> list[str]:
    ids = route(event)
    if isinstance(ids, str):
        raise TypeError(
            f"route({event.type!r}): expected a sequence of endpoint ids, got the string {ids!r}; "
            "return [endpoint_id]"
        )
    return list(dict.fromkeys(ids))


class DeliveryQueue:
    """Webhook deliveries in the store's database; see the module docstring.

    ``pool_size`` bounds the PostgreSQL connections of this queue (claims, finishes and reads
    of all workers in this process share them).
    """

    def __init__(self, store: SqliteStore | PostgresStore, *, pool_size: int = 4) -> None:
        self._db = open_database(store, pool_size)
        self.store = store
        self._closed = False
        self._known: set[str] = set()  # endpoint ids known to exist (cache for accept)

    # ------------------------------------------------------------------ endpoints

    def save_endpoint(self, ep: Endpoint) -> None:
        """Insert or replace the endpoint with ``ep.id``."""
        if not isinstance(ep, Endpoint):
            raise TypeError(f"save_endpoint: expected an Endpoint, got {type(ep).__name__}")
        with self._db.transaction() as conn:
            self._upsert(conn, [ep])

    def _upsert(self, conn: Any, eps: Sequence[Endpoint]) -> None:
        now = time.time()
        rows = [(e.id, msgspec.json.encode(e).decode(), e.enabled, e.source, now) for e in eps]
        self._db.executemany(conn, self._db.q.upsert_endpoint, rows)

    def sync_config_endpoints(self, eps: Sequence[Endpoint]) -> None:
        """Make the stored config endpoints match ``eps`` (the config file), in one transaction.

        Endpoints no longer listed are disabled, not deleted (their deliveries refer to them).
        A runtime disable that carries a reason (auto-disable after failures, an operator's) is
        kept across a sync, so a restart does not re-enable an endpoint someone switched off;
        endpoints added at run time (source "api") are not touched.
        """
        seen: set[str] = set()
        for ep in eps:
            if not isinstance(ep, Endpoint):
                raise TypeError(f"sync_config_endpoints: expected Endpoints, got {ep!r}")
            if ep.id in seen:
                raise ValueError(f"sync_config_endpoints: endpoint id {ep.id!r} appears twice")
            seen.add(ep.id)
        with self._db.transaction() as conn:
            stored = {e.id: e for e in self._load_endpoints(conn)}
            out: list[Endpoint] = []
            for ep in eps:
                new = msgspec.structs.replace(ep, source="config")
                old = stored.get(ep.id)
                if old is not None and old.source == "api":
                    log.warning("webhook endpoint %r from the config replaces an API one", ep.id)
                reason = None if old is None or old.enabled else old.disabled_reason
                if reason not in (None, REMOVED_FROM_CONFIG) and new.enabled:
                    new = msgspec.structs.replace(new, enabled=False, disabled_reason=reason)
                out.append(new)
            for old in stored.values():
                if old.source == "config" and old.id not in seen and old.enabled:
                    out.append(
                        msgspec.structs.replace(
                            old, enabled=False, disabled_reason=REMOVED_FROM_CONFIG
                        )
                    )
            self._upsert(conn, out)

    def _load_endpoints(self, conn: Any, id: str | None = None) -> list[Endpoint]:
        q = self._db.q
        if id is None:
            rows = self._db.execute(conn, q.endpoints).fetchall()
        else:
            rows = self._db.execute(conn, q.endpoint, (id,)).fetchall()
        return [msgspec.json.decode(r[0], type=Endpoint) for r in rows]

    def endpoints(self) -> list[Endpoint]:
        with self._db.connection() as conn:
            return self._load_endpoints(conn)

    def endpoint(self, id: str) -> Endpoint | None:
        with self._db.connection() as conn:
            found = self._load_endpoints(conn, id)
        return found[0] if found else None

    def set_enabled(self, id: str, enabled: bool, reason: str | None = None) -> Endpoint:
        """Switch an endpoint on or off; ``reason`` is shown while it is off."""
        with self._db.transaction() as conn:
            found = self._load_endpoints(conn, id)
            if not found:
                raise KeyError(f"webhook endpoint {id!r} is not known; list them with endpoints()")
            ep = msgspec.structs.replace(
                found[0], enabled=enabled, disabled_reason=None if enabled else reason
            )
            self._upsert(conn, [ep])
        return ep

    def delete_endpoint(self, id: str) -> bool:
        """Remove an endpoint; its pending and in-flight deliveries become ``cancelled``."""
        now = time.time()
        db = self._db
        with db.transaction() as conn:
            gone = db.execute(conn, db.q.delete_endpoint, (id,)).rowcount
            db.execute(conn, db.q.cancel_endpoint_deliveries, (now, id))
        self._known.discard(id)
        return bool(gone)

    def _check_endpoints(self, ids: Iterable[str], what: str) -> None:
        wanted = sorted(set(ids))
        if not wanted or self._known.issuperset(wanted):
            return  # the hot path: endpoints seen before are not looked up per accept
        db = self._db
        with db.connection() as conn:
            rows = db.execute(conn, db.q.known_endpoints, (db.ids(wanted),)).fetchall()
        known = {r[0] for r in rows}
        self._known.update(known)
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise ValueError(
                f"{what}: route returned unknown endpoint id(s) {', '.join(map(repr, unknown))}; "
                "save_endpoint() them first; nothing was written"
            )

    # ------------------------------------------------------------------ accepting events

    def accept(
        self,
        events: Sequence[Event],
        route: Callable[[Event], Sequence[str]],
        *,
        max_pending: int | None = None,
    ) -> list[tuple[Recorded, list[str]]]:
        """Append ``events`` and one pending delivery per endpoint ``route(event)`` names, in one
        transaction; returns each recorded event with its delivery ids.

        ``max_pending`` bounds deliveries pending or in flight. The count runs before the
        append, outside its transaction: appends racing each other can overshoot the bound by
        what they add together, never by more.
        """
        return self.accept_and_claim(events, route, max_pending=max_pending)[0]

    def accept_and_claim(
        self,
        events: Sequence[Event],
        route: Callable[[Event], Sequence[str]],
        *,
        max_pending: int | None = None,
        take: Mapping[str, int] | None = None,
        lease: float = 60.0,
    ) -> tuple[list[tuple[Recorded, list[str]]], list[Claimed]]:
        """``accept``, and lease up to ``take[endpoint_id]`` of the new deliveries to the caller
        in the same transaction (returned as ``Claimed``).

        A worker in the accepting process starts those at once, without a claim round trip;
        if the process dies first, their leases run out and any worker takes them over.
        """
        batch = list(events)
        routes = [_routes(route, e) for e in batch]
        adding = sum(len(r) for r in routes)
        self._check_endpoints((i for r in routes for i in r), "accept")
        if max_pending is not None and adding:
            pending = self.count_open(max_pending + 1)
            if pending + adding > max_pending:
                raise WebhookQueueFull(pending, max_pending, adding)
        ids = [[new_id() for _ in r] for r in routes]
        now = time.time()
        token = new_id()
        left = dict(take or {})
        claimed: list[Claimed] = []
        db = self._db

        def also(conn: Any, recorded: list[Recorded]) -> None:
            claimed.clear()  # a retried transaction starts over
            room = dict(left)
            rows, leased = [], []
            for rec, eps, dids in zip(recorded, routes, ids, strict=True):
                for ep, did in zip(eps, dids, strict=True):
                    if room.get(ep, 0) > 0:
                        room[ep] -= 1
                        leased.append((did, rec.event.id, rec.position, ep, now, now, now))
                        delivery = WebhookDelivery(
                            did, rec.event.id, rec.position, ep, "delivering", 0, now, now, now,
                            None, None, None,
                        )  # fmt: skip
                        claimed.append(Claimed(delivery, rec.event, token))
                    else:
                        rows.append((did, rec.event.id, rec.position, ep, now, now, now))
            if rows:
                db.executemany(conn, db.q.insert_delivery, rows)
            if leased:
                until = now + lease
                db.executemany(conn, db.q.insert_leased, [(*r, until, token) for r in leased])

        recorded = self.store.append(batch, also=also)
        return [(rec, dids) for rec, dids in zip(recorded, ids, strict=True)], claimed

    async def aaccept(
        self,
        events: Sequence[Event],
        route: Callable[[Event], Sequence[str]],
        *,
        max_pending: int | None = None,
    ) -> list[tuple[Recorded, list[str]]]:
        return await asyncio.to_thread(self.accept, events, route, max_pending=max_pending)

    # ------------------------------------------------------------------ other sources

    def write_deliveries(
        self,
        conn: Any,
        recorded: Sequence[Recorded],
        route: Callable[[Event], Sequence[str]],
        *,
        fresh: bool = False,
    ) -> int:
        """In the caller's open transaction on ``conn`` (a connection of the store): a pending
        delivery per endpoint ``route(event)`` names, for each event that has no delivery yet.
        Returns how many were written.

        The sources other than ``POST /events`` (the store's subscription, a transport, a Bus)
        use this; "no delivery yet" makes them idempotent towards each other and towards a
        redelivered message. ``fresh``: the events were appended in this same transaction, so
        none can have deliveries and the check is skipped. Endpoint ids that are gone (deleted
        since the router last looked) are left out.
        """
        if not recorded:
            return 0
        db = self._db
        done: set[str] = set()
        if not fresh:
            db.serialize(conn)
            ids = db.ids([rec.event.id for rec in recorded])
            done = {r[0] for r in db.execute(conn, db.q.delivered_events, (ids,)).fetchall()}
        known = {r[0] for r in db.execute(conn, db.q.endpoint_ids)}
        now = time.time()
        rows = [
            (new_id(), rec.event.id, rec.position, ep, now, now, now)
            for rec in recorded
            if rec.event.id not in done
            for ep in _routes(route, rec.event)
            if ep in known
        ]
        if rows:
            db.executemany(conn, db.q.insert_delivery, rows)
        return len(rows)

    def add_delivery(
        self, delivery_id: str, event_id: str, position: int, endpoint_id: str
    ) -> bool:
        """One pending delivery of the stored event at ``position`` to ``endpoint_id``, with an
        id the caller chose; False when a delivery with that id exists already (the caller's
        retry: a trigger's webhook action derives the id from its job key). The endpoint must
        exist (``save_endpoint``)."""
        self._check_endpoints([endpoint_id], "add_delivery")
        now = time.time()
        row = (delivery_id, event_id, position, endpoint_id, now, now, now)
        with self._db.transaction() as conn:
            return bool(self._db.execute(conn, self._db.q.insert_delivery_once, row).rowcount)

    def ingest(self, events: Sequence[Event], route: Callable[[Event], Sequence[str]]) -> int:
        """Append ``events`` and their deliveries in one transaction, like ``accept``; but an
        event already in the store (a redelivered message, or one another writer stored) is no
        error: it gets deliveries only if it has none. Returns how many deliveries were made.
        """
        batch = list(events)
        created = 0

        def also(conn: Any, recorded: list[Recorded]) -> None:
            nonlocal created
            created = self.write_deliveries(conn, recorded, route, fresh=True)

        try:
            self.store.append(batch, also=also)
            return created
        except DuplicateEvent:
            if len(batch) > 1:
                return sum(self.ingest([event], route) for event in batch)
        event = batch[0]
        with self._db.transaction() as conn:
            row = self._db.execute(conn, self._db.q.event_position, (event.id,)).fetchone()
            if row is None:  # removed (retention) since the append found it: nothing to send
                return 0
            return self.write_deliveries(conn, [Recorded(int(row[0]), event)], route)

    def source_start(self, name: str) -> int:
        """The position after which the source ``name`` delivers: the end of the store when it
        first ran (recorded then), so turning a source on does not deliver the history."""
        db = self._db
        with db.transaction() as conn:
            db.execute(conn, db.q.record_source_start, (name, time.time()))
            row = db.execute(conn, db.q.source_start, (name,)).fetchone()
        return int(row[0])

    def count_open(self, cap: int) -> int:
        """Pending + delivering rows, counted up to ``cap`` (so a full queue costs ``cap``)."""
        with self._db.connection() as conn:
            row = self._db.execute(conn, self._db.q.count_open, (cap,)).fetchone()
        return int(row[0])

    # ------------------------------------------------------------------ work

    def claim(
        self, limit: int, lease: float, *, skip_endpoints: Collection[str] = ()
    ) -> list[Claimed]:
        """Lease up to ``limit`` due deliveries for ``lease`` seconds, oldest due first.

        Due: pending with ``next_attempt_at`` reached, or in flight with an expired lease (its
        worker died), on an enabled endpoint not in ``skip_endpoints``. Deliveries whose event
        is no longer in the store become ``dead`` instead of being returned.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"claim(limit=): expected an int >= 1, got {limit!r}")
        if not lease > 0:
            raise ValueError(f"claim(lease=): expected seconds > 0, got {lease!r}")
        if isinstance(skip_endpoints, str):
            raise TypeError("claim(skip_endpoints=): expected a collection of ids, not a string")
        now = time.time()
        token = new_id()
        with self._db.transaction() as conn:
            rows = self._db.claim(conn, limit, now + lease, token, now, list(skip_endpoints))
            gone = [(now, _EVENT_GONE, r[0]) for r in rows if r[12] is None]
            if gone:
                self._db.executemany(conn, self._db.q.mark_event_gone, gone)
        for _, _, did in gone:
            log.error("webhook delivery %s is dead: %s", did, _EVENT_GONE)
        out = [Claimed(_delivery(r), decode(r[12]), token) for r in rows if r[12] is not None]
        out.sort(key=lambda c: (c.delivery.next_attempt_at or 0.0, c.delivery.id))
        return out

    async def aclaim(
        self, limit: int, lease: float, *, skip_endpoints: Collection[str] = ()
    ) -> list[Claimed]:
        return await asyncio.to_thread(self.claim, limit, lease, skip_endpoints=skip_endpoints)

    def finish(self, outcomes: Sequence[Outcome]) -> int:
        """Record a batch of attempts and their deliveries' new states in one transaction.

        Every attempt is logged (the request was made); a delivery changes only while the lease
        token still matches, so a worker whose lease was taken over cannot overwrite the new
        holder. Returns how many deliveries changed.
        """
        if not outcomes:
            return 0
        attempts, updates = outcome_rows(outcomes, time.time())
        with self._db.transaction() as conn:
            self._db.executemany(conn, self._db.q.insert_attempt, attempts)
            return self._db.executemany(conn, self._db.q.finish, updates)

    async def afinish(self, outcomes: Sequence[Outcome]) -> int:
        return await asyncio.to_thread(self.finish, outcomes)

    def release(self, claimed: Sequence[tuple[str, str]]) -> None:
        """Hand leased deliveries back unattempted (graceful shutdown): due again at once."""
        if not claimed:
            return
        now = time.time()
        with self._db.transaction() as conn:
            rows = [(now, did, tok) for did, tok in claimed]
            self._db.executemany(conn, self._db.q.release, rows)

    # ------------------------------------------------------------------ inspection and replay

    def deliveries(
        self,
        *,
        endpoint_id: str | None = None,
        state: str | None = None,
        event_id: str | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> list[WebhookDelivery]:
        """Newest first; pass the last id of a page as ``before`` for the next one."""
        if state is not None and state not in STATES:
            raise ValueError(
                f"deliveries(state=): expected one of {', '.join(STATES)}, got {state!r}"
            )
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"deliveries(limit=): expected an int >= 1, got {limit!r}")
        given = {"endpoint_id": endpoint_id, "state": state, "event_id": event_id, "before": before}
        filters = [name for name, value in given.items() if value is not None]
        params = [given[name] for name in filters] + [limit]
        query = self._db.deliveries_query(filters)
        with self._db.connection() as conn:
            rows = self._db.execute(conn, query, params).fetchall()
        return [_delivery(r) for r in rows]

    def delivery(self, id: str) -> WebhookDelivery | None:
        with self._db.connection() as conn:
            row = self._db.execute(conn, self._db.q.delivery, (id,)).fetchone()
        return None if row is None else _delivery(row)

    def attempts(self, delivery_id: str) -> list[Attempt]:
        """The attempts log of one delivery, oldest first."""
        with self._db.connection() as conn:
            rows = self._db.execute(conn, self._db.q.attempts, (delivery_id,)).fetchall()
        return [Attempt(*r) for r in rows]

    def recent_attempts(self, limit: int = 5000) -> list[tuple[str, Attempt]]:
        """The last ``limit`` attempts of every endpoint, newest first, with their endpoint id:
        a bounded read for figures over recent traffic (the dashboard's latency and success)."""
        with self._db.connection() as conn:
            rows = self._db.execute(conn, self._db.q.recent_attempts, (limit,)).fetchall()
        return [(r[0], Attempt("", 0, r[1], r[2], r[3], None, r[4])) for r in rows]

    def oldest_pending(self) -> dict[str, float]:
        """Per endpoint id, the creation time (epoch seconds) of its oldest pending delivery."""
        with self._db.connection() as conn:
            rows = self._db.execute(conn, self._db.q.oldest_pending_by_endpoint).fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    def event_position(self, event_id: str) -> int | None:
        """The store position of the event ``event_id`` (None: not stored)."""
        with self._db.connection() as conn:
            row = self._db.execute(conn, self._db.q.event_position, (event_id,)).fetchone()
        return None if row is None else int(row[0])

    def retry(self, delivery_id: str) -> bool:
        """Send a delivery again now, same id, attempts from zero; False if it is unknown.

        A delivery in flight is left to its worker (True: it is being attempted)."""
        now = time.time()
        db = self._db
        with db.transaction() as conn:
            if db.execute(conn, db.q.retry, (now, now, delivery_id)).rowcount:
                return True
            row = db.execute(conn, db.q.delivery_exists, (delivery_id,)).fetchone()
        return row is not None

    def retry_dead(self, endpoint_id: str | None = None) -> int:
        """Send every dead delivery (of one endpoint, or all) again; returns how many."""
        now = time.time()
        db = self._db
        with db.transaction() as conn:
            if endpoint_id is None:
                return int(db.execute(conn, db.q.retry_dead, (now, now)).rowcount)
            params = (now, now, endpoint_id)
            return int(db.execute(conn, db.q.retry_dead_of_endpoint, params).rowcount)

    def _replay_pages(
        self,
        criteria: Criteria,
        route: Callable[[Event], Sequence[str]],
        batch: int,
        what: str,
    ) -> Iterator[tuple[list[Recorded], list[list[str]]]]:
        """Stored events matching ``criteria`` by position, a page at a time, each with the
        endpoints ``route`` gives it."""
        if not isinstance(criteria, Criteria):
            raise TypeError(f"{what}: expected a Criteria, got {type(criteria).__name__}")
        if batch < 1:
            raise ValueError(f"{what}(batch=): expected >= 1, got {batch}")
        after = criteria.after_position
        remaining = criteria.limit
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            page = self.store.load(dataclasses.replace(criteria, after_position=after, limit=size))
            if not page:
                break
            routes = [_routes(route, rec.event) for rec in page]
            self._check_endpoints((i for r in routes for i in r), what)
            yield page, routes
            after = page[-1].position
            if remaining is not None:
                remaining -= len(page)
            if len(page) < size:
                break

    def plan_redeliver(
        self,
        criteria: Criteria,
        route: Callable[[Event], Sequence[str]],
        *,
        progress: Callable[[int], None] | None = None,
        batch: int = 1000,
    ) -> dict[str, int]:
        """What ``redeliver`` would create, per endpoint id; writes nothing (a dry run)."""
        counts: dict[str, int] = {}
        read = 0
        for page, routes in self._replay_pages(criteria, route, batch, "plan_redeliver"):
            for eps in routes:
                for ep in eps:
                    counts[ep] = counts.get(ep, 0) + 1
            read += len(page)
            if progress is not None:
                progress(read)
        return counts

    def redeliver(
        self,
        criteria: Criteria,
        route: Callable[[Event], Sequence[str]],
        *,
        progress: Callable[[int], None] | None = None,
        batch: int = 1000,
        max_pending: int | None = None,
        wait: Callable[[int, int], bool] | None = None,
    ) -> int:
        """New deliveries (new ids) for stored events matching ``criteria``; returns how many.

        Pages through the store by position, one transaction per page; ``progress`` gets the
        number of events read so far after each page (``store.count(criteria)`` is the total).

        ``max_pending`` bounds the deliveries pending or in flight: a page is written as far as
        there is room, and while there is none ``wait(open, max_pending)`` is called; it should
        block a while (deliveries drain meanwhile) and return True to look again, or False to
        give up with ``WebhookQueueFull`` (what was written stays). Without ``wait``, no room is
        ``WebhookQueueFull`` at once.
        """
        created = read = 0
        for page, routes in self._replay_pages(criteria, route, batch, "redeliver"):
            now = time.time()
            rows = [
                (new_id(), rec.event.id, rec.position, ep, now, now, now)
                for rec, eps in zip(page, routes, strict=True)
                for ep in eps
            ]
            while rows:
                room = len(rows)
                if max_pending is not None:
                    open_now = self.count_open(max_pending + 1)
                    room = min(room, max_pending - open_now)
                    if room <= 0:
                        if wait is None or not wait(open_now, max_pending):
                            raise WebhookQueueFull(
                                open_now, max_pending, len(rows), written=created
                            )
                        continue
                with self._db.transaction() as conn:
                    self._db.executemany(conn, self._db.q.insert_delivery, rows[:room])
                created += room
                rows = rows[room:]
            read += len(page)
            if progress is not None:
                progress(read)
        return created

    def stats(self) -> QueueStats:
        """Counts per state and endpoint. Counts every row: call it at scrape rate, not per
        request, on a table with millions of deliveries."""
        now = time.time()
        with self._db.connection() as conn:
            rows = self._db.execute(conn, self._db.q.state_counts).fetchall()
            oldest = self._db.execute(conn, self._db.q.oldest_due, (now,)).fetchone()[0]
        totals = dict.fromkeys(STATES, 0)
        per_endpoint: dict[str, dict[str, int]] = {}
        for endpoint_id, state, count in rows:
            totals[state] += int(count)
            per_endpoint.setdefault(endpoint_id, dict.fromkeys(STATES, 0))[state] = int(count)
        return QueueStats(
            pending=totals["pending"],
            delivering=totals["delivering"],
            delivered=totals["delivered"],
            dead=totals["dead"],
            oldest_pending_age=None if oldest is None else max(0.0, now - float(oldest)),
            per_endpoint=per_endpoint,
        )

    async def astats(self) -> QueueStats:
        return await asyncio.to_thread(self.stats)

    def close(self) -> None:
        """Close the queue's own connections (the store stays open)."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __repr__(self) -> str:
        return f"<DeliveryQueue on {type(self.store).__name__} {self._db.where}>"
