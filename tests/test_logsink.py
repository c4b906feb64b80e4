"""LogSink writes one parseable JSON line per event, masks secrets and bounds the payload."""

from __future__ import annotations

import json
import logging

import pytest

from tidings import Bus, Event
from tidings.logsink import LogSink


class UserSignedUp(Event, type="logsink.user.signed_up"):
    email: str
    password: str


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "tidings.events"]


def test_one_json_line_per_event_with_envelope_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidings.events")
    bus = Bus()
    bus.subscribe("**", LogSink())
    parent = Event(type="a", subject="s1")
    bus.publish(parent)
    bus.publish(Event(type="b", aggregate_id="agg-1", data=[1, 2]).caused_by(parent))
    lines = _lines(caplog)
    assert [line["event"] for line in lines] == ["a", "b"]
    assert lines[0]["id"] == parent.id and lines[0]["subject"] == "s1"
    assert lines[1]["causation_id"] == parent.id
    assert lines[1]["aggregate_id"] == "agg-1" and lines[1]["data"] == [1, 2]
    assert all("\n" not in r.getMessage() for r in caplog.records)


def test_secrets_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidings.events")
    LogSink()(UserSignedUp(email="a@b.c", password="hunter2"))
    LogSink()(Event(type="x", data={"nested": {"api_key": "k", "ok": 1}}))
    text = caplog.text
    assert "hunter2" not in text and '"k"' not in text
    lines = _lines(caplog)
    assert lines[0]["data"] == {"email": "a@b.c", "password": "***"}
    assert lines[1]["data"] == {"nested": {"api_key": "***", "ok": 1}}


def test_large_payload_is_truncated_and_flagged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tidings.events")
    LogSink(max_data_bytes=100)(Event(type="big", data={"blob": "x" * 10_000}))
    (line,) = _lines(caplog)
    assert line["data_truncated"] is True
    assert isinstance(line["data"], str) and len(str(line["data"]).encode()) <= 100


def test_data_can_be_left_out_and_level_respected(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tidings.events")
    LogSink()(Event(type="quiet"))
    assert _lines(caplog) == []
    LogSink(level=logging.WARNING, include_data=False)(Event(type="loud", data={"a": 1}))
    (line,) = _lines(caplog)
    assert "data" not in line and line["event"] == "loud"


def test_negative_limit_is_rejected() -> None:
    with pytest.raises(ValueError, match="max_data_bytes"):
        LogSink(max_data_bytes=-1)
