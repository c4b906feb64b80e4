"""The event envelope: CloudEvents 1.0 attributes, tidings extensions, typed events, JSON codec.

The envelope is a msgspec Struct because events are built and encoded on every hot path; msgspec
builds them an order of magnitude faster than pydantic and validates only at the edges (JSON and
dict decoding), where untrusted input arrives. The JSON form is structured-mode CloudEvents: the
extensions use CloudEvents' lowercase attribute names (``correlationid``, ``aggregateid`` ...).
Extension attributes tidings does not know (``traceparent``, ``partitionkey``, any ``myext``)
are kept in ``Event.extensions`` and written back as top-level attributes, as the CloudEvents
spec asks of an intermediary.
"""

from __future__ import annotations

import base64
import inspect
import math
import re
import typing
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Self

import msgspec
import uuid_utils

__all__ = [
    "Event",
    "EventError",
    "ExtensionValue",
    "current_event",
    "decode",
    "decode_many",
    "encode",
    "event_class",
    "from_dict",
    "new_id",
    "registered_types",
    "to_dict",
]

SPECVERSION = "1.0"
DEFAULT_SOURCE = "tidings"

_TYPE_RE = re.compile(r"^[^\s]+$")

#: What an extension attribute may hold: CloudEvents' String, Integer and Boolean (URI, Timestamp
#: and Binary travel as strings); numbers beyond integers are accepted, as JSON carries them.
ExtensionValue = str | int | float | bool
# CloudEvents attribute names: lowercase ASCII letters and digits (20 at most is only advised).
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")


class EventError(ValueError):
    """An event could not be built or decoded; ``field`` names the attribute at fault."""

    def __init__(self, field: str, problem: str, hint: str = "") -> None:
        self.field = field
        self.problem = problem
        self.hint = hint
        text = f"invalid event: field {field!r}: {problem}"
        super().__init__(f"{text}. {hint}" if hint else text)


def new_id() -> str:
    """A time-ordered UUIDv7 as text: sortable by creation time, unique without coordination."""
    return str(uuid_utils.uuid7())


def _utcnow() -> datetime:
    return datetime.now(UTC)


# Python attribute name -> CloudEvents attribute name, for every optional envelope attribute.
_OPTIONAL_ATTRS: tuple[tuple[str, str], ...] = (
    ("subject", "subject"),
    ("datacontenttype", "datacontenttype"),
    ("dataschema", "dataschema"),
    ("correlation_id", "correlationid"),
    ("causation_id", "causationid"),
    ("aggregate_id", "aggregateid"),
    ("aggregate_type", "aggregatetype"),
    ("aggregate_version", "aggregateversion"),
    ("tenant_id", "tenantid"),
    ("user_id", "userid"),
    ("session_id", "sessionid"),
    ("request_id", "requestid"),
    ("trace_id", "traceid"),
)

_WIRE_NAMES = {attr: wire for attr, wire in _OPTIONAL_ATTRS if attr != wire}

_registry: dict[str, type[Event]] = {}


class _EventMeta(msgspec.StructMeta):
    """Accepts ``class X(Event, type="x.y")``: fixes the type's default and registers the class."""

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        type: str | None = None,
        **kwargs: Any,
    ) -> _EventMeta:
        if type is not None:
            if not isinstance(type, str) or not _TYPE_RE.match(type):
                raise EventError("type", f"{type!r} is not a non-empty name without whitespace")
            namespace["type"] = type
            namespace.setdefault("__annotations__", {})["type"] = str
        kwargs.setdefault("kw_only", True)
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        if bases and bases != (msgspec.Struct,):
            _finish_subclass(cls, type)  # type: ignore[arg-type]
        return cls


class Event(msgspec.Struct, metaclass=_EventMeta, kw_only=True):
    """One event: CloudEvents attributes plus correlation, aggregate and actor extensions.

    Declare a typed event by subclassing with ``type=``; its fields are the event's ``data``::

        class PaymentLinkCreated(Event, type="payment_link.created"):
            payment_link_id: str
            amount: float
    """

    type: str = ""
    id: str = msgspec.field(default_factory=new_id)
    source: str = DEFAULT_SOURCE
    specversion: str = SPECVERSION
    time: datetime = msgspec.field(default_factory=_utcnow)
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    aggregate_id: str | None = None
    aggregate_type: str | None = None
    aggregate_version: int | None = None
    tenant_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    request_id: str | None = None
    trace_id: str | None = None
    metadata: dict[str, Any] | None = None
    #: CloudEvents extension attributes tidings has no field for, by their attribute name
    #: (``{"traceparent": "00-…", "partitionkey": "k"}``); kept through every encoding.
    extensions: dict[str, ExtensionValue] | None = None
    #: The payload of an untyped event. Typed events carry their payload in their own fields.
    data: Any = None

    __data_fields__: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        # Construction is not validated by msgspec (that is what makes it fast); these two
        # checks catch the mistakes a type checker cannot see.
        if not self.type:
            raise EventError(
                "type",
                "is missing",
                "Pass type='order.created', or declare a typed event: "
                "class OrderCreated(Event, type='order.created').",
            )
        if self.time.tzinfo is None:
            raise EventError(
                "time", "is a naive datetime", "Use an aware UTC time: datetime.now(UTC)."
            )
        if self.specversion != SPECVERSION:
            raise _specversion_error(self.specversion)
        if self.extensions is not None:
            _check_extensions(self.extensions, "extensions[{!r}]")

    @property
    def key(self) -> str | None:
        """The ordering key: aggregate id, else subject, else None (no ordering promise)."""
        return self.aggregate_id if self.aggregate_id is not None else self.subject

    def payload(self) -> Any:
        """The CloudEvents ``data``: typed fields as a dict for typed events, else ``data``."""
        fields = self.__data_fields__
        if not fields:
            return self.data
        return {name: getattr(self, name) for name in fields}

    def caused_by(self, parent: Event) -> Self:
        """Mark this event as caused by ``parent``: same correlation, causation = parent id."""
        self.correlation_id = parent.correlation_id or parent.id
        self.causation_id = parent.id
        return self

    def inherit(self, parent: Event) -> None:
        """What the bus does for an event published inside ``parent``'s handler.

        Like ``caused_by``, but a correlation id the publisher set explicitly is kept.
        """
        self.causation_id = parent.id
        if self.correlation_id is None:
            self.correlation_id = parent.correlation_id or parent.id

    def to_json(self) -> bytes:
        return encode(self)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        return decode(raw)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Event:
        return from_dict(obj)


_ENVELOPE_FIELDS = frozenset(Event.__struct_fields__)


def _specversion_error(value: object) -> EventError:
    return EventError(
        "specversion",
        f"{value!r} is not supported; tidings reads and writes CloudEvents 1.0",
        "Send specversion '1.0' (or leave it out).",
    )


def _check_extensions(extensions: Mapping[str, Any], where: str) -> None:
    """Raise EventError naming the first extension whose name or value CloudEvents forbids.

    ``where`` formats the attribute name into the field the error names: ``"{}"`` on the wire,
    ``"extensions[{!r}]"`` for the Python argument.
    """
    if not isinstance(extensions, Mapping):
        raise EventError(
            "extensions",
            f"expected a mapping of attribute name to value, got {type(extensions).__name__}",
        )
    for name, value in extensions.items():
        if name in _RESERVED_NAMES:
            raise EventError(
                where.format(name),
                "is an attribute of the envelope itself, not an extension",
                f"Set it as Event.{_FIELD_OF_WIRE.get(name, name)} instead.",
            )
        if not isinstance(name, str) or not _EXTENSION_NAME.fullmatch(name):
            raise EventError(
                where.format(name),
                "is not a valid CloudEvents attribute name",
                "Extension attribute names are lowercase ASCII letters and digits only "
                "(a-z, 0-9), e.g. 'traceparent' or 'partitionkey'.",
            )
        if isinstance(value, bool | int | str) or (
            isinstance(value, float) and math.isfinite(value)
        ):
            continue
        kind = "null" if value is None else type(value).__name__
        if isinstance(value, Mapping):
            kind = "an object"
        elif isinstance(value, list | tuple):
            kind = "an array"
        raise EventError(
            where.format(name),
            f"extension attribute value is {kind}; CloudEvents extension values are strings, "
            "numbers or booleans",
            "Put structured values in data (or metadata), or encode them as a string.",
        )


def _check_envelope_shadowing(cls: type[Event]) -> None:
    """A typed field may give an envelope attribute a default, never another type: the
    attribute travels as a CloudEvents attribute (``user_id`` as ``userid``) with the envelope's
    type, so ``user_id: int`` would encode and then fail to decode on the consumer's side."""
    own = inspect.get_annotations(cls)
    shadowed = [n for n in own if n != "type" and n in _ENVELOPE_FIELDS]
    if not shadowed:
        return
    try:
        given, expected = typing.get_type_hints(cls), typing.get_type_hints(Event)
    except NameError:  # a forward reference not defined yet: compare as written
        given = {n: str(own[n]).replace(" ", "") for n in shadowed}
        expected = {n: str(Event.__annotations__[n]).replace(" ", "") for n in shadowed}
    for name in shadowed:
        if given[name] != expected[name]:
            want, wrote = Event.__annotations__[name], own[name]
            wrote = getattr(wrote, "__name__", wrote)
            raise EventError(
                f"{cls.__name__}.{name}",
                f"is an envelope attribute of type {want}, redeclared as {wrote}",
                f"Rename the field (e.g. {cls.__name__.lower()}_{name}), or keep the envelope's "
                f"type {want} and only give it a default.",
            )


def _finish_subclass(cls: type[Event], type_name: str | None) -> None:
    _check_envelope_shadowing(cls)
    data_fields = tuple(f for f in cls.__struct_fields__ if f not in _ENVELOPE_FIELDS)
    cls.__data_fields__ = data_fields
    if type_name is None:
        return
    known = _registry.get(type_name)
    if known is not None and (known.__module__, known.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise EventError(
            "type",
            f"{type_name!r} is already the type of {known.__module__}.{known.__qualname__}",
            "Give each typed event class its own type name.",
        )
    _registry[type_name] = cls


def _field_default(f: msgspec.structs.FieldInfo) -> Any:
    if f.default is not msgspec.NODEFAULT:
        return f.default
    if f.default_factory is not msgspec.NODEFAULT:
        return msgspec.field(default_factory=f.default_factory)
    return msgspec.NODEFAULT


def _data_decoder(cls: type[Event]) -> msgspec.json.Decoder[Any]:
    """A decoder for the typed fields of ``cls``, built on first use (forward refs resolve late)."""
    dec = _data_decoders.get(cls)
    if dec is None:
        spec = [
            (f.name, f.type, _field_default(f))
            for f in msgspec.structs.fields(cls)
            if f.name in cls.__data_fields__
        ]
        struct = msgspec.defstruct(f"{cls.__name__}Data", spec, kw_only=True)
        dec = _data_decoders[cls] = msgspec.json.Decoder(struct)
    return dec


def event_class(type_name: str) -> type[Event] | None:
    """The typed class registered for ``type_name``, if any."""
    return _registry.get(type_name)


def registered_types() -> dict[str, type[Event]]:
    return dict(_registry)


# --- the current event (for automatic correlation / causation) -------------------------------

_current: ContextVar[Event | None] = ContextVar("tidings_current_event", default=None)


def current_event() -> Event | None:
    """The event whose handler is running in this context, if any."""
    return _current.get()


# --- JSON codec --------------------------------------------------------------------------------

_UTCTime = Annotated[datetime, msgspec.Meta(tz=True)]


_NULL = msgspec.Raw(b"null")


class _Wire(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """The structured-mode CloudEvents JSON shape, validated on decode."""

    specversion: str
    id: Annotated[str, msgspec.Meta(min_length=1)]
    source: Annotated[str, msgspec.Meta(min_length=1)]
    type: Annotated[str, msgspec.Meta(min_length=1, pattern=r"^\S+$")]
    time: _UTCTime | None = None
    subject: str | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    correlationid: str | None = None
    causationid: str | None = None
    aggregateid: str | None = None
    aggregatetype: str | None = None
    aggregateversion: int | None = None
    tenantid: str | None = None
    userid: str | None = None
    sessionid: str | None = None
    requestid: str | None = None
    traceid: str | None = None
    metadata: dict[str, Any] | None = None
    data: msgspec.Raw = msgspec.field(default_factory=lambda: _NULL)
    data_base64: str | None = None


class _StrictWire(_Wire, forbid_unknown_fields=True):
    """``_Wire`` refusing unknown attributes: the fast path for events without extensions."""


# Names an extension cannot take: every attribute the wire shape knows, and CloudEvents' own.
_RESERVED_NAMES = frozenset(_Wire.__struct_fields__) | {"data_base64", "data"}
_FIELD_OF_WIRE = {wire: attr for attr, wire in _OPTIONAL_ATTRS}

_encoder = msgspec.json.Encoder()
_wire_decoder = msgspec.json.Decoder(_Wire)
_strict_wire_decoder = msgspec.json.Decoder(_StrictWire)
_attributes_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
_any_decoder = msgspec.json.Decoder()
_data_decoders: dict[type[Event], msgspec.json.Decoder[Any]] = {}


def to_dict(event: Event) -> dict[str, Any]:
    """The structured-mode CloudEvents attributes of ``event`` (absent attributes left out)."""
    out: dict[str, Any] = {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "time": event.time,
    }
    for attr, wire in _OPTIONAL_ATTRS:
        value = getattr(event, attr)
        if value is not None:
            out[wire] = value
    if event.metadata is not None:
        out["metadata"] = event.metadata
    if event.extensions is not None:
        out.update(event.extensions)
    payload = event.payload()
    if isinstance(payload, bytes | bytearray | memoryview):
        out["data_base64"] = base64.b64encode(bytes(payload)).decode("ascii")
    elif payload is not None:
        out["data"] = payload
    return out


def encode(event: Event) -> bytes:
    """Structured-mode CloudEvents JSON for ``event``."""
    if not isinstance(event, Event):
        raise TypeError(f"expected a tidings Event, got {type(event).__name__}")
    if event.extensions is not None:  # set after construction, perhaps: checked again here
        _check_extensions(event.extensions, "extensions[{!r}]")
    if event.__data_fields__ and event.data is not None:
        raise EventError(
            "data",
            f"{type(event).__name__} is a typed event; its payload is its typed fields",
            "Set the typed fields instead of data.",
        )
    try:
        return _encoder.encode(to_dict(event))
    except (TypeError, msgspec.EncodeError) as exc:
        raise EventError("data", f"cannot be encoded as JSON: {exc}") from None


def _field_of(message: str) -> tuple[str, str]:
    """Split a msgspec error ('Expected `int`, got `str` - at `$.data.amount`') into parts."""
    marker = " - at `$"
    if marker in message:
        problem, _, path = message.partition(marker)
        return path.rstrip("`").lstrip(".") or "$", problem
    match = re.search(r"missing required field `(\w+)`", message, re.IGNORECASE)
    if match:
        return match.group(1), message
    return "$", message


def _from_wire(
    wire: _Wire, data: Any, data_path: str, extensions: dict[str, Any] | None = None
) -> Event:
    if wire.specversion != SPECVERSION:
        raise _specversion_error(wire.specversion)
    if extensions:
        # JSON null is the attribute being absent (CloudEvents JSON format).
        extensions = {k: v for k, v in extensions.items() if v is not None} or None
        if extensions:
            _check_extensions(extensions, "{}")
    else:
        extensions = None
    cls = _registry.get(wire.type)
    fields: dict[str, Any] = {}
    if cls is not None and cls.__data_fields__:
        dec = _data_decoder(cls)
        try:
            if isinstance(data, msgspec.Raw):
                typed = dec.decode(b"{}" if data == _NULL else data)
            else:
                typed = msgspec.convert({} if data is None else data, dec.type)
        except msgspec.ValidationError as exc:
            field, problem = _field_of(str(exc))
            raise EventError(
                f"{data_path}.{field}" if field != "$" else data_path,
                problem,
                f"{wire.type!r} events are {cls.__qualname__}; check its field types.",
            ) from None
        fields = {name: getattr(typed, name) for name in cls.__data_fields__}
        payload = None
    else:
        # An unknown type, or a typed class without fields of its own: ``data`` as parsed.
        cls = cls or Event
        payload = _any_decoder.decode(data) if isinstance(data, msgspec.Raw) else data
    if wire.data_base64 is not None:
        try:
            payload = base64.b64decode(wire.data_base64, validate=True)
        except ValueError:
            raise EventError("data_base64", "is not valid base64") from None
    time = wire.time
    if time is None:
        time = _utcnow()
    elif time.tzinfo is not UTC:
        time = time.astimezone(UTC)
    return cls(
        type=wire.type,
        id=wire.id,
        source=wire.source,
        specversion=wire.specversion,
        time=time,
        subject=wire.subject,
        datacontenttype=wire.datacontenttype,
        dataschema=wire.dataschema,
        correlation_id=wire.correlationid,
        causation_id=wire.causationid,
        aggregate_id=wire.aggregateid,
        aggregate_type=wire.aggregatetype,
        aggregate_version=wire.aggregateversion,
        tenant_id=wire.tenantid,
        user_id=wire.userid,
        session_id=wire.sessionid,
        request_id=wire.requestid,
        trace_id=wire.traceid,
        metadata=wire.metadata,
        extensions=extensions,
        data=payload,
        **fields,
    )


def _wire_error(exc: msgspec.ValidationError) -> EventError:
    field, problem = _field_of(str(exc))
    hints = {
        "time": "Use an RFC 3339 time with a UTC offset, e.g. 2024-05-01T12:00:00Z.",
        "type": "Every event needs a non-empty type such as 'order.created'.",
    }
    return EventError(field, problem, hints.get(field, ""))


def decode(raw: bytes | str | memoryview) -> Event:
    """Decode structured-mode CloudEvents JSON into its typed class (or a plain ``Event``).

    Attributes without a field of their own are extensions, kept in ``Event.extensions``.
    """
    extensions: dict[str, Any] | None = None
    try:
        wire: _Wire = _strict_wire_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        if not str(exc).startswith("Object contains unknown field"):
            raise _wire_error(exc) from None
        # Extensions: a second pass, paid only by events that carry some.
        try:
            wire = _wire_decoder.decode(raw)
            extensions = {
                name: _any_decoder.decode(value)
                for name, value in _attributes_decoder.decode(raw).items()
                if name not in _RESERVED_NAMES
            }
        except msgspec.ValidationError as exc2:
            raise _wire_error(exc2) from None
        except msgspec.DecodeError as exc2:  # the rest of the text is not JSON
            raise EventError("$", f"not valid JSON ({exc2})") from None
    except msgspec.DecodeError as exc:
        raise EventError("$", f"not valid JSON ({exc})") from None
    return _from_wire(wire, wire.data, "data", extensions)


_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])


def decode_many(raw: bytes | str) -> list[Event]:
    """Decode a JSON array of events; errors name the index of the bad event."""
    try:
        items = _list_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise EventError("$", f"expected a JSON array of events ({exc})") from None
    out = []
    for index, item in enumerate(items):
        try:
            out.append(decode(item))
        except EventError as exc:
            raise EventError(f"[{index}].{exc.field}", exc.problem, exc.hint) from None
    return out


def from_dict(obj: Mapping[str, Any]) -> Event:
    """Validate a CloudEvents-shaped mapping (e.g. a parsed request body) into an event."""
    if not isinstance(obj, Mapping):
        raise EventError("$", f"expected an object, got {type(obj).__name__}")
    body = {_WIRE_NAMES.get(k, k): v for k, v in obj.items()}
    data = body.pop("data", None)
    body.setdefault("specversion", SPECVERSION)
    body.setdefault("source", DEFAULT_SOURCE)
    body.setdefault("id", new_id())
    extensions: dict[str, Any] | None = None
    if not _RESERVED_NAMES.issuperset(body):
        extensions = {k: body.pop(k) for k in body.keys() - _RESERVED_NAMES}
        nested = extensions.pop("extensions", None)
        if isinstance(nested, Mapping):  # the Python form, as msgspec.to_builtins(event) gives
            extensions = {**nested, **extensions}
        elif nested is not None:
            extensions["extensions"] = nested
    try:
        wire = msgspec.convert(body, _Wire)
    except msgspec.ValidationError as exc:
        raise _wire_error(exc) from None
    return _from_wire(wire, data, "data", extensions)
