"""The ``email`` action: a plain-text mail over SMTP for each matched event.

Options: ``to`` (an address or a list; templates allowed), ``subject`` and ``body``
(templates, required), ``from`` (default ``tidings@localhost``), ``host`` (default
``localhost``), ``port`` (default 25; 465 with ``ssl``), ``starttls`` / ``ssl`` (booleans),
``username`` with ``password_env`` (the name of an environment variable holding the password,
so no secret sits in a trigger definition), ``timeout`` (seconds for the whole send, default
10, at most 300). Sends run on threads of their own, so a mail server that stalls cannot take
the threads the rest of the process reads the store with.

Header values are never built from raw event text with line breaks in them: a subject,
recipient or sender that would hold CR or LF is refused (at load when the option's own text
has one; when the job runs if an event value brings one, and that job goes dead, since no
retry changes the event). A recipient or sender must render to one address, so an event
value cannot add recipients. The body may hold any text. The Message-ID is derived from the job
key, so a mail sent twice (at-least-once) carries one id that receivers can deduplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from email.utils import formatdate, getaddresses
from typing import Any

from tidings.triggers.actions.base import (
    ActionContext,
    ActionOptionError,
    PermanentActionError,
    check_options,
    derived_id,
    option_bool,
    option_number,
    option_str,
)
from tidings.triggers.actions.templates import Template, TemplateError

__all__ = ["MAX_TIMEOUT", "EmailAction"]

MAX_TIMEOUT = 300  # seconds a whole send may take
_SENDERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="tidings-email")

_OPTIONS = ("to", "subject", "body", "from", "host", "port", "starttls", "ssl", "username",
            "password_env", "timeout")  # fmt: skip


def _template(
    options: Mapping[str, Any], name: str, *, header: bool, default: str | None = None
) -> Template:
    """A required template option (``default`` when absent, if one is given)."""
    text = (
        option_str("email", options, name)
        if default is None
        else option_str("email", options, name, default)
    )
    if header and ("\r" in text or "\n" in text):
        raise ActionOptionError("email", name, "must not contain line breaks (CR or LF)")
    try:
        return Template(text)
    except TemplateError as exc:
        raise ActionOptionError("email", name, str(exc)) from exc


def _header(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise PermanentActionError(
            f"email action: the {name} header would contain a line break (CR or LF) from the "
            "event; refused (header injection)"
        )
    return value


def _address(name: str, value: str) -> str:
    """One mailbox, as a To or From header holds it: an event value such as
    ``"a@x, spy@evil"`` would otherwise add recipients (smtplib mails every address of To)."""
    value = _header(name, value)
    found = getaddresses([value])
    if len(found) != 1 or "@" not in found[0][1]:
        raise PermanentActionError(
            f"email action: the {name} header would be {value[:80]!r}, not one address; "
            "refused (a template value must be a single address: give several in a list)"
        )
    return value


def _shut(client: smtplib.SMTP) -> None:
    """Wake a send blocked on ``client``'s socket (from the cutoff timer's thread)."""
    sock = getattr(client, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class EmailAction:
    def __init__(self, options: Mapping[str, Any]) -> None:
        options = check_options("email", options, _OPTIONS)
        to = options.get("to")
        if isinstance(to, str):
            to = [to]
        if not isinstance(to, list | tuple) or not to:
            raise ActionOptionError("email", "to", f"expected an address or a list, got {to!r}")
        self.to = [_template({"to": t}, "to", header=True) for t in to]
        self.subject = _template(options, "subject", header=True)
        self.body = _template(options, "body", header=False)
        self.sender = _template(options, "from", header=True, default="tidings@localhost")
        self.host = option_str("email", options, "host", "localhost")
        self.use_ssl = option_bool("email", options, "ssl", False)
        self.starttls = option_bool("email", options, "starttls", False)
        if self.use_ssl and self.starttls:
            raise ActionOptionError("email", "starttls", "give ssl or starttls, not both")
        self.port = option_number(
            "email", options, "port", 465 if self.use_ssl else 25, integer=True
        )
        if self.port > 65535:
            raise ActionOptionError("email", "port", f"expected 1..65535, got {self.port}")
        self.timeout = float(option_number("email", options, "timeout", 10.0))
        if self.timeout > MAX_TIMEOUT:
            raise ActionOptionError(
                "email", "timeout", f"expected at most {MAX_TIMEOUT} seconds, got {self.timeout:g}"
            )
        self.username = option_str("email", options, "username", None)
        self.password_env = option_str("email", options, "password_env", None)
        if (self.username is None) != (self.password_env is None):
            raise ActionOptionError(
                "email", "password_env", "give username and password_env together"
            )

    def message(self, ctx: ActionContext) -> EmailMessage:
        """The mail for ``ctx`` (rendered; headers checked)."""
        event = ctx.event
        msg = EmailMessage()
        msg["From"] = _address("From", self.sender.render(event))
        msg["To"] = ", ".join(_address("To", t.render(event)) for t in self.to)
        msg["Subject"] = _header("Subject", self.subject.render(event))
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = f"<{derived_id(ctx.key, event, 'email')}@tidings>"
        msg.set_content(self.body.render(event))
        return msg

    def _send(self, msg: EmailMessage) -> None:
        password = None
        if self.password_env is not None:
            password = os.environ.get(self.password_env)
            if password is None:
                raise PermanentActionError(
                    f"email action: environment variable {self.password_env!r} (password_env) "
                    "is not set"
                )
        client: smtplib.SMTP
        if self.use_ssl:
            client = smtplib.SMTP_SSL(timeout=self.timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(timeout=self.timeout)
        # made without a host so that connecting happens under the cutoff below; the host is
        # what TLS (ssl, starttls) checks the certificate against, as SMTP(host) would set it
        client._host = self.host  # type: ignore[attr-defined]
        # ``timeout`` bounds each socket read; a server answering a byte at a time would hold
        # this thread for ever, so the socket is shut when the whole send is past its time
        cutoff = threading.Timer(self.timeout, _shut, (client,))
        cutoff.daemon = True
        started = time.monotonic()
        cutoff.start()
        try:
            with client:
                client.connect(self.host, self.port)
                if self.starttls:
                    client.starttls(context=ssl.create_default_context())
                if self.username is not None and password is not None:
                    client.login(self.username, password)
                client.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            if time.monotonic() - started >= self.timeout:  # the cutoff shut it
                raise TimeoutError(
                    f"email action: {self.host}:{self.port} did not take the mail within "
                    f"{self.timeout:g}s (option 'timeout')"
                ) from exc
            raise
        finally:
            cutoff.cancel()

    async def run(self, ctx: ActionContext) -> Mapping[str, Any] | None:
        msg = self.message(ctx)
        # its own threads: mail servers that stall cannot take the ones the server reads with
        await asyncio.get_running_loop().run_in_executor(_SENDERS, self._send, msg)
        return {"to": msg["To"], "subject": msg["Subject"], "message_id": msg["Message-ID"]}
