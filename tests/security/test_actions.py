"""Action templates fed by event data an attacker publishes: an email's recipients cannot be
widened (``"a@x, spy@evil"``), no header can be injected, and nothing reaches past the event's
own values, against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tidings.event import Event
from tidings.triggers.actions import ActionContext, PermanentActionError, build_action
from tidings.triggers.actions.templates import Template, TemplateError
from tidings.triggers.definitions import ActionSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    controller_module = pytest.importorskip("aiosmtpd.controller")
    inbox = Inbox()
    port = free_port()
    controller = controller_module.Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


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
