"""A webhook endpoint in a request body (``POST /endpoints``, ``PATCH /endpoints/{id}``):
each key checked, then the rules across keys on the endpoint as it would be saved. The known
keys are ``schemas.EndpointIn`` 's fields, as ``/openapi.json`` shows them."""

from __future__ import annotations

from typing import Any

import msgspec

from tidings.config import LEASE_RULE, fits_lease
from tidings.headers import headers_problem
from tidings.server.body import ApiError
from tidings.server.schemas import ENDPOINT_FIELDS
from tidings.topics import PatternError, compile_pattern
from tidings.webhooks.endpoint import Auth, Endpoint, PayloadFormat
from tidings.webhooks.guard import UnsafeURL, check_url

__all__ = ["check_endpoint", "endpoint_changes"]


_FORMATS: tuple[PayloadFormat, ...] = ("seed", "cloudevents", "cloudevents-binary")


def _number(data: dict[str, Any], name: str, lo: float, integer: bool = False) -> Any:
    value = data[name]
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or value < lo:
        kind = "a whole number" if integer else "a number"
        raise ApiError(422, f"{name}: expected {kind} >= {lo:g}, got {value!r}", name)
    return value


def _patterns(events: Any) -> tuple[str, ...]:
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not events or not all(isinstance(e, str) for e in events):
        raise ApiError(422, "events: expected a non-empty list of event type patterns", "events")
    try:
        for pattern in events:
            compile_pattern(pattern)
    except PatternError as exc:
        raise ApiError(422, f"events: {exc}", "events") from None
    return tuple(events)


def endpoint_changes(data: dict[str, Any], creating: bool) -> dict[str, Any]:
    """Validate an endpoint body into ``Endpoint`` keyword arguments (secret handled apart)."""
    unknown = sorted(set(data) - ENDPOINT_FIELDS)
    if unknown:
        known = ", ".join(sorted(ENDPOINT_FIELDS))
        raise ApiError(422, f"unknown field(s) {', '.join(unknown)}; expected: {known}", unknown[0])
    if creating and "url" not in data:
        raise ApiError(422, "url: required (the http(s) address to deliver to)", "url")
    out: dict[str, Any] = {}
    if "url" in data:
        if not isinstance(data["url"], str):
            raise ApiError(422, "url: expected a string", "url")
        try:
            check_url(data["url"])
        except UnsafeURL as exc:
            raise ApiError(422, f"url: {exc}", "url") from None
        out["url"] = data["url"]
    if "events" in data:
        out["events"] = _patterns(data["events"])
    if "headers" in data:
        headers = data["headers"]
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ApiError(422, "headers: expected an object of string values", "headers")
        out["headers"] = headers
    if "auth" in data:
        try:
            out["auth"] = None if data["auth"] is None else msgspec.convert(data["auth"], Auth)
        except msgspec.ValidationError as exc:
            forms = "{bearer}, {username, password} or {header, value}"
            raise ApiError(422, f"auth: {exc}; expected {forms}", "auth") from None
    for name, lo, integer in (
        ("timeout", 0.1, False), ("rate_limit", 0.001, False), ("burst", 1, True),
        ("max_in_flight", 1, True), ("max_retries", 0, True), ("retry_delay", 0, False),
        ("max_delay", 0, False),
    ):  # fmt: skip
        if name in data and data[name] is not None:
            out[name] = _number(data, name, lo, integer)
    if "enabled" in data:
        if not isinstance(data["enabled"], bool):
            raise ApiError(422, "enabled: expected true or false", "enabled")
        out["enabled"] = data["enabled"]
        if data["enabled"]:
            out["disabled_reason"] = None
    if "compress" in data:
        if data["compress"] not in ("none", "gzip"):
            raise ApiError(422, "compress: expected none or gzip", "compress")
        out["compress"] = data["compress"]
    if "format" in data:
        if data["format"] not in _FORMATS:
            raise ApiError(422, f"format: expected one of {', '.join(_FORMATS)}", "format")
        out["format"] = data["format"]
    return out


def check_endpoint(ep: Endpoint, lease: float, given: dict[str, Any]) -> None:
    """Rules across keys, on the endpoint as it would be saved (what the request gave plus what
    it keeps or inherits): the same header rules as the config file, a timeout the worker's
    lease can hold, retry delays in order."""
    problem = headers_problem(ep.headers, ep.auth)
    if problem is not None:
        key = ".".join(problem[0])
        raise ApiError(422, f"{key}: {problem[1]}", key)
    if not fits_lease(ep.timeout, lease):
        raise ApiError(
            422,
            f"timeout: {ep.timeout:g}s is not shorter than server.lease ({lease:g}s): "
            f"{LEASE_RULE}; use a timeout below {lease:g}s (a few seconds less leaves room to "
            "wait for a free slot), or raise server.lease in the config file",
            "timeout",
        )
    if ep.max_delay < ep.retry_delay:
        key = "max_delay" if "max_delay" in given else "retry_delay"
        raise ApiError(
            422,
            f"{key}: expected max_delay ({ep.max_delay:g}s) >= retry_delay ({ep.retry_delay:g}s) "
            "(keys the request leaves out come from the endpoint or the config's events section)",
            key,
        )
