"""The layout of a stream entry: ``{type: body}``, and the fields of a dead-letter entry."""

from __future__ import annotations

_F_TYPE = b"type"  # dead-letter entries only; stream entries are {type: body}
_F_EVENT = b"event"
_NO_TYPE = b""  # field name of an entry whose type is unknown (an event type is never empty)


def _entry(fields: dict[bytes, bytes]) -> tuple[str | None, bytes]:
    """(type or None, body) of a stream entry: ``{type: body}``, or a foreign producer's
    ``{type: ..., event: ...}`` layout."""
    if len(fields) == 1:
        name, body = next(iter(fields.items()))
        return (name.decode() if name else None), body
    type_bytes = fields.get(_F_TYPE)
    return (type_bytes.decode() if type_bytes else None), fields.get(_F_EVENT, b"")
