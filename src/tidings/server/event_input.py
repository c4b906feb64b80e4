"""Events in a request body: one CloudEvent or a list, or seed 000's ``{event_type, timestamp,
data}``; each checked by tidings' own rules, a refusal naming the failing field's path
(``[3].time`` in a batch)."""

from __future__ import annotations

from typing import Any

from tidings.event import SPECVERSION, Event, EventError, from_dict
from tidings.server.body import ApiError

__all__ = ["parse_events"]


def _from_seed(item: dict[str, Any]) -> dict[str, Any]:
    """Seed 000's ``{"event_type", "timestamp", "data"}`` becomes a CloudEvent."""
    if "type" in item or "event_type" not in item:
        return item
    out: dict[str, Any] = {"type": item["event_type"]}
    if "timestamp" in item:
        out["time"] = item["timestamp"]
    if "data" in item:
        out["data"] = item["data"]
    if "id" in item:
        out["id"] = item["id"]
    return out


def parse_events(data: Any, max_batch: int) -> list[Event]:
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ApiError(400, "body: expected an event or a non-empty list of events")
    if len(items) > max_batch:
        raise ApiError(413, f"{len(items)} events in one request; the limit is {max_batch}")
    events: list[Event] = []
    for i, item in enumerate(items):
        where = f"[{i}]." if isinstance(data, list) else ""
        if not isinstance(item, dict):
            raise ApiError(400, f"{where or 'body'}: expected a JSON object", where or None)
        version = item.get("specversion", SPECVERSION)
        if version != SPECVERSION:
            raise ApiError(
                400,
                f"{where}specversion: expected {SPECVERSION!r} (CloudEvents 1.0), got "
                f"{version!r}; send specversion 1.0 or leave it out",
                f"{where}specversion",
            )
        try:  # from_dict fills in id, time, source and specversion when a producer leaves them
            events.append(from_dict(_from_seed(item)))
        except EventError as exc:
            raise ApiError(400, f"{where}{exc}", f"{where}{exc.field}") from None
    return events
