"""Talking to a running ``tidings serve`` from the CLI: where it is, the key, requests, streams.

The server is ``--url``, else ``$TIDINGS_URL``, else the config's ``server.host``/``port``; the
key is ``--api-key``, else ``$TIDINGS_API_KEY``, else the config's ``server.api_key``. Plain
``urllib`` (no extra dependency): requests are few and small, and a stream is lines read from
one response. A refusal prints the server's problem ``detail`` (exit 2: the input or the key
is wrong); an unreachable server or a 5xx exits 1.
"""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from tidings.cli.app import EXIT_FAILURE, fail, settings_from

__all__ = ["ApiKeyOption", "Client", "Unreachable", "UrlOption", "client_from"]

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="TIDINGS_URL",
        help="The tidings server (default: $TIDINGS_URL, else server.host/port of the config).",
        show_default=False,
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="TIDINGS_API_KEY",
        help="API key for the server (default: $TIDINGS_API_KEY, else server.api_key).",
        show_default=False,
    ),
]
TIMEOUT = 30.0  # seconds for one request (a stream waits longer: it has heartbeats)


class Unreachable(Exception):
    """The server could not be reached, or the connection to it broke."""


@dataclass(frozen=True, slots=True)
class Message:
    """One Server-Sent Events message."""

    id: str | None
    event: str
    data: str


class Client:
    """Requests to one server with one key; every failure ends the command with a message."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", **(extra or {})}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _open(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str],
        timeout: float,
        patient: bool = False,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers = {**headers, "Content-Type": "application/json"}
        req = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            return urllib.request.urlopen(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            self._refused(exc)
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if patient:
                raise Unreachable(str(reason)) from None
            fail(
                f"cannot reach the tidings server at {self.url}: {reason}; start it with "
                "`tidings serve`, or point --url (TIDINGS_URL) at it",
                EXIT_FAILURE,
            )

    def _refused(self, exc: urllib.error.HTTPError) -> Any:
        raw = exc.read().decode("utf-8", "replace")
        try:
            detail = json.loads(raw).get("detail") or raw
        except (ValueError, AttributeError):
            detail = raw or exc.reason
        code = EXIT_FAILURE if exc.code >= 500 else 2
        hint = ""
        if exc.code == 401:
            hint = " (pass --api-key or set TIDINGS_API_KEY)"
        fail(f"the server answered {exc.code}: {detail}{hint}", code)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON answer of ``method path`` (None for an empty one)."""
        with self._open(method, path, body, self._headers(), TIMEOUT) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def stream(
        self, path: str, last_id: str | None = None, patient: bool = False
    ) -> Iterator[Message]:
        """Server-Sent Events of ``path`` until the server ends the stream; first an ``open``
        message. ``patient``: a server away or gone raises ``Unreachable`` (the caller may
        try again) instead of ending the command."""
        headers = self._headers({"Accept": "text/event-stream"})
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        with self._open("GET", path, None, headers, 120.0, patient) as resp:
            yield Message(None, "open", "")
            try:
                yield from self._messages(resp)
            except (OSError, http.client.HTTPException) as exc:
                if not patient:
                    fail(f"the stream from {self.url} broke: {exc}", EXIT_FAILURE)
                raise Unreachable(str(exc) or type(exc).__name__) from None

    @staticmethod
    def _messages(resp: Any) -> Iterator[Message]:
        fields: dict[str, str] = {}
        for raw in resp:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if "data" in fields:
                    kind = fields.get("event", "message")
                    yield Message(fields.get("id"), kind, fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value


def quote(part: str) -> str:
    """One path segment (an id) as a URL takes it."""
    return urllib.parse.quote(part, safe="")


def client_from(ctx: typer.Context, url: str | None, api_key: str | None) -> Client:
    """The client for ``--url``/``--api-key``, filled in from the environment or the config."""
    if url is None or api_key is None:
        state_url, state_key = _from_config(ctx)
        url = url or state_url
        api_key = api_key or state_key
    if not url.startswith(("http://", "https://")):
        fail(f"--url: expected http://HOST:PORT or https://..., got {url!r}")
    return Client(url, api_key)


def _from_config(ctx: typer.Context) -> tuple[str, str | None]:
    if not _has_config(ctx):
        return "http://127.0.0.1:8000", None
    server = settings_from(ctx).server
    host = "127.0.0.1" if server.host in ("0.0.0.0", "::", "") else server.host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{server.port}", server.api_key


def _has_config(ctx: typer.Context) -> bool:
    from tidings.cli.app import _config_path  # noqa: PLC0415

    return _config_path(ctx) is not None or any(
        k.upper().startswith("TIDINGS_SERVER__") for k in os.environ
    )
