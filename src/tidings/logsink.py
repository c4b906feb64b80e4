"""LogSink: the development publisher, writing each event as one structured JSON log line.

Subscribe it to ``**`` to see every event flow through a bus without a broker. Payload values
under secret-looking keys are masked, and large payloads are cut, so a log line never leaks a
credential or floods the terminal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from tidings.event import Event

__all__ = ["LogSink"]

DEFAULT_REDACT = ("password", "secret", "token", "authorization", "api_key", "apikey")


class LogSink:
    """A bus handler that logs ``event`` as a single JSON object on ``logger``."""

    def __init__(
        self,
        logger: logging.Logger | str = "tidings.events",
        *,
        level: int = logging.INFO,
        include_data: bool = True,
        max_data_bytes: int = 4096,
        redact: Iterable[str] = DEFAULT_REDACT,
    ) -> None:
        if max_data_bytes < 0:
            raise ValueError(f"LogSink max_data_bytes: expected >= 0, got {max_data_bytes!r}")
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level
        self.include_data = include_data
        self.max_data_bytes = max_data_bytes
        self.redact = tuple(k.lower() for k in redact)

    def __call__(self, event: Event) -> None:
        if self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, self.line(event))

    def line(self, event: Event) -> str:
        record: dict[str, Any] = {
            "event": event.type,
            "id": event.id,
            "source": event.source,
            "time": event.time.isoformat(),
        }
        for name in ("subject", "correlation_id", "causation_id", "aggregate_id"):
            value = getattr(event, name, None)
            if value is not None:
                record[name] = value
        if self.include_data:
            data = self._masked(event.payload())
            text = json.dumps(data, default=str, ensure_ascii=False)
            if len(text.encode()) > self.max_data_bytes:
                record["data_truncated"] = True
                record["data"] = text.encode()[: self.max_data_bytes].decode(errors="ignore")
            else:
                record["data"] = data
        return json.dumps(record, default=str, ensure_ascii=False)

    def _masked(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "***" if self._secret(k) else self._masked(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._masked(v) for v in value]
        return value

    def _secret(self, key: Any) -> bool:
        lowered = str(key).lower()
        return any(word in lowered for word in self.redact)
