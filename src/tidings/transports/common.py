"""What every broker backend shares: connection-state reporting, backoff, options, DLQ names,
decoding a received body.

Each backend used to carry its own copy of these; one copy keeps their behaviour alike (an
outage logs once per change of state on every backend, a bad option is named the same way)
and gives a new backend less to write. Nothing here imports a client library.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tidings.event import Event, decode
from tidings.transport import TransportError, TransportState

__all__ = [
    "Backoff",
    "ConnectionReporter",
    "ErrorCallback",
    "Options",
    "dead_letter_name",
    "decode_body",
    "describe",
]

ErrorCallback = Callable[[BaseException], None]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def describe(exc: BaseException) -> str:
    """``Type: text`` (just ``Type`` when the text is empty): many errors say nothing alone."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def decode_body(raw: bytes) -> tuple[Event | None, str | None]:
    """A received body as ``(event, None)``, or ``(None, why)`` when it is not a tidings event:
    the Dispatcher dead-letters such a message with ``why`` instead of running a handler."""
    try:
        return decode(raw), None
    except Exception as exc:
        return None, describe(exc)


# ---- connection state --------------------------------------------------------------------


class ConnectionReporter:
    """The state and last error ``health()`` shows, changed and logged in one place.

    A lost connection logs once when it is lost and once when it is back, not once per failed
    attempt in between, so a minute's outage is two lines, not thousands. Every reported error
    is kept for ``health().last_error`` and handed to the user's ``on_error`` callback (a
    callback that raises is logged, never propagated into the transport). ``CLOSED`` is final:
    nothing reported after it changes the state.

    ``name`` starts each log line ("redis transport"), ``where`` names the server;
    ``render`` turns an exception into the text kept as the last error.
    """

    def __init__(
        self,
        log: logging.Logger,
        name: str,
        where: str,
        *,
        on_error: ErrorCallback | None = None,
        state: TransportState = TransportState.CONNECTING,
        render: Callable[[BaseException], str] = describe,
        error_level: int = logging.WARNING,
    ) -> None:
        self.log = log
        self.name = name
        self.where = where
        self.on_error = on_error
        self.state = state
        self.last_error: str | None = None
        self.render = render
        self.error_level = error_level

    @property
    def closed(self) -> bool:
        return self.state is TransportState.CLOSED

    def connected(self) -> bool:
        """Mark the link up (never out of CLOSED); True, and one log line, if it was lost."""
        if self.state is TransportState.CLOSED:
            return False
        recovered = self.state is TransportState.DISCONNECTED
        self.state = TransportState.CONNECTED
        if recovered:
            self.log.info("%s: reconnected to %s", self.name, self.where)
        return recovered

    def lost(self, error: str | None = None) -> None:
        """Mark the link down (never out of CLOSED), keeping ``error``; logs on the change only."""
        if error is not None:
            self.last_error = error
        if self.state is TransportState.CLOSED:
            return
        if self.state is not TransportState.DISCONNECTED:
            if error is None:
                self.log.warning("%s: lost %s; reconnecting", self.name, self.where)
            else:
                self.log.warning("%s: lost %s (%s); reconnecting", self.name, self.where, error)
        self.state = TransportState.DISCONNECTED

    def report(self, exc: BaseException, what: str = "", *, lost: bool = False) -> None:
        """A failure met in the background or on a retry: keep it, log it, pass it on.

        ``lost`` says the server is (for now) not there: the state turns DISCONNECTED and the
        log says so once; other failures are logged each time at ``error_level``.
        """
        text = self.render(exc)
        self.last_error = f"{what}: {text}".strip() if what else text.strip()
        if lost and self.state is not TransportState.CLOSED:
            self.lost(self.last_error)
        else:
            self.log.log(self.error_level, "%s %s: %s", self.name, self.where, self.last_error)
        self.notify(exc)

    def notify(self, exc: BaseException) -> None:
        """Hand ``exc`` to the ``on_error`` callback, if any; a raising callback is logged."""
        if self.on_error is None:
            return
        try:
            self.on_error(exc)
        except Exception:  # an error callback must not break the transport
            self.log.exception("%s: the on_error callback raised", self.name)


# ---- backoff -------------------------------------------------------------------------------


class Backoff:
    """Exponential delay between attempts: quick first retries, capped so recovery is seen soon.

    ``next`` is the delay the following ``sleep`` waits (read it to decide whether another
    attempt still fits a deadline); ``reset`` after a success.
    """

    def __init__(self, first: float = 0.05, cap: float = 2.0, factor: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self.factor = factor
        self.next = first

    def reset(self) -> None:
        self.next = self.first

    def step(self) -> float:
        """The delay to wait now; the one after grows by ``factor`` up to ``cap``."""
        delay = self.next
        self.next = min(self.next * self.factor, self.cap)
        return delay

    async def sleep(self) -> None:
        await asyncio.sleep(self.step())


# ---- options -------------------------------------------------------------------------------


class Options:
    """Typed reading of one backend's options (URL query or keywords, strings or values).

    Every error is a ``TransportError`` that names the backend and the option, says what was
    expected and shows what was given: ``kafka option partitions: expected >= 1, got '0'``.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner  # "kafka", "RabbitMQ", ...: how messages name the backend

    def error(self, name: str, expected: str, value: Any) -> TransportError:
        return TransportError(f"{self.owner} option {name}: expected {expected}, got {value!r}")

    def unknown(
        self,
        given: Iterable[str],
        known: Iterable[str],
        *,
        noun: str = "option",
        where: str | None = None,
    ) -> None:
        """Refuse names not in ``known`` (a typo would otherwise be ignored silently)."""
        known_set = set(known)
        unknown = sorted(set(given) - known_set)
        if unknown:
            raise TransportError(
                f"{where or self.owner}: unknown {noun}(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known_set))}"
            )

    def boolean(self, name: str, value: Any) -> bool:
        """``True``/``False`` or one of 1/0, true/false, yes/no, on/off (any case)."""
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise self.error(name, "true or false", value)

    def number(self, name: str, value: Any, minimum: float | None = None) -> float:
        """A number, at least ``minimum`` when given."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise self.error(name, "a number", value) from None
        if math.isnan(number):
            raise self.error(name, "a number", value)
        if minimum is not None and number < minimum:
            raise self.error(name, f">= {minimum}", value)
        return number

    def duration(self, name: str, value: Any) -> float:
        """Seconds, more than zero."""
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise self.error(name, "seconds", value) from None
        if not seconds > 0:  # NaN too
            raise self.error(name, "seconds > 0", value)
        return seconds

    def integer(self, name: str, value: Any, minimum: int = 1) -> int:
        """A whole number (an int, its text, or a float without fraction), at least ``minimum``."""
        number: int | None = None
        if isinstance(value, bool):
            number = None
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and value.is_integer():
            number = int(value)
        elif isinstance(value, str):
            try:
                number = int(value.strip())
            except ValueError:
                number = None
        if number is None or number < minimum:
            raise self.error(name, f"a whole number >= {minimum}", value)
        return number

    def choice(self, name: str, value: Any, choices: Sequence[str], hint: str = "") -> str:
        """One of ``choices`` (compared as given); ``hint`` says what they mean."""
        if isinstance(value, str) and value in choices:
            return value
        expected = (
            " or ".join(choices) if len(choices) <= 2 else f"one of {', '.join(choices)}"
        ) + (f" ({hint})" if hint else "")
        raise self.error(name, expected, value)


# ---- dead letters --------------------------------------------------------------------------


def dead_letter_name(
    prefix: str, subscription: str, *, sep: str = ".", lead: str | None = None
) -> str:
    """Where ``subscription``'s dead letters live: ``<prefix><lead>dlq<sep><subscription>``.

    ``lead`` defaults to ``sep``; a prefix that ends in its own separator (Kafka's ``a.``)
    passes ``lead=""``. These names are data on the broker: changing one strands every dead
    letter stored under the old name.
    """
    return f"{prefix}{sep if lead is None else lead}dlq{sep}{subscription}"
