"""CloudEvents extension attributes tidings has no field for are kept, as the spec asks of an
intermediary; ``specversion`` other than 1.0 is refused with an error naming it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tidings import Bus, Event, EventError
from tidings.event import decode, decode_many, encode, from_dict, to_dict
from tidings.store import open_store
from tidings.webhooks.payload import render

WHEN = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
EXTENSIONS: dict[str, Any] = {
    "traceparent": TRACEPARENT,
    "partitionkey": "customer-7",
    "myext": "value",
    "sequence": 42,
    "sampled": True,
    "ratio": 0.25,
}


class InvoicePaid(Event, type="test_ext.invoice_paid"):
    invoice_id: str


def wire(**attrs: Any) -> bytes:
    body: dict[str, Any] = {"specversion": "1.0", "id": "evt-1", "source": "/test", "type": "a.b"}
    body.update(attrs)
    return json.dumps(body).encode()


def with_extensions(**kw: Any) -> Event:
    fields: dict[str, Any] = {"type": "a.b", "time": WHEN, "data": {"n": 1}}
    fields.update(kw)
    return Event(extensions=dict(EXTENSIONS), **fields)


# --- the codec --------------------------------------------------------------------------------


def test_decode_keeps_unknown_extensions() -> None:
    event = decode(wire(data={"n": 1}, **EXTENSIONS))
    assert event.extensions == EXTENSIONS
    assert event.data == {"n": 1}


def test_extensions_are_top_level_attributes_in_every_encoding() -> None:
    event = with_extensions(correlation_id="c-1")
    body = json.loads(event.to_json())
    assert {k: body[k] for k in EXTENSIONS} == EXTENSIONS
    assert "extensions" not in body
    assert body["correlationid"] == "c-1"
    assert to_dict(event)["traceparent"] == TRACEPARENT
    assert decode(encode(event)) == event
    assert from_dict(event.to_dict()) == event
    assert Event.from_json(event.to_json()).extensions == EXTENSIONS


def test_typed_events_keep_extensions_too() -> None:
    event = InvoicePaid(invoice_id="i-1", time=WHEN, extensions={"traceparent": TRACEPARENT})
    back = decode(encode(event))
    assert type(back) is InvoicePaid and back == event
    assert decode_many(b"[" + encode(event) + b"]") == [event]


def test_from_dict_takes_extensions_flat_or_as_the_python_field() -> None:
    flat = from_dict({"type": "a.b", "traceparent": TRACEPARENT, "partitionkey": "k"})
    assert flat.extensions == {"traceparent": TRACEPARENT, "partitionkey": "k"}
    nested = from_dict({"type": "a.b", "extensions": {"traceparent": TRACEPARENT}})
    assert nested.extensions == {"traceparent": TRACEPARENT}
    assert from_dict({"type": "a.b", "extensions": None}).extensions is None


def test_an_event_without_extensions_has_none() -> None:
    assert decode(wire()).extensions is None
    assert from_dict({"type": "a.b"}).extensions is None


def test_json_null_extension_is_absent() -> None:
    assert decode(wire(myext=None)).extensions is None
    assert decode(wire(myext=None, other="x")).extensions == {"other": "x"}


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("myext", {"a": 1}, "value is an object"),
        ("myext", [1, 2], "value is an array"),
        ("MyExt", "x", "not a valid CloudEvents attribute name"),
        ("my_ext", "x", "not a valid CloudEvents attribute name"),
        ("my-ext", "x", "not a valid CloudEvents attribute name"),
        ("café", "x", "not a valid CloudEvents attribute name"),
    ],
)
def test_bad_extensions_are_refused_naming_the_attribute(
    name: str, value: Any, problem: str
) -> None:
    for parse in (
        lambda: decode(wire(**{name: value})),
        lambda: from_dict({"type": "a.b", name: value}),
    ):
        with pytest.raises(EventError) as info:
            parse()
        assert info.value.field == name
        assert problem in str(info.value)
    with pytest.raises(EventError) as info:
        Event(type="a.b", extensions={name: value})
    assert info.value.field == f"extensions[{name!r}]"
    assert problem in str(info.value)


def test_a_long_extension_name_is_accepted() -> None:
    name = "averyveryverylongextensionname"  # over the advised 20 characters: allowed
    assert decode(wire(**{name: "x"})).extensions == {name: "x"}


@pytest.mark.parametrize("name", ["id", "type", "correlationid", "metadata", "data", "data_base64"])
def test_envelope_attributes_are_not_extensions(name: str) -> None:
    with pytest.raises(EventError) as info:
        Event(type="a.b", extensions={name: "x"})
    assert info.value.field == f"extensions[{name!r}]"
    assert "attribute of the envelope" in str(info.value)


def test_extensions_changed_after_construction_are_checked_on_encode() -> None:
    event = with_extensions()
    assert event.extensions is not None
    event.extensions["nested"] = {"a": 1}  # type: ignore[assignment]
    with pytest.raises(EventError) as info:
        encode(event)
    assert info.value.field == "extensions['nested']"


# --- specversion ------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0.3", "2.0", ""])
def test_specversion_other_than_1_0_is_refused(version: str) -> None:
    for parse in (
        lambda: decode(wire(specversion=version)),
        lambda: from_dict({"type": "a.b", "specversion": version}),
        lambda: Event(type="a.b", specversion=version),
    ):
        with pytest.raises(EventError) as info:
            parse()
        assert info.value.field == "specversion"
        assert "1.0" in str(info.value)


def test_specversion_left_out_of_a_mapping_is_1_0() -> None:
    assert from_dict({"type": "a.b"}).specversion == "1.0"


# --- the CloudEvents SDK, both ways -----------------------------------------------------------


def test_cloudevents_sdk_event_with_extensions_round_trips_through_tidings() -> None:
    sdk_event = CloudEvent(
        {"type": "a.b", "source": "/sdk", "id": "sdk-1", "time": WHEN, **EXTENSIONS},
        {"n": 1},
    )
    message = ce_http.to_structured_event(sdk_event)
    event = decode(message.body)
    assert event.extensions == EXTENSIONS
    # ... and back: tidings' JSON, structured and binary, as the SDK reads them.
    back = ce_http.from_http(
        ce_http.HTTPMessage({"content-type": "application/cloudevents+json"}, encode(event)),
        JSONFormat(),
    )
    body, headers = render(event, "cloudevents-binary")
    binary = ce_http.from_http(
        ce_http.HTTPMessage({k.lower(): v for k, v in headers.items()}, body), JSONFormat()
    )
    for got in (back, binary):
        assert got.get_id() == "sdk-1" and got.get_data() == {"n": 1}
        for name in ("traceparent", "partitionkey", "myext"):
            assert got.get_extension(name) == EXTENSIONS[name], name
    # Binary mode carries every attribute in a header; non-strings as their JSON text.
    assert headers["ce-traceparent"] == TRACEPARENT
    assert headers["ce-partitionkey"] == "customer-7"
    assert (headers["ce-sequence"], headers["ce-sampled"]) == ("42", "true")


def test_tidings_event_with_extensions_round_trips_through_the_sdk() -> None:
    event = with_extensions(source="/tidings", id="t-1")
    sdk_event = JSONFormat().read(None, encode(event))
    assert {name: sdk_event.get_extension(name) for name in EXTENSIONS} == EXTENSIONS
    again = decode(ce_http.to_structured_event(sdk_event).body)
    assert again == event


def test_the_webhook_cloudevents_body_keeps_extensions() -> None:
    body, _ = render(with_extensions(), "cloudevents")
    assert {k: json.loads(body)[k] for k in EXTENSIONS} == EXTENSIONS


# --- stores and the bus keep them -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stores_keep_extensions(kind: str, tmp_path: Path) -> None:
    url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'events.db'}"
    store = open_store(url)
    try:
        event = with_extensions()
        store.append(event, stream="s-1")
        [rec] = store.load_stream("s-1")
        assert rec.event.extensions == EXTENSIONS
    finally:
        store.close()


def test_the_memory_transport_keeps_extensions() -> None:
    seen: list[Event] = []
    bus = Bus(transport="memory://")
    bus.subscribe("a.*", seen.append)
    bus.publish(with_extensions())
    bus.close(timeout=5)
    assert [e.extensions for e in seen] == [EXTENSIONS]


def test_broken_json_after_an_extension_is_an_event_error() -> None:
    with pytest.raises(EventError) as info:
        decode(b'{"specversion":"1.0","id":"1","source":"s","type":"t","myext":"x", oops')
    assert info.value.field == "$" and "not valid JSON" in str(info.value)
