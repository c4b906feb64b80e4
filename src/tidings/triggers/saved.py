"""Triggers saved through the HTTP API (``tidings_triggers``), and the catalog a processor reads.

``SavedTriggers`` keeps definitions in the store's database. Every write goes through
``parse_trigger`` first (action types and options checked too), on every path: create,
replace, patch; so what is stored always loads, and a bad definition is refused with a
``TriggerError`` naming the field's path and, for a condition, the position in its text. The
triggers of the config file (YAML) are not the API's to change: their ids are refused
(``TriggerConflict``), and they are changed in the file.

``TriggerCatalog`` merges the YAML triggers and the saved ones into one ``TriggerIndex``; it is
the ``index_source`` callable a processor calls per batch. It reads one row (the saved
version, bumped in the same transaction as every change) at most every ``check_every``
seconds and rebuilds the index only when that version moved. A processor's catalog
(``open_catalog``) looks on every page, after the page was read: a trigger saved before an
event was stored is applied to that event, whichever process saved it, and an unchanged
catalog costs one one-row read per page.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from tidings.triggers.database import Database, open_database
from tidings.triggers.definitions import (
    ActionSpec,
    Trigger,
    TriggerError,
    parse_trigger,
    trigger_to_dict,
)
from tidings.triggers.index import TriggerIndex

__all__ = [
    "DURABLE_SCHEMES",
    "SavedTrigger",
    "SavedTriggers",
    "TriggerCatalog",
    "TriggerConflict",
    "TriggerNotFound",
    "TriggerVersionMismatch",
    "open_catalog",
    "saved_triggers_for",
]

log = logging.getLogger("tidings.triggers")

#: The path a definition's errors are reported under (``trigger.condition``).
PATH = "trigger"
#: Stores whose database can keep saved triggers.
DURABLE_SCHEMES = ("sqlite", "postgresql", "postgres")


class TriggerNotFound(LookupError):
    """No saved trigger has this id."""


class TriggerConflict(ValueError):
    """The change clashes with what exists: the id is taken, or is a trigger of the config file."""


class TriggerVersionMismatch(TriggerConflict):
    """The change was made against a version the trigger no longer has (``if_version``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SavedTrigger:
    """One saved trigger: the parsed ``trigger``, its ``definition`` as stored (JSON-safe),
    ``version`` (bumped on every change of it) and epoch-second times."""

    trigger: Trigger
    definition: dict[str, Any]
    version: int
    created_at: float
    updated_at: float

    @property
    def id(self) -> str:
        return self.trigger.id

    @property
    def enabled(self) -> bool:
        return self.trigger.enabled


def _default_checks() -> tuple[Collection[str], Callable[[ActionSpec], None]]:
    from tidings.triggers.actions.registry import (  # noqa: PLC0415 - the actions are heavier
        action_types,
        validate_action,
    )

    return action_types(), validate_action


class SavedTriggers:
    """The ``tidings_triggers`` table in the database at ``url`` (the store's); applied on open.

    ``config_ids`` are the ids of the config file's triggers, which the API may not create,
    replace or delete. ``action_types`` / ``validate_action`` default to the registered action
    types and their option checks. Methods are synchronous: async callers use a thread.
    """

    def __init__(
        self,
        url: str,
        *,
        config_ids: Collection[str] = (),
        action_types: Collection[str] | None = None,
        validate_action: Callable[[ActionSpec], None] | None = None,
        database: Database | None = None,
    ) -> None:
        self._db = database if database is not None else open_database(url, pool_size=2)
        self._own_db = database is None
        self._q = self._db.queries("saved")
        self.url = url
        self.config_ids = frozenset(config_ids)
        if action_types is None or validate_action is None:
            types, check = _default_checks()
            action_types = types if action_types is None else action_types
            validate_action = check if validate_action is None else validate_action
        self._types = action_types
        self._validate = validate_action

    # ------------------------------------------------------------------ checking

    def parse(self, raw: Any) -> Trigger:
        """``raw`` as a Trigger, or ``TriggerError`` at ``trigger.<field>``."""
        if not isinstance(raw, Mapping):
            raise TriggerError(PATH, "expected a JSON object with id, pattern and actions")
        return parse_trigger(
            raw, path=PATH, action_types=self._types, validate_action=self._validate
        )

    def _not_config(self, trigger_id: str) -> None:
        if trigger_id in self.config_ids:
            raise TriggerConflict(
                f"trigger {trigger_id!r} is defined in the config file (triggers:); it cannot "
                "be changed through the API: edit the file (or use another id)"
            )

    # ------------------------------------------------------------------ rows

    def _row(self, row: Sequence[Any]) -> SavedTrigger:
        trigger_id, definition, enabled, version, created, updated = row
        data = json.loads(definition)
        data["enabled"] = bool(enabled)
        trigger = parse_trigger(data, path=f"tidings_triggers[{trigger_id}]")
        return SavedTrigger(trigger, data, int(version), float(created), float(updated))

    def _sqlite(self) -> bool:
        return self._db.dialect == "sqlite"

    def _write_params(self, trigger: Trigger) -> tuple[str, bool]:
        data = trigger_to_dict(trigger)
        return json.dumps(data, separators=(",", ":")), trigger.enabled

    def _locked(self, conn: Any, trigger_id: str) -> SavedTrigger | None:
        row = conn.execute(self._q.lock_trigger, (trigger_id,)).fetchone()
        return None if row is None else self._row(row)

    @staticmethod
    def _expect(current: SavedTrigger | None, trigger_id: str, if_version: int | None) -> None:
        """Refuse a change made against another version than the stored one."""
        if if_version is None:
            return
        if current is None:
            raise TriggerVersionMismatch(
                f"trigger {trigger_id!r} does not exist, expected version {if_version}"
            )
        if current.version != if_version:
            raise TriggerVersionMismatch(
                f"trigger {trigger_id!r} is at version {current.version}, not {if_version}: "
                "it changed since it was read; read it again and redo the change"
            )

    def _bump(self, conn: Any) -> None:
        conn.execute(self._q.bump_version).fetchone()

    # ------------------------------------------------------------------ reading

    def get(self, trigger_id: str) -> SavedTrigger:
        with self._db.connection() as conn:
            row = conn.execute(self._q.get_trigger, (trigger_id,)).fetchone()
        if row is None:
            raise TriggerNotFound(f"no saved trigger {trigger_id!r}")
        return self._row(row)

    def list(self, *, after: str | None = None, limit: int = 100) -> list[SavedTrigger]:
        """By id; pass the last id of a page as ``after`` for the next one."""
        with self._db.connection() as conn:
            rows = conn.execute(self._q.page_triggers, {"after": after, "limit": limit}).fetchall()
        return [self._row(r) for r in rows]

    def all(self) -> builtins.list[SavedTrigger]:
        """Every saved trigger; one whose definition no longer loads (an action type removed
        since it was saved) is left out and logged, so the others still run."""
        with self._db.connection() as conn:
            rows = conn.execute(self._q.all_triggers).fetchall()
        out = []
        for row in rows:
            try:
                out.append(self._row(row))
            except TriggerError as exc:
                log.error("saved trigger %r no longer loads, skipped: %s", row[0], exc)
        return out

    def count(self) -> int:
        with self._db.connection() as conn:
            return int(conn.execute(self._q.count_triggers).fetchone()[0])

    def version(self) -> int:
        """Bumped by every change of any saved trigger (one primary-key read)."""
        with self._db.connection() as conn:
            row = conn.execute(self._q.saved_version).fetchone()
        return 0 if row is None else int(row[0])

    # ------------------------------------------------------------------ writing

    def create(self, raw: Any) -> SavedTrigger:
        """Save a new trigger; ``TriggerConflict`` when its id is taken."""
        trigger = self.parse(raw)
        self._not_config(trigger.id)
        definition, enabled = self._write_params(trigger)
        with self._db.transaction() as conn:
            if self._sqlite():
                now = time.time()
                params: tuple[Any, ...] = (trigger.id, definition, enabled, now, now)
            else:
                params = (trigger.id, definition, enabled)
            if not conn.execute(self._q.insert_trigger, params).rowcount:
                raise TriggerConflict(
                    f"a trigger with id {trigger.id!r} exists; replace it with PUT "
                    f"/triggers/{trigger.id} or choose another id"
                )
            self._bump(conn)
        return self.get(trigger.id)

    def replace(
        self, trigger_id: str, raw: Any, *, if_version: int | None = None
    ) -> tuple[SavedTrigger, bool]:
        """Save ``raw`` as trigger ``trigger_id`` whether or not it exists (its ``id``, if
        given, must be the same); returns it and whether it was created. ``if_version``: only
        if it exists at that version (``TriggerVersionMismatch`` else), as every change takes."""
        if isinstance(raw, Mapping) and "id" not in raw:
            raw = {"id": trigger_id, **raw}
        trigger = self.parse(raw)
        if trigger.id != trigger_id:
            raise TriggerError(
                f"{PATH}.id", f"expected {trigger_id!r} (the id in the path), got {trigger.id!r}"
            )
        self._not_config(trigger_id)
        definition, enabled = self._write_params(trigger)
        with self._db.transaction() as conn:
            current = self._locked(conn, trigger_id)
            self._expect(current, trigger_id, if_version)
            if current is None:
                now = time.time()
                params: tuple[Any, ...] = (
                    (trigger_id, definition, enabled, now, now)
                    if self._sqlite()
                    else (trigger_id, definition, enabled)
                )
                conn.execute(self._q.insert_trigger, params)
                created = True
            else:
                self._update(conn, trigger_id, definition, enabled)
                created = False
            self._bump(conn)
        return self.get(trigger_id), created

    def _update(self, conn: Any, trigger_id: str, definition: str, enabled: bool) -> None:
        if self._sqlite():
            conn.execute(self._q.update_trigger, (definition, enabled, time.time(), trigger_id))
        else:
            conn.execute(self._q.update_trigger, (definition, enabled, trigger_id))

    def patch(
        self, trigger_id: str, changes: Any, *, if_version: int | None = None
    ) -> SavedTrigger:
        """Change some fields (JSON merge patch: a key set to null goes back to its default);
        the result is checked as a whole, exactly like a new definition."""
        if not isinstance(changes, Mapping):
            raise TriggerError(PATH, "expected a JSON object of the fields to change")
        if "id" in changes and changes["id"] != trigger_id:
            raise TriggerError(f"{PATH}.id", "the id cannot be changed; create a new trigger")
        self._not_config(trigger_id)
        with self._db.transaction() as conn:
            current = self._locked(conn, trigger_id)
            if current is None:
                raise TriggerNotFound(f"no saved trigger {trigger_id!r}")
            self._expect(current, trigger_id, if_version)
            merged = dict(current.definition)
            for key, value in changes.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            trigger = self.parse(merged)
            definition, enabled = self._write_params(trigger)
            self._update(conn, trigger_id, definition, enabled)
            self._bump(conn)
        return self.get(trigger_id)

    def set_enabled(
        self, trigger_id: str, enabled: bool, *, if_version: int | None = None
    ) -> SavedTrigger:
        """Enable or disable (a no-op, without a new version, when it already is)."""
        self._not_config(trigger_id)
        with self._db.transaction() as conn:
            current = self._locked(conn, trigger_id)
            if current is None:
                raise TriggerNotFound(f"no saved trigger {trigger_id!r}")
            self._expect(current, trigger_id, if_version)
            if current.enabled != enabled:
                trigger = dataclasses.replace(current.trigger, enabled=enabled)
                definition, _ = self._write_params(trigger)
                self._update(conn, trigger_id, definition, enabled)
                self._bump(conn)
        return self.get(trigger_id)

    def delete(self, trigger_id: str, *, if_version: int | None = None) -> None:
        self._not_config(trigger_id)
        with self._db.transaction() as conn:
            if if_version is not None:
                current = self._locked(conn, trigger_id)
                if current is None:
                    raise TriggerNotFound(f"no saved trigger {trigger_id!r}")
                self._expect(current, trigger_id, if_version)
            if not conn.execute(self._q.delete_trigger, (trigger_id,)).rowcount:
                raise TriggerNotFound(f"no saved trigger {trigger_id!r}")
            self._bump(conn)

    def close(self) -> None:
        if self._own_db:
            self._db.close()

    def __repr__(self) -> str:
        return f"<SavedTriggers {self._db.dialect} {self._db.where}>"


class TriggerCatalog:
    """The config file's triggers plus the saved ones, as one ``TriggerIndex``.

    Call it (``catalog()``) for the current index: the processor's ``index_source``. A saved
    trigger whose id is also in the config file is ignored (the file wins) and logged; a
    database that cannot be read keeps the last index (logged), so processing goes on.
    """

    def __init__(
        self,
        config_triggers: Sequence[Trigger],
        saved: SavedTriggers | None = None,
        *,
        check_every: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = list(config_triggers)
        self._saved = saved
        self._check_every = check_every
        self._clock = clock
        self._lock = threading.Lock()
        self._version: int | None = None
        self._checked_at = float("-inf")
        self._index = TriggerIndex(self._config)
        self.rebuilds = 0  # how often the index was rebuilt (for tests and metrics)
        if saved is not None:
            self.refresh(force=True)

    def __call__(self) -> TriggerIndex:
        if self._saved is not None and self._clock() - self._checked_at >= self._check_every:
            self.refresh()
        return self._index

    @property
    def index(self) -> TriggerIndex:
        return self._index

    @property
    def saved(self) -> SavedTriggers | None:
        return self._saved

    def close(self) -> None:
        """Close the saved triggers' database (the last index stays usable)."""
        if self._saved is not None:
            self._saved.close()

    def refresh(self, *, force: bool = False) -> bool:
        """Rebuild when the saved version moved (or ``force``); True when it was rebuilt."""
        if self._saved is None:
            return False
        with self._lock:
            self._checked_at = self._clock()
            try:
                version = self._saved.version()
                if not force and version == self._version:
                    return False
                saved = self._saved.all()
            except Exception as exc:  # a database outage must not stop processing
                log.error("saved triggers not read, keeping the last index: %s", exc)
                return False
            config_ids = {t.id for t in self._config}
            merged = list(self._config)
            for item in saved:
                if item.id in config_ids:
                    log.warning(
                        "saved trigger %r ignored: the config file defines that id", item.id
                    )
                    continue
                merged.append(item.trigger)
            self._index = TriggerIndex(merged)
            self._version = version
            self.rebuilds += 1
            return True


def saved_triggers_for(store_url: str, config_ids: Collection[str] = ()) -> SavedTriggers | None:
    """The saved triggers in the database of the store at ``store_url`` (None for a store that
    keeps none, e.g. memory)."""
    if urlsplit(store_url).scheme not in DURABLE_SCHEMES:
        return None
    return SavedTriggers(store_url, config_ids=config_ids)


def open_catalog(
    config_triggers: Sequence[Trigger], store_url: str, *, check_every: float = 0.0
) -> TriggerCatalog:
    """The catalog a processor runs: ``config_triggers`` (already checked, e.g. by
    ``load_triggers``) plus the triggers saved in the store's database. Close it with
    ``catalog.close()``."""
    saved = saved_triggers_for(store_url, {t.id for t in config_triggers})
    return TriggerCatalog(config_triggers, saved, check_every=check_every)
