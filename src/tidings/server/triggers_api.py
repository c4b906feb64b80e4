"""The ``/triggers`` routes: saved triggers (CRUD, enable/disable), results, the DLQ, status.

Changes need the admin scope, reads the read scope. Every definition, on every path (POST, PUT,
PATCH), is checked by ``parse_trigger`` through ``SavedTriggers``: a bad one is a 422 whose
``field`` is the failing field's path (``condition``, ``actions[0].type``) and whose detail
gives a condition's position. The config file's triggers are listed (``source: config``) but
changed in the file: writing their ids is a 409. Action options named like secrets are shown
as ``***``, never as written, and a ``***`` sent back where a secret goes is refused (it is
what a GET showed, not the secret).

The triggers' tables (saved triggers, results, the job queue) are opened on first use, in the
store's database (or the ``processor.queue`` Redis), so a server that never uses triggers
creates nothing.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from tidings.config.errors import MASK
from tidings.config.triggers import is_secret_option, redact_triggers
from tidings.server.body import ApiError
from tidings.server.cursors import page_next, page_start
from tidings.server.jsonio import json_object, reply, rfc3339
from tidings.server.operations import Operation, query
from tidings.server.params import CURSOR, LIMIT, Param
from tidings.server.service import Service
from tidings.server.triggers_schemas import (
    DeadJobPage,
    RetryDeadIn,
    RetryDeadOut,
    TriggerIn,
    TriggerOut,
    TriggerPage,
    TriggerPatch,
    TriggerResultPage,
    TriggerStatus,
)
from tidings.triggers.actions.untrusted import untrusted_action_validator
from tidings.triggers.definitions import TriggerError
from tidings.triggers.jobs import JobQueue, open_job_queue
from tidings.triggers.monitoring import Monitor, processor_checkpoints
from tidings.triggers.results import RESULT_STATUSES, ActionResults
from tidings.triggers.saved import (
    SavedTrigger,
    SavedTriggers,
    TriggerConflict,
    TriggerNotFound,
    TriggerVersionMismatch,
)

__all__ = ["TriggersApi", "trigger_operations"]

#: Paths below /triggers/ that are routes, not trigger ids.
RESERVED_IDS = frozenset({"results", "dlq", "status"})
READ_ONLY = ("source", "version", "created_at", "updated_at")


_ETAG = re.compile(r'(?:W/)?"?([0-9]{1,18})"?')


def _if_version(request: Request) -> int | None:
    """The version an ``If-Match`` header names (``"3"``, as ``ETag`` gave it); ``*`` or no
    header: any version."""
    given = request.headers.get("if-match")
    if given is None or given.strip() == "*":
        return None
    match = _ETAG.fullmatch(given.strip())
    if match is None:
        raise ApiError(
            400,
            f'If-Match: expected the ETag a GET gave (a version in quotes, like "3"), got '
            f"{given[:40]!r}",
            "If-Match",
        )
    return int(match.group(1))


def _etag(saved: SavedTrigger) -> dict[str, str]:
    return {"ETag": f'"{saved.version}"'}


def _field(exc: TriggerError) -> str:
    """``trigger.actions[0].type`` as the API names it: ``actions[0].type``."""
    path = exc.path
    if path == "trigger":
        return "body"
    return path.removeprefix("trigger.")


def _masked(value: Any, path: str, key: str = "") -> str | None:
    """The path of a ``***`` sent where a secret goes (copied from a GET), else None."""
    if is_secret_option(key) and value == MASK:
        return path
    if isinstance(value, str) and f":{MASK}@" in value:  # a URL's password, masked
        return path
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = _masked(v, f"{path}.{k}" if path else str(k), str(k))
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = _masked(v, f"{path}[{i}]")
            if found:
                return found
    return None


class TriggersApi:
    """The route handlers of ``/triggers``; the triggers' tables are opened on first use."""

    def __init__(self, service: Service, limit: int) -> None:
        self.service = service
        self.limit = limit
        self._lock = asyncio.Lock()
        self._saved: SavedTriggers | None = None
        self._results: ActionResults | None = None
        self._queue: JobQueue | None = None
        self._monitor: Monitor | None = None

    # ---- the tables ------------------------------------------------------------------------

    def durable(self) -> bool:
        scheme = urlsplit(self.service.settings.store.url).scheme
        return scheme in ("sqlite", "postgresql", "postgres")

    def _need_durable(self) -> None:
        if not self.durable():
            raise ApiError(
                409,
                "this store keeps no triggers (an in-memory store); define triggers in the "
                "config file, or use a sqlite:/// or postgresql:// store",
                kind="no-trigger-store",
            )

    def config_triggers(self) -> list[dict[str, Any]]:
        return [t for t in self.service.settings.triggers if isinstance(t, Mapping)]

    async def saved(self) -> SavedTriggers:
        self._need_durable()
        ids = frozenset(str(t.get("id")) for t in self.config_triggers())
        async with self._lock:
            if self._saved is None:
                url = self.service.settings.store.url
                check = untrusted_action_validator(lambda: self.service.allow_networks)
                self._saved = await asyncio.to_thread(
                    SavedTriggers, url, config_ids=ids, validate_action=check
                )
            self._saved.config_ids = ids  # the file may have been reloaded (SIGHUP)
            return self._saved

    async def results(self) -> ActionResults:
        self._need_durable()
        async with self._lock:
            if self._results is None:
                url = self.service.settings.store.url
                self._results = await asyncio.to_thread(ActionResults, url)
            return self._results

    async def queue(self) -> JobQueue:
        self._need_durable()
        async with self._lock:
            if self._queue is None:
                settings = self.service.settings
                self._queue = await asyncio.to_thread(
                    open_job_queue, settings.processor.queue, settings.store.url
                )
            return self._queue

    async def monitor(self) -> Monitor:
        saved, results, queue = await self.saved(), await self.results(), await self.queue()
        async with self._lock:
            if self._monitor is None:
                self._monitor = Monitor(
                    self.service.store,
                    results,
                    queue,
                    saved=saved,
                    config_triggers=len(self.config_triggers()),
                    checkpoints=processor_checkpoints(self.service.settings.processor.partitions),
                )
            return self._monitor

    async def close(self) -> None:
        if self._monitor is not None:
            await asyncio.to_thread(self._monitor.close)
        if self._queue is not None:
            await self._queue.close()
        if self._results is not None:
            await self._results.close()
        if self._saved is not None:
            await asyncio.to_thread(self._saved.close)

    # ---- views -----------------------------------------------------------------------------

    def _view(self, saved: SavedTrigger) -> dict[str, Any]:
        out: dict[str, Any] = redact_triggers([saved.definition])[0]
        out.update(
            source="api",
            version=saved.version,
            created_at=rfc3339(saved.created_at),
            updated_at=rfc3339(saved.updated_at),
        )
        return out

    def _config_views(self) -> list[dict[str, Any]]:
        views = []
        for raw in redact_triggers(self.config_triggers()):
            view = {k: v for k, v in raw.items() if k not in READ_ONLY}
            view.setdefault("enabled", True)
            view.update(source="config", version=None, created_at=None, updated_at=None)
            views.append(view)
        return views

    async def _body(self, request: Request) -> dict[str, Any]:
        data = await json_object(request, self.limit)
        for key in READ_ONLY:  # what a GET adds: a GET, edited, can be sent back
            data.pop(key, None)
        masked = _masked(data, "")
        if masked:
            raise ApiError(
                422,
                f"{masked}: {MASK!r} is how GET shows a secret, not the secret; send the secret "
                "itself (or the whole action again)",
                masked,
            )
        return data

    @staticmethod
    def _refused(exc: Exception) -> ApiError:
        if isinstance(exc, TriggerError):
            detail = f"{_field(exc)}: {exc.message}"
            if exc.excerpt:
                detail += "\n" + exc.excerpt
            return ApiError(422, detail, _field(exc), kind="invalid-trigger")
        if isinstance(exc, TriggerNotFound):
            return ApiError(404, str(exc))
        if isinstance(exc, TriggerVersionMismatch):
            return ApiError(412, str(exc), "If-Match", kind="version-mismatch")
        return ApiError(409, str(exc), "id", kind="trigger-conflict")

    async def _run(self, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return await asyncio.to_thread(functools.partial(fn, *args, **kw))
        except (TriggerError, TriggerNotFound, TriggerConflict) as exc:
            raise self._refused(exc) from None

    @staticmethod
    def _path_id(request: Request) -> str:
        trigger_id: str = request.path_params["id"]
        if trigger_id in RESERVED_IDS:
            raise ApiError(
                409,
                f"{trigger_id!r} is a route under /triggers/, not a trigger id; choose another",
                "id",
                kind="trigger-conflict",
            )
        return trigger_id

    # ---- CRUD ------------------------------------------------------------------------------

    async def list_triggers(self, request: Request) -> Response:
        limit = query(request).limit()
        after = page_start(request)
        after = after if isinstance(after, str) else None
        config = [v for v in self._config_views() if after is None or v["id"] > after]
        saved: list[SavedTrigger] = []
        if self.durable():
            store = await self.saved()
            found = await asyncio.to_thread(store.list, after=after, limit=limit + 1)
            saved = [s for s in found if s.id not in store.config_ids]
        views = sorted([*config, *map(self._view, saved)], key=lambda v: str(v["id"]))
        page = views[:limit]
        more = len(views) > limit
        return reply(
            {
                "triggers": page,
                "next_cursor": page_next(request, more, page[-1]["id"] if page else None),
            }
        )

    async def get_trigger(self, request: Request) -> Response:
        trigger_id = request.path_params["id"]
        for view in self._config_views():
            if view["id"] == trigger_id:
                return reply(view)
        store = await self.saved()
        found: SavedTrigger = await self._run(store.get, trigger_id)
        return reply(self._view(found), headers=_etag(found))

    async def create_trigger(self, request: Request) -> Response:
        data = await self._body(request)
        if data.get("id") in RESERVED_IDS:
            raise ApiError(422, f"id: {data['id']!r} is reserved (a route under /triggers/)", "id")
        store = await self.saved()
        made: SavedTrigger = await self._run(store.create, data)
        await self.service.triggers_changed()
        return reply(self._view(made), 201, {"Location": f"/triggers/{made.id}", **_etag(made)})

    async def replace_trigger(self, request: Request) -> Response:
        trigger_id = self._path_id(request)
        version = _if_version(request)
        data = await self._body(request)
        store = await self.saved()
        saved, created = await self._run(store.replace, trigger_id, data, if_version=version)
        await self.service.triggers_changed()
        return reply(self._view(saved), 201 if created else 200, _etag(saved))

    async def patch_trigger(self, request: Request) -> Response:
        trigger_id = self._path_id(request)
        version = _if_version(request)
        data = await self._body(request)
        store = await self.saved()
        patched = await self._run(store.patch, trigger_id, data, if_version=version)
        await self.service.triggers_changed()
        return reply(self._view(patched), headers=_etag(patched))

    async def delete_trigger(self, request: Request) -> Response:
        trigger_id = self._path_id(request)
        version = _if_version(request)
        store = await self.saved()
        await self._run(store.delete, trigger_id, if_version=version)
        await self.service.triggers_changed()
        return Response(status_code=204)

    async def enable_trigger(self, request: Request) -> Response:
        return await self._set_enabled(request, True)

    async def disable_trigger(self, request: Request) -> Response:
        return await self._set_enabled(request, False)

    async def _set_enabled(self, request: Request, enabled: bool) -> Response:
        trigger_id = self._path_id(request)
        version = _if_version(request)
        store = await self.saved()
        changed = await self._run(store.set_enabled, trigger_id, enabled, if_version=version)
        await self.service.triggers_changed()
        return reply(self._view(changed), headers=_etag(changed))

    # ---- results, DLQ, status --------------------------------------------------------------

    async def list_results(self, request: Request) -> Response:
        q = query(request)
        limit = q.limit()
        before = page_start(request)
        results = await self.results()
        found = await results.list(
            status=q.choice("status", RESULT_STATUSES),
            trigger_id=q.text("trigger_id"),
            event_id=q.text("event_id"),
            before=before if isinstance(before, int) else None,
            limit=limit + 1,
        )
        page = found[:limit]
        views = []
        for r in page:
            view = r.to_dict()
            view.pop("seq", None)
            view["created_at"], view["updated_at"] = rfc3339(r.created_at), rfc3339(r.updated_at)
            views.append(view)
        last = page[-1].seq if page else None
        more = len(found) > limit
        return reply({"results": views, "next_cursor": page_next(request, more, last)})

    async def list_dead(self, request: Request) -> Response:
        queue = await self.queue()
        jobs = await queue.dead(query(request).limit())
        return reply(
            {
                "jobs": [
                    {
                        "key": j.key,
                        "event_id": j.event_id,
                        "trigger_id": j.trigger_id,
                        "action_index": j.action_index,
                        "action_type": j.action.type,
                        "action_name": j.action.name,
                        "attempts": j.attempts,
                        "error": j.error,
                    }
                    for j in jobs
                ]
            }
        )

    async def retry_dead(self, request: Request) -> Response:
        data = await json_object(request, self.limit)
        unknown = sorted(set(data) - {"key"})
        if unknown:
            raise ApiError(400, f"{unknown[0]}: unknown field; expected key", unknown[0])
        key = data.get("key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 1024):
            raise ApiError(400, "key: expected a dead job's key (a string) or nothing", "key")
        queue = await self.queue()
        retried = await queue.retry_dead(key)
        if key is not None and not retried:
            raise ApiError(404, f"no dead job {key!r}")
        return reply({"retried": retried}, 202)

    async def status(self, request: Request) -> Response:
        monitor = await self.monitor()
        figures = await monitor.figures()
        view = figures.to_dict()
        running = self.service.triggers
        view["process"] = (
            {"running": False}
            if running is None
            else {
                "running": True,
                **running.health(),
                "workers": dict(running.workers.counts),
                "in_flight": running.workers.in_flight,
            }
        )
        return reply(view)


_TEXT = {"type": "string", "maxLength": 1024}


def trigger_operations(api: TriggersApi) -> list[Operation]:
    """The ``/triggers`` routes, fixed paths before ``/triggers/{id}`` (they would match it)."""

    def op(method: str, path: str, handler: Any, scope: str, summary: str,
           **kw: Any) -> Operation:  # fmt: skip
        return Operation(method, path, handler, scope, summary, "triggers", **kw)  # type: ignore[arg-type]

    page = (LIMIT, CURSOR)
    return [
        op("GET", "/triggers/results", api.list_results, "read",
           "Action results, newest first",
           query=(Param("trigger_id", _TEXT, "Only results of this trigger."),
                  Param("event_id", _TEXT, "Only results of this event."),
                  Param("status", {"type": "string", "enum": list(RESULT_STATUSES)},
                        "Only results with this status."),
                  *page),
           answer=TriggerResultPage, errors=(409, 503)),
        op("GET", "/triggers/dlq", api.list_dead, "read",
           "Dead action jobs (the DLQ), newest first", query=(LIMIT,), answer=DeadJobPage,
           errors=(409, 503)),
        op("POST", "/triggers/dlq/retry", api.retry_dead, "admin",
           "Run dead jobs again (one by key, or all)", body=RetryDeadIn, ok=202,
           answer=RetryDeadOut, errors=(404, 409, 413, 415, 503)),
        op("GET", "/triggers/status", api.status, "read",
           "Ingestion rate, processing lag, match rate, action outcomes, queue depth, chains",
           answer=TriggerStatus, errors=(409, 503)),
        op("GET", "/triggers", api.list_triggers, "read",
           "Triggers (config file and saved), by id", query=page, answer=TriggerPage,
           errors=(503,)),
        op("POST", "/triggers", api.create_trigger, "admin", "Save a new trigger",
           body=TriggerIn, ok=201, answer=TriggerOut, errors=(409, 413, 415, 422, 503)),
        op("GET", "/triggers/{id}", api.get_trigger, "read", "One trigger", answer=TriggerOut,
           errors=(404, 409, 503)),
        op("PUT", "/triggers/{id}", api.replace_trigger, "admin",
           "Save a trigger under this id (created or replaced)", body=TriggerIn,
           answer=TriggerOut, errors=(409, 412, 413, 415, 422, 503)),
        op("PATCH", "/triggers/{id}", api.patch_trigger, "admin",
           "Change some fields (checked as a whole, like a new trigger)", body=TriggerPatch,
           answer=TriggerOut, errors=(404, 409, 412, 413, 415, 422, 503)),
        op("DELETE", "/triggers/{id}", api.delete_trigger, "admin", "Delete a saved trigger",
           ok=204, errors=(404, 409, 412, 503)),
        op("POST", "/triggers/{id}/enable", api.enable_trigger, "admin", "Match again",
           answer=TriggerOut, errors=(404, 409, 412, 503)),
        op("POST", "/triggers/{id}/disable", api.disable_trigger, "admin",
           "Stop matching (kept, not deleted)", answer=TriggerOut,
           errors=(404, 409, 412, 503)),
    ]  # fmt: skip
