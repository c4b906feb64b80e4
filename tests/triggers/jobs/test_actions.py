"""The actions: templates, load-time checks naming the option, the registry (code and entry
points), and each built-in against the real thing (aiosmtpd, the durable webhook queue on
SQLite and PostgreSQL, a store)."""

from __future__ import annotations

import email
import email.policy
import logging
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tidings.event import Event
from tidings.store import open_store
from tidings.triggers.actions import (
    ActionContext,
    ActionOptionError,
    PermanentActionError,
    Template,
    TemplateError,
    action_types,
    build_action,
    register_action,
    unregister_action,
    validate_action,
)
from tidings.triggers.actions import registry as registry_module
from tidings.triggers.actions.publish import PublishAction
from tidings.triggers.actions.webhook import DurableWebhooks
from tidings.triggers.definitions import ActionSpec
from tidings.webhooks.endpoint import Endpoint
from tidings.webhooks.queue import DeliveryQueue

EVENT = Event(
    type="actions.test.registered",
    data={"agent": "a-7", "score": 93, "tags": ["x", "y"], "owner": {"email": "o@example.com"}},
    extensions={"chainid": 11155111},
    correlation_id="corr-1",
)


def ctx(spec: ActionSpec, event: Event = EVENT, **kw: Any) -> ActionContext:
    return ActionContext(
        event=event, trigger_id="t1", action_index=0, spec=spec, key=f"{event.id}:t1:0", **kw
    )


# ---------------------------------------------------------------------- templates


def test_templates_render_event_fields() -> None:
    t = Template("Agent {data.agent} scored {data.score} on {extensions.chainid} ({type}) {{ok}}")
    assert t.render(EVENT) == "Agent a-7 scored 93 on 11155111 (actions.test.registered) {ok}"
    assert Template("{data.tags[1]}/{data.owner.email}").render(EVENT) == "y/o@example.com"
    assert Template("{data.tags}").render(EVENT) == '["x","y"]'
    assert Template("{data.score}").value(EVENT) == 93  # a single field keeps its type
    assert Template("{subject}").render(EVENT) == ""


@pytest.mark.parametrize(
    ("text", "position", "words"),
    [
        ("hello {data.x", 6, "not closed"),
        ("a } b", 2, "without '{'"),
        ("{data..x}", 0, "not a field path"),
        ("x {nope.y}", 2, "not an event attribute"),
        ("{__import__('os')}", 0, "not a field path"),
    ],
)
def test_a_malformed_template_names_the_position(text: str, position: int, words: str) -> None:
    with pytest.raises(TemplateError, match=words) as info:
        Template(text)
    assert info.value.position == position


def test_a_field_the_event_lacks_is_a_permanent_error() -> None:
    with pytest.raises(PermanentActionError, match=r"\{data\.missing\}.*has no such value"):
        Template("{data.missing}").render(EVENT)
    with pytest.raises(PermanentActionError, match=r"\{data\.tags\[5\]\}"):
        Template("{data.tags[5]}").render(EVENT)


# ---------------------------------------------------------------------- load-time checks


@pytest.mark.parametrize(
    ("spec", "option", "words"),
    [
        (ActionSpec("log", {"levle": "info"}), "levle", "unknown option; known: level, logger"),
        (ActionSpec("log", {"level": "loud"}), "level", "expected one of debug"),
        (ActionSpec("log", {"message": "{data.x"}), "message", "not closed"),
        (ActionSpec("email", {"to": "a@b", "body": "x"}), "subject", "is required"),
        (ActionSpec("email", {"to": [], "subject": "s", "body": "b"}), "to", "expected an"),
        (ActionSpec("email", {"to": "a@b", "subject": "s\r\nBcc: x", "body": "b"}), "subject",
         "line breaks"),
        (ActionSpec("email", {"to": "a@b", "subject": "s", "body": "b", "port": 0}), "port",
         "expected a whole number > 0"),
        (ActionSpec("email", {"to": "a@b", "subject": "s", "body": "b", "username": "u"}),
         "password_env", "together"),
        (ActionSpec("webhook", {}), "endpoint", "exactly one"),
        (ActionSpec("webhook", {"endpoint": "a", "url": "http://x"}), "endpoint", "exactly one"),
        (ActionSpec("webhook", {"url": "ftp://x/y"}), "url", "http:// or https://"),
        (ActionSpec("publish", {"data": {}}), "event_type", "is required"),
        (ActionSpec("publish", {"event_type": "a b"}), "event_type", "spaces"),
        (ActionSpec("publish", {"event_type": "a", "data": {"k": ["ok", "{data.}"]}}), "data.k[1]",
         "not a field path"),
    ],
)  # fmt: skip
def test_validate_action_names_the_bad_option(spec: ActionSpec, option: str, words: str) -> None:
    with pytest.raises(ActionOptionError, match=words) as info:
        validate_action(spec)
    assert info.value.option == option
    assert f"option {option!r}" in str(info.value)
    assert str(info.value).startswith(f"{spec.type} action:")


def test_an_unknown_action_type_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown action type 'sms'; known: email, log, publish"):
        validate_action(ActionSpec("sms", {}))
    assert {"email", "log", "publish", "webhook"} <= action_types()


# ---------------------------------------------------------------------- the registry


async def test_register_action_takes_a_callable_or_a_factory() -> None:
    seen: list[str] = []

    def plain(c: ActionContext) -> dict[str, Any]:
        seen.append(c.key)
        return {"ok": True}

    class Scaled:
        def __init__(self, options: Any) -> None:
            if not isinstance(options.get("factor"), int):
                raise ActionOptionError("actions.test.scaled", "factor", "expected an int")
            self.factor = options["factor"]

        async def run(self, c: ActionContext) -> dict[str, Any]:
            return {"value": c.event.data["score"] * self.factor}

    register_action("actions.test.plain", plain)
    register_action("actions.test.scaled", Scaled)
    try:
        assert {"actions.test.plain", "actions.test.scaled"} <= action_types()
        spec = ActionSpec("actions.test.plain", {})
        assert await build_action(spec).run(ctx(spec)) == {"ok": True}
        assert seen == [f"{EVENT.id}:t1:0"]
        with pytest.raises(ActionOptionError, match="'x': unknown option"):
            validate_action(ActionSpec("actions.test.plain", {"x": 1}))
        scaled = ActionSpec("actions.test.scaled", {"factor": 2})
        assert await build_action(scaled).run(ctx(scaled)) == {"value": 186}
        with pytest.raises(ActionOptionError, match="factor"):
            validate_action(ActionSpec("actions.test.scaled", {"factor": "2"}))
        with pytest.raises(ValueError, match="built-in action"):
            register_action("email", plain)
    finally:
        unregister_action("actions.test.plain")
        unregister_action("actions.test.scaled")
    assert "actions.test.plain" not in action_types()


@pytest.fixture
def plugin_on_path(tmp_path: Path) -> Iterator[None]:
    """An installed distribution declaring a ``tidings.actions`` entry point."""
    (tmp_path / "tidings_test_plugin.py").write_text(
        textwrap.dedent(
            """
            async def shout(ctx):
                return {"shout": ctx.event.type.upper()}
            """
        )
    )
    dist = tmp_path / "tidings_test_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tidings-test-plugin\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[tidings.actions]\nactions_test_shout = tidings_test_plugin:shout\n"
        "email = tidings_test_plugin:shout\n"
    )
    sys.path.insert(0, str(tmp_path))
    registry_module._entry_points = None
    try:
        yield
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tidings_test_plugin", None)
        registry_module._entry_points = None


async def test_an_entry_point_adds_an_action_type(plugin_on_path: None) -> None:
    assert "actions_test_shout" in action_types()
    spec = ActionSpec("actions_test_shout", {})
    assert await build_action(spec).run(ctx(spec)) == {"shout": "ACTIONS.TEST.REGISTERED"}
    email_action = build_action(ActionSpec("email", {"to": "a@b", "subject": "s", "body": "b"}))
    assert type(email_action).__name__ == "EmailAction"  # a plugin cannot replace a built-in


# ---------------------------------------------------------------------- log and publish


async def test_log_writes_the_rendered_message(caplog: pytest.LogCaptureFixture) -> None:
    spec = ActionSpec("log", {"message": "agent {data.agent}", "level": "warning",
                              "logger": "actions.test"})  # fmt: skip
    with caplog.at_level(logging.INFO, logger="actions.test"):
        out = await build_action(spec).run(ctx(spec))
    assert out == {"message": "agent a-7"}
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "agent a-7")]


async def test_publish_sets_causation_keeps_correlation_and_repeats_its_id(tmp_path: Path) -> None:
    spec = ActionSpec("publish", {"event_type": "actions.test.scored",
                                  "data": {"agent": "{data.agent}", "score": "{data.score}",
                                           "note": "agent {data.agent}", "fixed": [1, None]},
                                  "subject": "{data.agent}"})  # fmt: skip
    store = open_store(f"sqlite:///{tmp_path / 'events.db'}")
    try:
        (cause,) = store.append(EVENT)

        async def publish(event: Event) -> None:
            await store.aappend(event)

        action = build_action(spec)
        first = await action.run(ctx(spec, cause.event, publish=publish))
        again = await action.run(ctx(spec, cause.event, publish=publish))  # at-least-once
        stored = [r.event for r in store.read_all()]
    finally:
        store.close()
    assert first is not None and again is not None
    assert again == {**first, "duplicate": True}
    assert len(stored) == 2
    new = stored[1]
    assert new.id == first["event_id"] and new.type == "actions.test.scored"
    assert new.causation_id == EVENT.id and new.correlation_id == "corr-1"
    assert new.subject == "a-7"
    assert new.data == {"agent": "a-7", "score": 93, "note": "agent a-7", "fixed": [1, None]}

    no_corr = Event(type="actions.test.bare")
    made = PublishAction({"event_type": "x.y"}).event_for(ctx(spec, no_corr))
    assert made.correlation_id == no_corr.id and made.causation_id == no_corr.id


async def test_publish_without_a_way_to_publish_is_a_permanent_error() -> None:
    spec = ActionSpec("publish", {"event_type": "x.y"})
    with pytest.raises(PermanentActionError, match="no way to publish"):
        await build_action(spec).run(ctx(spec))


# ---------------------------------------------------------------------- email


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


async def test_email_arrives_with_the_rendered_subject_and_body(smtp: tuple[Inbox, int]) -> None:
    inbox, port = smtp
    spec = ActionSpec("email", {
        "to": ["ops@example.com", "{data.owner.email}"], "from": "tidings@example.com",
        "subject": "Agent {data.agent} registered", "host": "127.0.0.1", "port": port,
        "body": "Score {data.score} on chain {extensions.chainid}.\nTags: {data.tags}",
    })  # fmt: skip
    out = await build_action(spec).run(ctx(spec))
    assert len(inbox.messages) == 1
    sender, rcpts, raw = inbox.messages[0]
    assert sender == "tidings@example.com"
    assert rcpts == ["ops@example.com", "o@example.com"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Agent a-7 registered"
    body = msg.get_content().replace("\r\n", "\n").strip()
    assert body == 'Score 93 on chain 11155111.\nTags: ["x","y"]'
    assert out is not None and out["subject"] == "Agent a-7 registered"
    assert msg["Message-ID"] == out["message_id"]


async def test_email_refuses_a_line_break_from_the_event_in_a_header(
    smtp: tuple[Inbox, int],
) -> None:
    inbox, port = smtp
    evil = Event(type="actions.test.evil", data={"name": "x\r\nBcc: victim@example.com"})
    options = {"to": "ops@example.com", "subject": "hi {data.name}", "body": "{data.name}"}
    spec = ActionSpec("email", {**options, "host": "127.0.0.1", "port": port})
    with pytest.raises(PermanentActionError, match="Subject header would contain a line break"):
        await build_action(spec).run(ctx(spec, evil))
    spec_to = ActionSpec("email", {"to": "{data.name}", "subject": "s", "body": "b",
                                   "host": "127.0.0.1", "port": port})  # fmt: skip
    with pytest.raises(PermanentActionError, match="To header"):
        await build_action(spec_to).run(ctx(spec_to, evil))
    assert inbox.messages == []


# ---------------------------------------------------------------------- webhook


async def test_webhook_makes_exactly_one_durable_delivery_per_key(db_url: str) -> None:
    store = open_store(db_url)
    queue = DeliveryQueue(store)  # type: ignore[arg-type]
    try:
        queue.save_endpoint(Endpoint(id="crm", url="http://127.0.0.1:9/hook"))
        (rec,) = store.append(Event(type="actions.test.hook", data={"n": 1}))
        hooks = DurableWebhooks(queue)
        spec = ActionSpec("webhook", {"endpoint": "crm"})
        action = build_action(spec)
        c = ctx(spec, rec.event, webhooks=hooks, position=rec.position)
        first = await action.run(c)
        second = await action.run(c)  # the job ran again (at-least-once)
        deliveries = queue.deliveries(event_id=rec.event.id)
        assert len(deliveries) == 1, deliveries
        assert first is not None and second is not None
        assert first["new"] and not second["new"]
        assert deliveries[0].id == first["delivery_id"] == second["delivery_id"]
        assert deliveries[0].endpoint_id == "crm" and deliveries[0].state == "pending"
        assert deliveries[0].position == rec.position

        by_url = ActionSpec("webhook", {"url": "https://hooks.example.com/x"})
        out = await build_action(by_url).run(
            ActionContext(event=rec.event, trigger_id="t2", action_index=0, spec=by_url,
                          key=f"{rec.event.id}:t2:0", webhooks=hooks, position=rec.position)
        )  # fmt: skip
        assert out is not None and out["endpoint"].startswith("url-")
        made = queue.endpoint(out["endpoint"])
        assert made is not None and made.url == "https://hooks.example.com/x"
        assert made.source == "api"
        assert len(queue.deliveries(event_id=rec.event.id)) == 2

        with pytest.raises(PermanentActionError, match="endpoint 'nope' is not configured"):
            gone = ActionSpec("webhook", {"endpoint": "nope"})
            await build_action(gone).run(ctx(gone, rec.event, webhooks=hooks, position=1))
        with pytest.raises(PermanentActionError, match="not in the store"):
            await action.run(ctx(spec, rec.event, webhooks=hooks))
        with pytest.raises(PermanentActionError, match="no webhook delivery queue"):
            await action.run(ctx(spec, rec.event))
    finally:
        queue.close()
        store.close()
