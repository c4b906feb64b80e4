"""The three webhook payload formats, read back the way receivers read them.

``seed`` is checked against seed 000's shape; both CloudEvents modes are parsed by the
reference CloudEvents SDK (``from_http``), so "valid CloudEvents" means what the SDK accepts.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

from cloudevents.v1.http import from_http  # cloudevents 2.x keeps the 1.x API under v1

from tidings.event import Event
from tidings.webhooks.endpoint import PayloadFormat
from tidings.webhooks.payload import render

WHEN = datetime(2024, 1, 15, 10, 30, 0, tzinfo=UTC)


class OrderPlaced(Event, type="test_payload.order_placed"):
    order_id: str
    total: float


def full_event(**kw: Any) -> Event:
    """An event with every optional attribute set, so each one's transport is exercised."""
    fields: dict[str, Any] = {
        "type": "order.placed",
        "source": "/shop/orders",
        "time": WHEN,
        "subject": "order-1",
        "dataschema": "https://example.com/schemas/order.json",
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
        "aggregate_id": "agg-1",
        "aggregate_type": "Order",
        "aggregate_version": 3,
        "tenant_id": "t-1",
        "user_id": "u-1",
        "request_id": "req-1",
        "trace_id": "trace-1",
        "data": {"order_id": "o-1", "total": 42.5, "lines": [1, 2]},
    }
    fields.update(kw)
    return Event(**fields)


def headers_first(event: Event, fmt: PayloadFormat) -> tuple[dict[str, str], bytes]:
    body, headers = render(event, fmt)
    return headers, body


# ---- seed ----------------------------------------------------------------------------------


def test_seed_body_is_event_type_timestamp_data() -> None:
    event = full_event()
    body, headers = render(event, "seed")
    assert headers == {"Content-Type": "application/json"}
    parsed = json.loads(body)
    assert parsed == {
        "event_type": "order.placed",
        "timestamp": "2024-01-15T10:30:00Z",
        "data": {"order_id": "o-1", "total": 42.5, "lines": [1, 2]},
    }


def test_seed_timestamp_is_utc_with_z_whatever_the_event_zone() -> None:
    local = WHEN.astimezone(timezone(timedelta(hours=5, minutes=30)))
    body, _ = render(full_event(time=local), "seed")
    assert json.loads(body)["timestamp"] == "2024-01-15T10:30:00Z"
    body, _ = render(full_event(time=WHEN.replace(microsecond=123456)), "seed")
    assert json.loads(body)["timestamp"] == "2024-01-15T10:30:00.123456Z"


def test_seed_data_of_a_typed_event_is_its_fields() -> None:
    body, _ = render(OrderPlaced(order_id="o-9", total=1.5, time=WHEN), "seed")
    assert json.loads(body)["data"] == {"order_id": "o-9", "total": 1.5}


def test_seed_without_data_sends_null() -> None:
    body, _ = render(Event(type="ping", time=WHEN), "seed")
    assert json.loads(body) == {
        "event_type": "ping",
        "timestamp": "2024-01-15T10:30:00Z",
        "data": None,
    }


# ---- CloudEvents, structured mode ------------------------------------------------------------


def test_structured_mode_parses_with_the_cloudevents_sdk() -> None:
    event = full_event()
    body, headers = render(event, "cloudevents")
    assert headers == {"Content-Type": "application/cloudevents+json"}
    ce = from_http(headers, body)
    assert ce["specversion"] == "1.0"
    assert ce["id"] == event.id
    assert ce["type"] == "order.placed"
    assert ce["source"] == "/shop/orders"
    assert ce["subject"] == "order-1"
    assert ce["dataschema"] == "https://example.com/schemas/order.json"
    assert datetime.fromisoformat(ce["time"].replace("Z", "+00:00")) == WHEN
    assert ce["correlationid"] == "corr-1" and ce["aggregateversion"] == 3
    assert ce.data == {"order_id": "o-1", "total": 42.5, "lines": [1, 2]}


def test_structured_mode_of_bytes_data_is_data_base64() -> None:
    raw = bytes(range(256))
    event = Event(
        type="blob.stored", time=WHEN, datacontenttype="application/octet-stream", data=raw
    )
    body, headers = render(event, "cloudevents")
    assert json.loads(body)["data_base64"] == base64.b64encode(raw).decode()
    ce = from_http(headers, body)
    assert ce.data == raw
    assert ce["datacontenttype"] == "application/octet-stream"


# ---- CloudEvents, binary mode --------------------------------------------------------------


def test_binary_mode_carries_attributes_in_ce_headers() -> None:
    event = full_event()
    body, headers = render(event, "cloudevents-binary")
    assert headers["ce-id"] == event.id
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-time"] == "2024-01-15T10:30:00Z"
    assert headers["ce-aggregateversion"] == "3"
    assert headers["Content-Type"] == "application/json"
    assert "ce-datacontenttype" not in headers, "binary mode sends it as Content-Type"
    assert json.loads(body) == {"order_id": "o-1", "total": 42.5, "lines": [1, 2]}


def test_binary_mode_parses_to_the_same_event_as_structured_mode() -> None:
    event = full_event(datacontenttype="application/json")
    structured = from_http(*headers_first(event, "cloudevents"))
    binary = from_http(*headers_first(event, "cloudevents-binary"))
    skip = {"time"}  # both parse, but the SDK keeps the text; compared as times below
    assert {k: v for k, v in binary.get_attributes().items() if k not in skip} == {
        k: (str(v) if k == "aggregateversion" else v)  # headers carry text
        for k, v in structured.get_attributes().items()
        if k not in skip
    }
    times = [datetime.fromisoformat(e["time"].replace("Z", "+00:00")) for e in (binary, structured)]
    assert times == [WHEN, WHEN]
    assert binary.data == structured.data == event.data


def test_binary_mode_uses_datacontenttype_as_content_type() -> None:
    event = Event(type="a.b", time=WHEN, datacontenttype="application/vnd.shop+json", data={"x": 1})
    body, headers = render(event, "cloudevents-binary")
    assert headers["Content-Type"] == "application/vnd.shop+json"
    ce = from_http(headers, body)
    assert ce["datacontenttype"] == "application/vnd.shop+json"
    assert ce.data == {"x": 1}


def test_binary_mode_sends_bytes_data_as_the_raw_body() -> None:
    raw = b"\x00\x01binary\xff"
    event = Event(type="blob.stored", time=WHEN, data=raw, datacontenttype="image/png")
    body, headers = render(event, "cloudevents-binary")
    assert body == raw
    assert headers["Content-Type"] == "image/png"
    ce = from_http(headers, body, data_unmarshaller=lambda b: b)
    assert ce.data == raw and ce["type"] == "blob.stored"


def test_binary_mode_bytes_without_a_content_type_are_octet_stream() -> None:
    body, headers = render(
        Event(type="blob.stored", time=WHEN, data=b"\x10\x20"), "cloudevents-binary"
    )
    assert (body, headers["Content-Type"]) == (b"\x10\x20", "application/octet-stream")


def test_binary_mode_without_data_has_an_empty_body() -> None:
    body, headers = render(Event(type="ping", time=WHEN), "cloudevents-binary")
    assert body == b""
    ce = from_http(headers, body)
    assert ce["type"] == "ping" and ce.data is None


def test_binary_mode_text_data_is_the_text_itself() -> None:
    event = Event(type="note.added", time=WHEN, datacontenttype="text/plain", data="hello")
    body, headers = render(event, "cloudevents-binary")
    assert headers["Content-Type"] == "text/plain"
    assert body == b"hello"


def test_binary_mode_percent_encodes_non_ascii_header_values() -> None:
    _, headers = render(full_event(subject="café ☕"), "cloudevents-binary")
    assert headers["ce-subject"].isascii()
    assert unquote(headers["ce-subject"]) == "café ☕"
