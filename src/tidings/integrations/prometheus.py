"""Prometheus metrics for a Bus, a Transport, an EventStore and its subscriptions.

``instrument(obj)`` adds ``obj`` to one collector per registry (prometheus_client's default
``REGISTRY`` unless told otherwise). The collector reads, at scrape time, the counters those
objects keep anyway, so the publish path never calls a metrics library; the one cost on the
handler path is the latency histogram (``latency=True``, the default for a bus), which times
each attempt through a middleware. prometheus_client serves the registry
(``start_http_server`` in a script, ``make_asgi_app()`` mounted in Starlette or FastAPI); the
metric names and PromQL examples are in docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from bisect import bisect_left as bisect
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from typing import Any
from urllib.parse import urlsplit

try:
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # the message is checked in a subprocess by the tests
    raise ImportError(
        "tidings.integrations.prometheus needs the prometheus-client package, which is not "
        "installed; run: pip install 'tidings[server]' (or: pip install prometheus-client)"
    ) from exc

from tidings.bus import Bus
from tidings.event import Event
from tidings.middleware.base import AsyncCall, Call, Middleware, SubscriptionInfo
from tidings.store.base import EventStore, StoreSubscription
from tidings.transport import Transport, TransportState

__all__ = ["DEFAULT_BUCKETS", "HandlerLatency", "TidingsCollector", "instrument"]

log = logging.getLogger("tidings.integrations.prometheus")

#: Handler latency buckets (seconds): in-process handlers often finish in microseconds.
DEFAULT_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

_COUNTER, _GAUGE = "counter", "gauge"
_HANDLER = ("bus", "handler", "pattern")
_CONSUMER = ("transport", "pattern", "group")
_SUB = ("subscription",)

# name (counters without their _total suffix) -> (type, help, label names)
_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "tidings_bus_events_published": (_COUNTER, "Events published on the bus", ("bus",)),
    "tidings_bus_events_handled": (_COUNTER, "Handler attempts that returned", _HANDLER),
    "tidings_bus_events_failed": (_COUNTER, "Handler attempts that raised", _HANDLER),
    "tidings_bus_events_retried": (_COUNTER, "Handler attempts after the first", _HANDLER),
    "tidings_bus_events_dead_lettered": (_COUNTER, "Deliveries given up", _HANDLER),
    "tidings_bus_queue_depth": (_GAUGE, "Events waiting for an async worker", ("bus",)),
    "tidings_bus_queue_capacity": (_GAUGE, "Async queue room before when_full", ("bus",)),
    "tidings_bus_events_dropped": (_COUNTER, "Events dropped at a full queue", ("bus",)),
    "tidings_bus_publish_blocked": (_COUNTER, "Publishes that waited for room", ("bus",)),
    "tidings_bus_publish_rejected": (_COUNTER, "Publishes refused with BusQueueFull", ("bus",)),
    "tidings_bus_retries_pending": (_GAUGE, "Failed deliveries waiting to retry", ("bus",)),
    "tidings_bus_dead_letters": (_GAUGE, "Dead letters held by the bus", ("bus",)),
    "tidings_transport_state": (
        _GAUGE,
        "1 for the connection state the transport is in",
        ("transport", "state"),
    ),
    "tidings_transport_events_published": (
        _COUNTER,
        "Events the broker accepted",
        ("transport",),
    ),
    "tidings_transport_lag_events": (
        _GAUGE,
        "Messages waiting for this process, where the broker says",
        ("transport",),
    ),
    "tidings_transport_events_received": (_COUNTER, "Messages taken from the broker", _CONSUMER),
    "tidings_transport_events_handled": (_COUNTER, "Messages handled and acked", _CONSUMER),
    "tidings_transport_events_failed": (_COUNTER, "Handler attempts that raised", _CONSUMER),
    "tidings_transport_events_retried": (_COUNTER, "Handler attempts retried", _CONSUMER),
    "tidings_transport_events_dead_lettered": (_COUNTER, "Messages dead-lettered", _CONSUMER),
    "tidings_transport_events_undecodable": (_COUNTER, "Bodies that did not decode", _CONSUMER),
    "tidings_store_up": (_GAUGE, "1 if the store answered this scrape", ("store",)),
    "tidings_store_head_position": (_GAUGE, "Position of the newest stored event", ("store",)),
    "tidings_store_subscription_position": (_GAUGE, "Last position handled", _SUB),
    "tidings_store_subscription_lag_events": (
        _GAUGE,
        "Matching events stored after the subscription's position",
        _SUB,
    ),
    "tidings_store_subscription_lag_seconds": (
        _GAUGE,
        "How long the oldest unhandled matching event has been stored",
        _SUB,
    ),
    "tidings_store_subscription_events_handled": (_COUNTER, "Events handled", _SUB),
    "tidings_store_subscription_events_failed": (_COUNTER, "Handler attempts that raised", _SUB),
    "tidings_store_subscription_running": (_GAUGE, "1 while its thread runs", _SUB),
    "tidings_store_subscription_halted": (_GAUGE, "1 once a handler kept failing", _SUB),
}
_LATENCY = "tidings_bus_handler_duration_seconds"
_LATENCY_HELP = "Duration of each handler attempt"

Labels = tuple[str, ...]


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size  # per bucket, not cumulative; the last one is +Inf
        self.sum = 0.0


class HandlerLatency(Middleware):
    """Times every handler attempt into one histogram per subscription.

    A middleware of its own rather than a MetricsHook: the histogram is bound when the handler
    is wrapped, so an attempt pays two clock reads, a bisect and two additions, with no hook
    call or lookup (plain int and float updates under the GIL, no lock).
    """

    def __init__(self, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        if not bounds or bounds[0] <= 0 or len(set(bounds)) != len(bounds):
            raise ValueError(
                f"instrument(buckets=...): expected distinct upper bounds in seconds > 0, "
                f"got {list(buckets)!r}"
            )
        self.bounds = bounds
        self._by_sub: dict[SubscriptionInfo, _Histogram] = {}

    def _histogram(self, sub: SubscriptionInfo) -> _Histogram:
        return self._by_sub.setdefault(sub, _Histogram(len(self.bounds) + 1))

    def wrap(self, call: Call, sub: SubscriptionInfo) -> Call:
        hist, bounds, clock, find = self._histogram(sub), self.bounds, time.perf_counter, bisect

        def timed(event: Event) -> Any:
            start = clock()
            try:
                return call(event)
            finally:
                took = clock() - start
                hist.counts[find(bounds, took)] += 1
                hist.sum += took

        return timed

    def awrap(self, call: AsyncCall, sub: SubscriptionInfo) -> AsyncCall:
        hist, bounds, clock, find = self._histogram(sub), self.bounds, time.perf_counter, bisect

        async def timed(event: Event) -> Any:
            start = clock()
            try:
                return await call(event)
            finally:
                took = clock() - start
                hist.counts[find(bounds, took)] += 1
                hist.sum += took

        return timed

    def get(self, sub: SubscriptionInfo) -> _Histogram | None:
        return self._by_sub.get(sub)

    def forget_all_but(self, live: AbstractSet[SubscriptionInfo]) -> None:
        """Drop the histograms of unsubscribed handlers."""
        for sub in [s for s in list(self._by_sub) if s not in live]:
            self._by_sub.pop(sub, None)


def _ref(obj: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(obj)
    except TypeError:  # no __weakref__: keep it alive with the registry
        return lambda: obj


class _BusEntry:
    __slots__ = ("latency", "ref")

    def __init__(self, bus: Bus, latency: HandlerLatency | None) -> None:
        self.ref: Callable[[], Bus | None] = _ref(bus)
        self.latency = latency


class _Samples:
    """One scrape's values, summed per label set (two handlers may share a name)."""

    def __init__(self) -> None:
        self.values: dict[str, dict[Labels, float]] = {name: {} for name in _FAMILIES}
        self.hists: dict[Labels, tuple[tuple[float, ...], list[int], float]] = {}

    def add(self, family: str, labels: Labels, value: float) -> None:
        values = self.values[family]
        values[labels] = values.get(labels, 0.0) + value

    def hist(self, labels: Labels, bounds: tuple[float, ...], hist: _Histogram | None) -> None:
        counts = list(hist.counts) if hist is not None else [0] * (len(bounds) + 1)
        total = hist.sum if hist is not None else 0.0
        seen = self.hists.get(labels)
        if seen is not None and seen[0] == bounds:
            counts = [a + b for a, b in zip(seen[1], counts, strict=True)]
            total += seen[2]
        self.hists[labels] = (bounds, counts, total)

    def families(self, *, empty: bool) -> Iterator[Metric]:
        for name, (kind, text, labels) in _FAMILIES.items():
            values = self.values[name]
            if not values and not empty:
                continue
            family: Metric
            if kind == _COUNTER:
                family = CounterMetricFamily(name, text, labels=labels)
            else:
                family = GaugeMetricFamily(name, text, labels=labels)
            for label_values, value in sorted(values.items()):
                family.add_metric(list(label_values), value)
            yield family
        if not self.hists and not empty:
            return
        latency = HistogramMetricFamily(_LATENCY, _LATENCY_HELP, labels=_HANDLER)
        for label_values, (bounds, counts, total) in sorted(self.hists.items()):
            cumulative, running = [], 0
            for bound, count in zip([*map(floatToGoString, bounds), "+Inf"], counts, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric(list(label_values), cumulative, total)
        yield latency


class TidingsCollector:
    """Collects every object instrumented on one registry, reading their counters at scrape.

    Objects are held weakly: a bus or store that is gone drops out of the next scrape. Names
    (the ``bus``, ``transport``, ``store`` labels) are unique per collector.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buses: dict[str, _BusEntry] = {}
        self._transports: dict[str, Callable[[], Any]] = {}
        self._stores: dict[str, Callable[[], Any]] = {}
        self._subscriptions: dict[str, Callable[[], Any]] = {}
        self._warned: set[str] = set()

    # ---- adding ----------------------------------------------------------------------------

    def add(
        self,
        obj: Bus | Transport | EventStore | StoreSubscription,
        *,
        name: str | None = None,
        latency: bool = True,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        """Export ``obj`` (see ``instrument``); adding the same object again does nothing."""
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"instrument(name=...): expected a non-empty string, got {name!r}")
        if isinstance(obj, Bus):
            self._add_bus(obj, name or "default", latency, buckets)
        elif isinstance(obj, StoreSubscription):
            self._claim(self._subscriptions, name or obj.name, obj, "store subscription")
        elif isinstance(obj, EventStore):
            self._claim(self._stores, name or _scheme(obj.url), obj, "store")
        elif isinstance(obj, Transport):
            self._claim(self._transports, name or _scheme(obj.url), obj, "transport")
        else:
            raise TypeError(
                "instrument: expected a tidings Bus, Transport, EventStore or store "
                f"subscription, got {type(obj).__name__}"
            )

    def _claim(self, table: dict[str, Callable[[], Any]], name: str, obj: Any, kind: str) -> None:
        with self._lock:
            held = table.get(name)
            current = held() if held is not None else None
            if current is obj:
                return
            if current is not None:
                raise ValueError(
                    f"instrument: a {kind} named {name!r} is already exported on this "
                    f"registry; give this one its own label: instrument(..., name='other')"
                )
            table[name] = _ref(obj)

    def _add_bus(self, bus: Bus, name: str, latency: bool, buckets: Sequence[float]) -> None:
        hook = HandlerLatency(buckets) if latency else None
        with self._lock:
            held = self._buses.get(name)
            current = held.ref() if held is not None else None
            if current is bus:
                return
            if current is not None:
                raise ValueError(
                    f"instrument: a bus named {name!r} is already exported on this registry; "
                    "give this one its own label: instrument(bus, name='payments')"
                )
            self._buses[name] = _BusEntry(bus, hook)
        if hook is not None:
            bus.add_middleware(hook)
        if bus.transport is not None:
            self._claim(self._transports, name, bus.transport, "transport")

    # ---- collecting ------------------------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The family names, so a registry can refuse a clash when this is registered."""
        return _Samples().families(empty=True)

    def collect(self) -> Iterator[Metric]:
        samples = _Samples()
        for name, entry in self._live(self._buses, lambda e: e.ref()):
            self._guarded(f"bus {name}", self._collect_bus, samples, name, entry)
        for name, transport in self._live(self._transports, lambda r: r()):
            self._guarded(f"transport {name}", self._collect_transport, samples, name, transport)
        seen: set[str] = set()
        for name, store in self._live(self._stores, lambda r: r()):
            self._collect_store(samples, name, store, seen)
        for name, sub in self._live(self._subscriptions, lambda r: r()):
            self._collect_subscription(samples, name, sub, seen)
        return samples.families(empty=False)

    def _live(self, table: dict[str, Any], deref: Callable[[Any], Any]) -> list[tuple[str, Any]]:
        out = []
        with self._lock:
            for name, held in list(table.items()):
                obj = deref(held)
                if obj is None:
                    del table[name]  # collected: its series go away
                elif table is self._buses:
                    out.append((name, held))
                else:
                    out.append((name, obj))
        return out

    def _guarded(self, what: str, fn: Callable[..., None], *args: Any) -> bool:
        """Run one object's part of the scrape; a failure skips that part and is logged once."""
        try:
            fn(*args)
        except Exception as exc:
            level = logging.DEBUG if what in self._warned else logging.WARNING
            self._warned.add(what)
            log.log(level, "metrics for %s are missing from this scrape: %s", what, exc)
            return False
        return True

    def _collect_bus(self, samples: _Samples, name: str, entry: _BusEntry) -> None:
        bus = entry.ref()
        if bus is None:
            return
        stats, key = bus.stats, (name,)
        samples.add("tidings_bus_events_published", key, stats.published)
        samples.add("tidings_bus_events_dropped", key, stats.dropped)
        samples.add("tidings_bus_publish_blocked", key, stats.blocked)
        samples.add("tidings_bus_publish_rejected", key, stats.rejected)
        samples.add("tidings_bus_queue_depth", key, bus.queue_depth)
        samples.add("tidings_bus_queue_capacity", key, bus.queue_capacity)
        samples.add("tidings_bus_retries_pending", key, bus.pending_retries)
        samples.add("tidings_bus_dead_letters", key, len(bus.dead_letters))
        latency = entry.latency
        subs = bus.subscriptions()
        for sub in subs:
            labels = (name, sub.name, sub.pattern.text)
            # With a transport, the broker's consumer retries and dead-letters: its counts.
            remote = getattr(sub.remote, "stats", None) if sub.remote is not None else None
            counts: Any = remote if remote is not None else sub
            samples.add("tidings_bus_events_handled", labels, counts.handled)
            samples.add("tidings_bus_events_failed", labels, counts.failed)
            samples.add("tidings_bus_events_retried", labels, counts.retried)
            samples.add("tidings_bus_events_dead_lettered", labels, counts.dead)
            if latency is not None:
                samples.hist(labels, latency.bounds, latency.get(sub))
        if latency is not None:
            latency.forget_all_but(set(subs))

    def _collect_transport(self, samples: _Samples, name: str, transport: Transport) -> None:
        health = transport.health()
        for state in TransportState:
            up = 1.0 if health.state is state else 0.0
            samples.add("tidings_transport_state", (name, state.value), up)
        if health.lag is not None:
            samples.add("tidings_transport_lag_events", (name,), health.lag)
        samples.add("tidings_transport_events_published", (name,), transport.stats.published)
        for sub in transport.subscriptions():
            stats = getattr(sub, "stats", None)  # optional in the Transport contract
            if stats is None:
                continue
            labels = (name, sub.pattern, sub.group or "")
            samples.add("tidings_transport_events_received", labels, stats.received)
            samples.add("tidings_transport_events_handled", labels, stats.handled)
            samples.add("tidings_transport_events_failed", labels, stats.failed)
            samples.add("tidings_transport_events_retried", labels, stats.retried)
            samples.add("tidings_transport_events_dead_lettered", labels, stats.dead)
            samples.add("tidings_transport_events_undecodable", labels, stats.undecodable)

    def _collect_store(
        self, samples: _Samples, name: str, store: EventStore, seen: set[str]
    ) -> None:
        head: list[int] = []
        up = self._guarded(f"store {name}", lambda: head.append(store.head()))
        samples.add("tidings_store_up", (name,), 1.0 if up else 0.0)
        if up:
            samples.add("tidings_store_head_position", (name,), head[0])
        for sub in store.subscriptions():
            self._collect_subscription(samples, sub.name, sub, seen)

    def _collect_subscription(
        self, samples: _Samples, name: str, sub: StoreSubscription, seen: set[str]
    ) -> None:
        if name in seen:  # the same subscription through its store and on its own
            return
        seen.add(name)
        key = (name,)
        samples.add("tidings_store_subscription_position", key, sub.position)
        samples.add("tidings_store_subscription_events_handled", key, sub.handled)
        samples.add("tidings_store_subscription_events_failed", key, sub.failed)
        samples.add("tidings_store_subscription_running", key, 1.0 if sub.running else 0.0)
        samples.add("tidings_store_subscription_halted", key, 0.0 if sub.error is None else 1.0)

        def lag() -> None:
            behind = sub.lag()
            samples.add("tidings_store_subscription_lag_events", key, behind.events)
            samples.add("tidings_store_subscription_lag_seconds", key, behind.seconds)

        self._guarded(f"store subscription {name}", lag)


def _scheme(url: str) -> str:
    return urlsplit(url).scheme or "default"


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, TidingsCollector] = (
    weakref.WeakKeyDictionary()
)
_collectors_lock = threading.Lock()


def instrument(
    obj: Bus | Transport | EventStore | StoreSubscription,
    *,
    name: str | None = None,
    registry: CollectorRegistry | None = None,
    latency: bool = True,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> TidingsCollector:
    """Export ``obj``'s metrics on ``registry`` (default: prometheus_client's ``REGISTRY``).

    ``obj`` is a Bus (its transport too, if it has one), a Transport, an EventStore (its head
    and every subscription it runs) or one store subscription. ``name`` is the ``bus`` /
    ``transport`` / ``store`` label (default ``"default"`` for a bus, the URL scheme
    otherwise). ``latency=False`` leaves a bus's handlers untimed (no histogram, no cost per
    attempt); ``buckets`` are the histogram's upper bounds in seconds.
    """
    target = REGISTRY if registry is None else registry
    if not isinstance(target, CollectorRegistry):
        raise TypeError(
            f"instrument(registry=...): expected a prometheus_client CollectorRegistry, "
            f"got {type(target).__name__}"
        )
    with _collectors_lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = TidingsCollector()
            target.register(collector)
            _collectors[target] = collector
    collector.add(obj, name=name, latency=latency, buckets=buckets)
    return collector
