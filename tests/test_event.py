"""The event envelope: ids, time, typed events, the JSON codec, errors and CloudEvents interop."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1 import conversion as ce1_conversion
from cloudevents.v1 import http as ce1_http
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings import Event, EventError
from tidings.event import (
    decode,
    decode_many,
    encode,
    event_class,
    from_dict,
    new_id,
    registered_types,
    to_dict,
)

# --- typed events used throughout -------------------------------------------------------------


class LineItem(msgspec.Struct):
    sku: str
    quantity: int
    unit_price: float


class PaymentLinkCreated(Event, type="payment_link.created"):
    payment_link_id: str
    amount: float
    currency: str = "USD"


class OrderPlaced(Event, type="test_event.order.placed"):
    order_id: str
    lines: list[LineItem]
    tags: list[str] = []
    placed_at: datetime | None = None
    note: str | None = None


class AttachmentStored(Event, type="test_event.attachment.stored"):
    name: str
    content: bytes


class UserLoggedOut(Event, type="test_event.user.logged_out"):
    """A typed event with no fields of its own: the type alone is the fact."""


WHEN = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)


def wire(**attrs: Any) -> bytes:
    """A structured-mode CloudEvents JSON body with sensible required attributes."""
    body: dict[str, Any] = {"specversion": "1.0", "id": "evt-1", "source": "/test"}
    body.update(attrs)
    return json.dumps(body).encode()


def full_event(**overrides: Any) -> Event:
    attrs: dict[str, Any] = {
        "type": "test_event.everything",
        "source": "/billing",
        "time": WHEN,
        "subject": "invoice/42",
        "datacontenttype": "application/json",
        "dataschema": "https://example.com/schemas/everything.json",
        "correlation_id": "corr-1",
        "causation_id": "cause-1",
        "aggregate_id": "invoice-42",
        "aggregate_type": "invoice",
        "aggregate_version": 7,
        "tenant_id": "tenant-1",
        "user_id": "user-1",
        "session_id": "session-1",
        "request_id": "request-1",
        "trace_id": "trace-1",
        "metadata": {"origin": "api", "attempt": 2},
        "data": {"total": 12.5, "items": [1, 2, 3]},
    }
    attrs.update(overrides)
    return Event(**attrs)


# The Python attribute, its CloudEvents (JSON) name and a sample value, for every extension.
EXTENSIONS: list[tuple[str, str, Any]] = [
    ("correlation_id", "correlationid", "corr-1"),
    ("causation_id", "causationid", "cause-1"),
    ("aggregate_id", "aggregateid", "invoice-42"),
    ("aggregate_type", "aggregatetype", "invoice"),
    ("aggregate_version", "aggregateversion", 7),
    ("tenant_id", "tenantid", "tenant-1"),
    ("user_id", "userid", "user-1"),
    ("session_id", "sessionid", "session-1"),
    ("request_id", "requestid", "request-1"),
    ("trace_id", "traceid", "trace-1"),
    ("metadata", "metadata", {"origin": "api", "attempt": 2}),
]


# --- ids and time ----------------------------------------------------------------------------


def test_ids_are_uuidv7() -> None:
    parsed = uuid.UUID(Event(type="a.b").id)
    assert parsed.version == 7
    assert parsed.variant == uuid.RFC_4122
    assert uuid.UUID(new_id()).version == 7


def test_ids_of_events_created_in_sequence_sort_in_creation_order() -> None:
    # Thousands in a tight loop: many share a millisecond, so this checks the in-ms counter too.
    ids = [Event(type="a.b").id for _ in range(5_000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_id_embeds_creation_time() -> None:
    before = datetime.now(UTC)
    event = Event(type="a.b")
    after = datetime.now(UTC)
    millis = uuid.UUID(event.id).int >> 80  # UUIDv7: the top 48 bits are Unix milliseconds
    stamp = datetime.fromtimestamp(millis / 1000, UTC)
    assert before - timedelta(milliseconds=1) <= stamp <= after


def test_time_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    event = Event(type="a.b")
    after = datetime.now(UTC)
    assert event.time.tzinfo is not None
    assert event.time.utcoffset() == timedelta(0)
    assert before <= event.time <= after


def test_envelope_defaults() -> None:
    event = Event(type="a.b")
    assert event.specversion == "1.0"
    assert event.source == "tidings"
    assert event.data is None
    assert event.subject is None and event.correlation_id is None and event.metadata is None


# --- typed events ----------------------------------------------------------------------------


def test_typed_event_declaration_sets_type_and_registers_the_class() -> None:
    event = PaymentLinkCreated(payment_link_id="pl-1", amount=10.0)
    assert event.type == "payment_link.created"
    assert event.currency == "USD"
    assert event_class("payment_link.created") is PaymentLinkCreated
    assert registered_types()["test_event.order.placed"] is OrderPlaced
    assert event_class("test_event.never.registered") is None


def test_typed_event_round_trips_through_json() -> None:
    event = PaymentLinkCreated(
        payment_link_id="pl-1", amount=19.99, currency="EUR", aggregate_id="pl-1"
    )
    back = decode(encode(event))
    assert type(back) is PaymentLinkCreated
    assert back == event
    assert back.amount == 19.99 and back.currency == "EUR"


def test_typed_event_with_nested_structs_lists_and_datetimes_round_trips() -> None:
    event = OrderPlaced(
        order_id="o-1",
        lines=[LineItem("sku-1", 2, 9.5), LineItem("sku-2", 1, 100.0)],
        tags=["gift", "express"],
        placed_at=datetime(2024, 1, 2, 3, 4, 5, 600000, tzinfo=UTC),
        time=WHEN,
        correlation_id="corr-9",
    )
    raw = encode(event)
    body = json.loads(raw)
    assert body["data"] == {
        "order_id": "o-1",
        "lines": [
            {"sku": "sku-1", "quantity": 2, "unit_price": 9.5},
            {"sku": "sku-2", "quantity": 1, "unit_price": 100.0},
        ],
        "tags": ["gift", "express"],
        "placed_at": "2024-01-02T03:04:05.600000Z",
        "note": None,
    }
    back = decode(raw)
    assert type(back) is OrderPlaced
    assert back == event
    assert isinstance(back.lines[0], LineItem)
    assert back.placed_at == event.placed_at


@settings(max_examples=100, deadline=None)
@given(
    payment_link_id=st.text(min_size=1, max_size=20),
    amount=st.floats(allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(["USD", "EUR", "GBP"]),
    aggregate_version=st.none() | st.integers(min_value=0, max_value=2**53),
)
def test_typed_round_trip_property(
    payment_link_id: str, amount: float, currency: str, aggregate_version: int | None
) -> None:
    event = PaymentLinkCreated(
        payment_link_id=payment_link_id,
        amount=amount,
        currency=currency,
        aggregate_version=aggregate_version,
    )
    back = decode(encode(event))
    assert type(back) is PaymentLinkCreated
    assert back == event


def test_typed_event_missing_optional_data_fields_take_their_defaults() -> None:
    back = decode(wire(type="test_event.order.placed", data={"order_id": "o-2", "lines": []}))
    assert isinstance(back, OrderPlaced)
    assert back.tags == [] and back.placed_at is None and back.note is None


def test_typed_event_bytes_field_round_trips() -> None:
    event = AttachmentStored(name="a.bin", content=b"\x00\xff\x10")
    back = decode(encode(event))
    assert type(back) is AttachmentStored
    assert back.content == b"\x00\xff\x10"


def test_payload_of_typed_event_is_its_fields() -> None:
    event = PaymentLinkCreated(payment_link_id="pl-1", amount=5.0)
    assert event.payload() == {"payment_link_id": "pl-1", "amount": 5.0, "currency": "USD"}
    assert PaymentLinkCreated.__data_fields__ == ("payment_link_id", "amount", "currency")


def test_payload_of_untyped_event_is_data() -> None:
    assert Event(type="a.b", data={"x": 1}).payload() == {"x": 1}
    assert Event(type="a.b").payload() is None


def test_typed_event_without_fields_round_trips_to_its_class() -> None:
    event = UserLoggedOut(user_id="u-1")
    assert event_class("test_event.user.logged_out") is UserLoggedOut
    back = decode(encode(event))
    assert type(back) is UserLoggedOut
    assert back == event


def test_two_classes_registering_the_same_type_raise() -> None:
    with pytest.raises(EventError) as info:

        class Impostor(Event, type="payment_link.created"):
            link: str

    assert info.value.field == "type"
    assert "payment_link.created" in str(info.value)
    assert "PaymentLinkCreated" in str(info.value)
    assert "own type name" in str(info.value)
    assert event_class("payment_link.created") is PaymentLinkCreated


def test_same_class_name_in_another_module_cannot_steal_a_type() -> None:
    source = "class Stolen(Event, type='test_event.stolen'):\n    a: int\n"
    first: dict[str, Any] = {"Event": Event, "__name__": "tidings_test_module_a"}
    exec(source, first)
    second: dict[str, Any] = {"Event": Event, "__name__": "tidings_test_module_b"}
    with pytest.raises(EventError):
        exec(source, second)
    assert event_class("test_event.stolen") is first["Stolen"]


@pytest.mark.parametrize("bad", ["", "has space", "tab\there"])
def test_typed_event_with_invalid_type_name_is_rejected(bad: str) -> None:
    with pytest.raises(EventError) as info:

        class Bad(Event, type=bad):
            x: int

    assert info.value.field == "type"


def test_typed_event_with_data_set_cannot_be_encoded() -> None:
    event = PaymentLinkCreated(payment_link_id="pl-1", amount=1.0, data={"amount": 2})
    with pytest.raises(EventError) as info:
        encode(event)
    assert info.value.field == "data"
    assert "typed event" in str(info.value)
    assert "Set the typed fields instead of data" in str(info.value)


# --- untyped events, payloads, keys -----------------------------------------------------------


def test_unknown_type_decodes_to_plain_event_with_parsed_json_data() -> None:
    back = decode(wire(type="test_event.unknown", data={"a": [1, 2, {"b": None}], "c": "d"}))
    assert type(back) is Event
    assert back.type == "test_event.unknown"
    assert back.data == {"a": [1, 2, {"b": None}], "c": "d"}


@pytest.mark.parametrize("data", [None, 0, "text", [1, "two"], {"nested": {"deep": True}}])
def test_untyped_event_round_trips(data: Any) -> None:
    event = full_event(data=data)
    back = decode(encode(event))
    assert type(back) is Event
    assert back == event


def test_every_extension_has_its_cloudevents_json_name() -> None:
    body = json.loads(encode(full_event()))
    for attr, name, value in EXTENSIONS:
        assert body[name] == value, attr
        assert attr not in body or attr == name
    assert body["time"] == "2024-05-01T12:30:45.123456Z"
    assert body["specversion"] == "1.0"


def test_absent_optional_attributes_are_left_out_of_json() -> None:
    body = json.loads(encode(Event(type="a.b")))
    assert set(body) == {"specversion", "id", "source", "type", "time"}


@pytest.mark.parametrize(
    ("aggregate_id", "subject", "key"),
    [("agg-1", "subj-1", "agg-1"), (None, "subj-1", "subj-1"), (None, None, None), ("", "s", "")],
)
def test_key_is_aggregate_id_else_subject_else_none(
    aggregate_id: str | None, subject: str | None, key: str | None
) -> None:
    assert Event(type="a.b", aggregate_id=aggregate_id, subject=subject).key == key


def test_bytes_data_travels_as_data_base64() -> None:
    blob = bytes(range(256))
    event = Event(type="a.blob", data=blob)
    body = json.loads(encode(event))
    assert "data" not in body
    assert base64.b64decode(body["data_base64"]) == blob
    back = decode(encode(event))
    assert back.data == blob
    assert back == event


def test_invalid_data_base64_is_rejected() -> None:
    with pytest.raises(EventError) as info:
        decode(wire(type="a.blob", data_base64="not base64!"))
    assert info.value.field == "data_base64"


def test_data_that_is_not_json_serialisable_cannot_be_encoded() -> None:
    with pytest.raises(EventError) as info:
        encode(Event(type="a.b", data={"x": object()}))
    assert info.value.field == "data"


def test_encode_rejects_non_events() -> None:
    with pytest.raises(TypeError):
        encode({"type": "a.b"})  # type: ignore[arg-type]


def test_to_json_and_from_json_methods() -> None:
    event = PaymentLinkCreated(payment_link_id="pl-1", amount=1.0)
    assert event.to_json() == encode(event)
    assert Event.from_json(event.to_json()) == event
    assert Event.from_json(event.to_json().decode()) == event


# --- correlation and causation ---------------------------------------------------------------


def test_caused_by_copies_the_parents_correlation_id() -> None:
    parent = Event(type="order.placed", correlation_id="corr-1")
    child = Event(type="payment.requested")
    assert child.caused_by(parent) is child
    assert child.correlation_id == "corr-1"
    assert child.causation_id == parent.id


def test_caused_by_uses_parent_id_when_parent_has_no_correlation() -> None:
    parent = Event(type="order.placed")
    child = Event(type="payment.requested").caused_by(parent)
    assert child.correlation_id == parent.id
    assert child.causation_id == parent.id


def test_a_chain_keeps_one_correlation_id() -> None:
    root = Event(type="a")
    second = Event(type="b").caused_by(root)
    third = Event(type="c").caused_by(second)
    assert second.correlation_id == third.correlation_id == root.id
    assert third.causation_id == second.id


# --- decoding: attributes, time, from_dict, decode_many ---------------------------------------


def test_decode_reads_every_attribute() -> None:
    raw = wire(
        type="test_event.attrs",
        time="2024-05-01T12:30:45.123456Z",
        subject="invoice/42",
        datacontenttype="application/json",
        dataschema="https://example.com/s.json",
        **{name: value for _, name, value in EXTENSIONS},
        data={"ok": True},
    )
    event = decode(raw)
    assert event.id == "evt-1" and event.source == "/test" and event.specversion == "1.0"
    assert event.time == WHEN
    assert event.subject == "invoice/42"
    assert event.datacontenttype == "application/json"
    assert event.dataschema == "https://example.com/s.json"
    for attr, _, value in EXTENSIONS:
        assert getattr(event, attr) == value, attr
    assert event.data == {"ok": True}


def test_decode_keeps_unknown_extensions() -> None:
    event = decode(wire(type="a.b", someextension="x"))
    assert event.type == "a.b"
    assert event.extensions == {"someextension": "x"}  # more in tests/test_event_extensions.py


def test_decode_without_time_fills_in_now() -> None:
    before = datetime.now(UTC)
    event = decode(wire(type="a.b"))
    assert before <= event.time <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T14:30:45+02:00", datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC)),
        ("2024-05-01T07:00:00-05:30", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
        ("2024-05-01T12:30:45+00:00", datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC)),
        ("2024-05-01T12:30:45Z", datetime(2024, 5, 1, 12, 30, 45, tzinfo=UTC)),
    ],
)
def test_decode_normalises_time_to_utc(text: str, expected: datetime) -> None:
    event = decode(wire(type="a.b", time=text))
    assert event.time == expected
    assert event.time.utcoffset() == timedelta(0)
    assert event.time.tzinfo is UTC
    assert event.time.hour == expected.hour  # normalised, not merely equal


def test_from_dict_normalises_an_aware_datetime_to_utc() -> None:
    paris = datetime(2024, 7, 1, 14, 0, tzinfo=ZoneInfo("Europe/Paris"))
    event = from_dict({"type": "a.b", "time": paris})
    assert event.time == paris
    assert event.time.tzinfo is UTC


def test_from_dict_normalises_a_zero_offset_zone_to_utc() -> None:
    london_winter = datetime(2024, 1, 15, 9, 0, tzinfo=ZoneInfo("Europe/London"))
    event = from_dict({"type": "a.b", "time": london_winter})
    assert event.time.tzinfo is UTC


def test_from_dict_validates_and_fills_defaults() -> None:
    event = from_dict({"type": "a.b", "data": {"x": 1}})
    assert type(event) is Event
    assert event.specversion == "1.0"
    assert event.source == "tidings"
    assert uuid.UUID(event.id).version == 7
    assert event.time.utcoffset() == timedelta(0)
    assert event.data == {"x": 1}


def test_from_dict_converts_typed_data() -> None:
    event = from_dict(
        {
            "type": "test_event.order.placed",
            "id": "o-evt",
            "time": "2024-05-01T12:30:45.123456Z",
            "correlationid": "corr-2",
            "data": {
                "order_id": "o-3",
                "lines": [{"sku": "s", "quantity": 3, "unit_price": 2}],
                "placed_at": "2024-01-01T00:00:00+01:00",
            },
        }
    )
    assert type(event) is OrderPlaced
    assert event.id == "o-evt" and event.time == WHEN and event.correlation_id == "corr-2"
    assert event.lines == [LineItem("s", 3, 2.0)]
    assert event.placed_at == datetime(2023, 12, 31, 23, 0, tzinfo=UTC)


def test_from_dict_round_trips_to_dict() -> None:
    for event in (
        full_event(),
        OrderPlaced(order_id="o", lines=[LineItem("a", 1, 1.0)], placed_at=WHEN),
    ):
        assert event.to_dict() == to_dict(event)
        back = Event.from_dict(event.to_dict())
        assert type(back) is type(event)
        assert back == event


def test_from_dict_rejects_wrong_typed_data() -> None:
    with pytest.raises(EventError) as info:
        from_dict({"type": "payment_link.created", "data": {"payment_link_id": "p", "amount": "x"}})
    assert info.value.field == "data.amount"


def test_from_dict_rejects_non_mappings() -> None:
    with pytest.raises(EventError) as info:
        from_dict([("type", "a.b")])  # type: ignore[arg-type]
    assert info.value.field == "$"
    assert "expected an object" in str(info.value)


def test_decode_many_decodes_an_array() -> None:
    events = [PaymentLinkCreated(payment_link_id="p", amount=1.0), Event(type="a.b", data=[1])]
    raw = b"[" + b",".join(encode(e) for e in events) + b"]"
    assert decode_many(raw) == events
    assert decode_many(b"[]") == []


def test_decode_many_error_names_the_index() -> None:
    good = encode(Event(type="a.b"))
    bad = wire(type="payment_link.created", data={"payment_link_id": "p", "amount": "lots"})
    with pytest.raises(EventError) as info:
        decode_many(b"[" + good + b"," + good + b"," + bad + b"]")
    assert info.value.field == "[2].data.amount"
    assert "[2].data.amount" in str(info.value)


def test_decode_many_rejects_a_non_array() -> None:
    with pytest.raises(EventError) as info:
        decode_many(encode(Event(type="a.b")))
    assert info.value.field == "$"
    assert "array" in str(info.value)


# --- invalid input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "advice"),
    [
        (b'{"specversion":"1.0","id":"1","source":"s"}', "type", "needs a non-empty type"),
        (wire(type=""), "type", "needs a non-empty type"),
        (wire(type="has space"), "type", "needs a non-empty type"),
        (wire(type="a.b", time="yesterday"), "time", "RFC 3339"),
        (wire(type="a.b", time="2024-05-01T12:00:00"), "time", "UTC offset"),
        (wire(type="a.b", time=12), "time", "RFC 3339"),
        (
            wire(type="payment_link.created", data={"payment_link_id": "p", "amount": "ten"}),
            "data.amount",
            "check its field types",
        ),
        (
            wire(type="payment_link.created", data={"amount": 1}),
            "data.payment_link_id",
            "check its field types",
        ),
        (
            wire(
                type="test_event.order.placed",
                data={"order_id": "o", "lines": [{"sku": "s", "quantity": "x", "unit_price": 1}]},
            ),
            "data.lines[0].quantity",
            "check its field types",
        ),
        (wire(type="a.b", aggregateversion="seven"), "aggregateversion", "Expected `int"),
        (b"not json at all", "$", "not valid JSON"),
        (b'{"type": "a.b"', "$", "not valid JSON"),
    ],
)
def test_invalid_input_raises_event_error_naming_the_field(
    raw: bytes, field: str, advice: str
) -> None:
    with pytest.raises(EventError) as info:
        decode(raw)
    assert info.value.field == field
    assert f"field {field!r}" in str(info.value)
    assert advice in str(info.value)
    assert isinstance(info.value, ValueError)


def test_event_without_type_raises() -> None:
    with pytest.raises(EventError) as info:
        Event()
    assert info.value.field == "type"
    assert "Pass type=" in str(info.value)


def test_event_with_empty_type_raises() -> None:
    with pytest.raises(EventError) as info:
        Event(type="")
    assert info.value.field == "type"


def test_naive_datetime_at_construction_raises() -> None:
    with pytest.raises(EventError) as info:
        Event(type="a.b", time=datetime(2024, 5, 1, 12, 0))
    assert info.value.field == "time"
    assert "datetime.now(UTC)" in str(info.value)


def test_event_error_carries_problem_and_hint() -> None:
    err = EventError("data.amount", "Expected `float`", "Check the type.")
    assert err.field == "data.amount"
    assert err.problem == "Expected `float`"
    assert err.hint == "Check the type."
    assert str(err) == "invalid event: field 'data.amount': Expected `float`. Check the type."


# --- CloudEvents SDK interop ---------------------------------------------------------------


def _sdk_attributes(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "specversion": event.specversion,
        "time": event.time,
        "subject": event.subject,
    }


@pytest.mark.parametrize(
    "event",
    [
        full_event(),
        full_event(data="plain text", datacontenttype="text/plain"),
        PaymentLinkCreated(
            payment_link_id="pl-1", amount=10.5, subject="pl-1", correlation_id="c", time=WHEN
        ),
    ],
    ids=["untyped", "text", "typed"],
)
def test_cloudevents_sdk_reads_our_json(event: Event) -> None:
    message = ce_http.HTTPMessage(
        headers={"content-type": "application/cloudevents+json"}, body=encode(event)
    )
    sdk_event = ce_http.from_http(message, JSONFormat())
    assert isinstance(sdk_event, CloudEvent)
    assert sdk_event.get_id() == event.id
    assert sdk_event.get_source() == event.source
    assert sdk_event.get_type() == event.type
    assert sdk_event.get_specversion() == "1.0"
    assert sdk_event.get_time() == event.time
    assert sdk_event.get_subject() == event.subject
    assert sdk_event.get_datacontenttype() == event.datacontenttype
    assert sdk_event.get_dataschema() == event.dataschema
    assert sdk_event.get_data() == event.payload()
    for attr, name, _ in EXTENSIONS:
        assert sdk_event.get_extension(name) == getattr(event, attr), name


def test_cloudevents_sdk_reads_our_binary_data() -> None:
    event = Event(type="a.blob", data=b"\x00\x01\xfe\xff")
    sdk_event = JSONFormat().read(None, encode(event))
    assert sdk_event.get_data() == b"\x00\x01\xfe\xff"


def test_cloudevents_v1_compat_api_reads_our_json() -> None:
    event = full_event()
    sdk_event = ce1_http.from_http({"content-type": "application/cloudevents+json"}, encode(event))
    assert sdk_event["id"] == event.id
    assert sdk_event["source"] == event.source
    assert sdk_event["type"] == event.type
    assert sdk_event["specversion"] == "1.0"
    assert datetime.fromisoformat(sdk_event["time"]) == event.time
    assert sdk_event["subject"] == event.subject
    assert sdk_event.data == event.data
    for attr, name, _ in EXTENSIONS:
        assert sdk_event[name] == getattr(event, attr), name
    assert ce1_http.from_json(encode(event))["id"] == event.id


def test_event_made_by_cloudevents_sdk_decodes_into_tidings() -> None:
    sdk_event = CloudEvent(
        {
            "type": "test_event.from_sdk",
            "source": "/sdk",
            "subject": "thing/1",
            "time": WHEN,
            "dataschema": "https://example.com/s.json",
            "correlationid": "corr-sdk",
            "causationid": "cause-sdk",
            "aggregateid": "agg-sdk",
            "aggregatetype": "thing",
            "aggregateversion": 3,
            "tenantid": "t-sdk",
            "userid": "u-sdk",
            "sessionid": "s-sdk",
            "requestid": "r-sdk",
            "traceid": "tr-sdk",
        },
        {"hello": ["world", 1]},
    )
    message = ce_http.to_structured_event(sdk_event)
    assert message.headers["content-type"] == "application/cloudevents+json"
    event = decode(message.body)
    assert type(event) is Event
    assert event.id == sdk_event.get_id()
    assert event.source == "/sdk"
    assert event.type == "test_event.from_sdk"
    assert event.specversion == "1.0"
    assert event.time == WHEN
    assert event.subject == "thing/1"
    assert event.dataschema == "https://example.com/s.json"
    assert event.data == {"hello": ["world", 1]}
    for attr, name, _ in EXTENSIONS:
        if name != "metadata":
            assert getattr(event, attr) == sdk_event.get_extension(name), name


def test_typed_event_made_by_cloudevents_sdk_decodes_into_its_class() -> None:
    sdk_event = CloudEvent(
        {"type": "payment_link.created", "source": "/payments", "aggregateid": "pl-7"},
        {"payment_link_id": "pl-7", "amount": 42, "currency": "GBP"},
    )
    event = decode(ce_http.to_structured_event(sdk_event).body)
    assert type(event) is PaymentLinkCreated
    assert event.payment_link_id == "pl-7" and event.amount == 42.0 and event.currency == "GBP"
    assert event.key == "pl-7"
    assert event.time == sdk_event.get_time()


def test_binary_data_made_by_cloudevents_sdk_decodes_to_bytes() -> None:
    sdk_event = CloudEvent({"type": "a.blob", "source": "/sdk"}, b"\x00\x01\x02")
    event = decode(ce_http.to_structured_event(sdk_event).body)
    assert event.data == b"\x00\x01\x02"


def test_event_made_by_cloudevents_v1_compat_api_decodes_into_tidings() -> None:
    sdk_event = ce1_http.CloudEvent(
        {"type": "test_event.from_v1", "source": "/v1", "subject": "s", "correlationid": "c"},
        {"n": 1},
    )
    headers, body = ce1_conversion.to_structured(sdk_event)
    assert headers["content-type"] == "application/cloudevents+json"
    event = decode(body)
    assert event.id == sdk_event["id"]
    assert event.source == "/v1" and event.type == "test_event.from_v1"
    assert event.time == datetime.fromisoformat(sdk_event["time"])
    assert event.subject == "s" and event.correlation_id == "c"
    assert event.data == {"n": 1}


def test_from_dict_accepts_python_attribute_names() -> None:
    event = from_dict({"type": "a.b", "correlation_id": "c-1", "aggregate_id": "agg-1"})
    assert event.correlation_id == "c-1" and event.aggregate_id == "agg-1"


def test_empty_metadata_round_trips() -> None:
    event = Event(type="a.b", metadata={})
    assert decode(encode(event)) == event


def test_a_typed_field_may_default_an_envelope_attribute_but_not_change_its_type() -> None:
    class Linked(Event, type="test_event.link.made"):
        aggregate_type: str | None = "payment_link"

    assert Linked.from_json(Linked().to_json()).aggregate_type == "payment_link"
    with pytest.raises(EventError) as caught:

        class UserMade(Event, type="test_event.user.made"):
            user_id: int  # travels as the CloudEvents attribute userid, a string

    assert caught.value.field == "UserMade.user_id"
    assert "str | None" in str(caught.value) and "Rename the field" in str(caught.value)
