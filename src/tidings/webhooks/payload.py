"""The HTTP body and headers a webhook request carries, in each endpoint's payload format.

``seed`` is seed 000's ``{"event_type", "timestamp", "data"}`` that existing receivers parse;
``cloudevents`` is the structured mode (the whole envelope, what a CloudEvents SDK reads);
``cloudevents-binary`` puts the data in the body and every attribute in a ``ce-*`` header.
"""

from __future__ import annotations

import base64
from datetime import UTC
from typing import Any
from urllib.parse import quote

import msgspec

from tidings.event import Event, encode, to_dict
from tidings.webhooks.endpoint import PayloadFormat

__all__ = ["render"]

_json = msgspec.json.Encoder()
JSON = "application/json"
CLOUDEVENTS_JSON = "application/cloudevents+json"


def _timestamp(event: Event) -> str:
    """RFC 3339 in UTC with a ``Z``, as seed 000's receivers expect (``2024-01-15T10:30:00Z``)."""
    text = event.time.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def _header_value(value: Any) -> str:
    """CloudEvents HTTP binding: printable ASCII, everything else percent-encoded (UTF-8)."""
    if isinstance(value, str):
        text = value
    elif hasattr(value, "isoformat"):
        text = str(value.isoformat()).replace("+00:00", "Z")
    else:
        text = _json.encode(value).decode()
    return quote(text, safe=_HEADER_SAFE)


# Printable ASCII except space, '"' and '%', which the binding says to percent-encode.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')


def render(event: Event, fmt: PayloadFormat) -> tuple[bytes, dict[str, str]]:
    """Body and content headers for ``event``; signing and auth headers are added by the worker."""
    if fmt == "seed":
        body = _json.encode(
            {"event_type": event.type, "timestamp": _timestamp(event), "data": event.payload()}
        )
        return body, {"Content-Type": JSON}
    if fmt == "cloudevents":
        return encode(event), {"Content-Type": CLOUDEVENTS_JSON}
    attrs = to_dict(event)
    data = attrs.pop("data", None)
    data_b64 = attrs.pop("data_base64", None)
    attrs.pop("datacontenttype", None)  # binary mode carries it as Content-Type
    headers = {"ce-" + name: _header_value(value) for name, value in attrs.items()}
    if data_b64 is not None:
        headers["Content-Type"] = event.datacontenttype or "application/octet-stream"
        return base64.b64decode(data_b64), headers
    content_type = headers["Content-Type"] = event.datacontenttype or JSON
    if data is None:
        return b"", headers
    if isinstance(data, str) and not _is_json(content_type):
        return data.encode(), headers  # text/plain and the like: the text itself
    return _json.encode(data), headers


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON or media.endswith("+json")
