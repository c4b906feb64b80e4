"""Action templates fed by event data an attacker publishes: an email's recipients cannot be
widened (``"a@x, spy@evil"``), no header can be injected, and nothing reaches past the event's
own values, against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.triggers.jobs.test_actions import Inbox
from tidings.event import Event
from tidings.triggers.actions import (
    ActionContext,
    ActionOptionError,
    PermanentActionError,
    build_action,
)
from tidings.triggers.actions.templates import Template, TemplateError
from tidings.triggers.actions.untrusted import untrusted_action_validator
from tidings.triggers.definitions import ActionSpec


def ctx(spec: ActionSpec, event: Event) -> ActionContext:
    return ActionContext(event=event, trigger_id="sec", action_index=0, spec=spec, key="k1")


@pytest.mark.parametrize(
    "owner",
    [
        "owner@example.com, spy@evil.example",
        "owner@example.com;spy@evil.example",
        "Owner <owner@example.com>, spy@evil.example",
        '"x" <owner@example.com>, <spy@evil.example>',
    ],
)
async def test_event_data_cannot_add_recipients(smtp: tuple[Inbox, int], owner: str) -> None:
    inbox, port = smtp
    spec = ActionSpec("email", {"to": "{data.owner}", "subject": "s", "body": "b",
                                "host": "127.0.0.1", "port": port})  # fmt: skip
    event = Event(type="sec.mail", data={"owner": owner})
    with pytest.raises(PermanentActionError, match="not one address"):
        await build_action(spec).run(ctx(spec, event))
    assert inbox.messages == [], inbox.messages


async def test_event_data_cannot_change_the_sender(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    spec = ActionSpec("email", {"to": "ops@example.com", "from": "{data.who}", "subject": "s",
                                "body": "b", "host": "127.0.0.1", "port": port})  # fmt: skip
    event = Event(type="sec.mail", data={"who": "a@example.com, b@example.com"})
    with pytest.raises(PermanentActionError, match="From header"):
        await build_action(spec).run(ctx(spec, event))
    assert inbox.messages == []


async def test_one_address_per_template_still_mails_everyone_listed(
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    spec = ActionSpec("email", {"to": ["ops@example.com", "Owner <{data.owner}>"],
                                "subject": "hi {data.name}", "body": "{data.name}",
                                "host": "127.0.0.1", "port": port})  # fmt: skip
    event = Event(type="sec.mail", data={"owner": "o@example.com", "name": "x; y, z"})
    await build_action(spec).run(ctx(spec, event))
    assert [m[1] for m in inbox.messages] == [["ops@example.com", "o@example.com"]], inbox.messages


@pytest.mark.parametrize("value", ["x\r\nBcc: v@example.com", "x\nRCPT TO:<v@example.com>",
                                   "x\rDATA"])  # fmt: skip
async def test_line_breaks_from_the_event_never_reach_a_header(
    smtp: tuple[Inbox, int], value: str
) -> None:
    inbox, port = smtp
    for option in ("subject", "to", "from"):
        options = {"to": "ops@example.com", "subject": "s", "body": "b", "host": "127.0.0.1",
                   "port": port, option: "{data.v}"}  # fmt: skip
        spec = ActionSpec("email", options)
        with pytest.raises(PermanentActionError, match="line break"):
            await build_action(spec).run(ctx(spec, Event(type="sec.mail", data={"v": value})))
    assert inbox.messages == []


@pytest.mark.parametrize(
    "text",
    ["{__class__}", "{data.__class__}", "{type.__class__.__mro__}", "{data[0]!r}",
     "{data.x:>99999999}", "{metadata.__dict__}", "{id()}"],
)  # fmt: skip
def test_templates_reach_no_attribute(text: str) -> None:
    try:
        template = Template(text)
    except TemplateError:
        return  # refused at load: fine
    event = Event(type="sec.t", data={"x": 1})
    with pytest.raises(PermanentActionError):
        template.render(event)


@pytest.mark.parametrize(
    "value",
    ["x\n2026-01-01 ERROR tidings.server admin key leaked", "x\r\nINFO forged", "\x1b[2J\x1b[H",
     "x\u2028forged", "x\x85forged", "x\x00y"],
)  # fmt: skip
async def test_the_log_action_writes_one_line_whatever_the_event_holds(
    caplog: pytest.LogCaptureFixture, value: str
) -> None:
    spec = ActionSpec("log", {"message": "note {data.v}\tend", "logger": "sectest.log"})
    caplog.set_level(logging.INFO, logger="sectest.log")
    out = await build_action(spec).run(ctx(spec, Event(type="sec.log", data={"v": value})))
    lines = [r.getMessage() for r in caplog.records if r.name == "sectest.log"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("note x" if value.startswith("x") else "note ") and line.endswith(
        "\tend"
    ), line
    assert not any((ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) < 0xA0 for c in line), line
    assert "\u2028" not in line and out == {"message": line}, (line, out)


@pytest.fixture
def tarpit() -> Iterator[int]:
    """An SMTP server that answers its greeting one byte a second, never finishing a line."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def drip(conn: socket.socket) -> None:
        with conn:
            while not stop.is_set():
                try:
                    conn.sendall(b"2")
                except OSError:
                    return
                stop.wait(0.5)

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        server.close()


async def test_a_stalling_mail_server_holds_a_send_no_longer_than_its_timeout(
    tarpit: int,
) -> None:
    spec = ActionSpec("email", {"to": "ops@example.com", "subject": "s", "body": "b",
                                "host": "127.0.0.1", "port": tarpit, "timeout": 2})  # fmt: skip
    started = time.monotonic()
    sends = [build_action(spec).run(ctx(spec, Event(type="sec.mail"))) for _ in range(12)]
    outcomes = await asyncio.wait_for(asyncio.gather(*sends, return_exceptions=True), 30)
    took = time.monotonic() - started
    assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
    assert "option 'timeout'" in str(outcomes[0]), outcomes[0]
    assert took < 15, f"12 sends to a tarpit took {took:.1f}s"
    # the default executor (the server's store reads) was never taken
    assert await asyncio.wait_for(asyncio.to_thread(lambda: 42), 5) == 42


def test_an_email_timeout_is_bounded() -> None:
    spec = ActionSpec("email", {"to": "a@example.com", "subject": "s", "body": "b",
                                "timeout": 10**9})  # fmt: skip
    with pytest.raises(ValueError, match="option 'timeout': expected at most 300"):
        build_action(spec)


def test_a_slow_name_server_cannot_hold_a_trigger_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """No slow name server is at hand: getaddrinfo is made to stall (the one stand-in here)."""
    real = socket.getaddrinfo

    def stalled(host: str, *args: Any, **kw: Any) -> Any:
        if host == "slow.example.com":
            time.sleep(8)
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", stalled)
    check = untrusted_action_validator()
    started = time.monotonic()
    with pytest.raises(ActionOptionError, match=r"does not resolve \(no answer within 2s\)"):
        check(ActionSpec("email", {"to": "a@example.com", "subject": "s", "body": "b",
                                   "host": "slow.example.com"}))  # fmt: skip
    check(ActionSpec("webhook", {"url": "https://slow.example.com/h"}))  # judged at connect time
    assert time.monotonic() - started < 6
