"""The ``log`` action: a line in the process's log for each matched event.

Options: ``message`` (a template, default ``"{type} {id}"``), ``level`` (debug, info,
warning, error; default info), ``logger`` (default ``tidings.triggers.actions``).

The line is one line: line breaks and other control characters an event value brings (a
forged second log line, a terminal escape) are written escaped (``\\n``, ``\\x1b``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from tidings.triggers.actions.base import (
    ActionContext,
    ActionOptionError,
    check_options,
    option_str,
)
from tidings.triggers.actions.templates import Template, TemplateError

__all__ = ["LogAction"]

# C0 controls but tab, DEL, the C1 controls and the line/paragraph separators: written escaped
_CONTROLS = (*range(0x09), *range(0x0A, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)
_ESCAPES = {c: repr(chr(c))[1:-1] for c in _CONTROLS}

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}  # fmt: skip


class LogAction:
    def __init__(self, options: Mapping[str, Any]) -> None:
        options = check_options("log", options, ("message", "level", "logger"))
        text = option_str("log", options, "message", "{type} {id}")
        try:
            self.message = Template(text)
        except TemplateError as exc:
            raise ActionOptionError("log", "message", str(exc)) from exc
        level = option_str("log", options, "level", "info")
        if level.lower() not in _LEVELS:
            raise ActionOptionError(
                "log", "level", f"expected one of {', '.join(_LEVELS)}, got {level!r}"
            )
        self.level = _LEVELS[level.lower()]
        self.logger = logging.getLogger(
            option_str("log", options, "logger", "tidings.triggers.actions")
        )

    async def run(self, ctx: ActionContext) -> Mapping[str, Any] | None:
        text = self.message.render(ctx.event).translate(_ESCAPES)
        self.logger.log(self.level, "%s", text, extra={"trigger_id": ctx.trigger_id,
                                                         "job_key": ctx.key})  # fmt: skip
        return {"message": text}
