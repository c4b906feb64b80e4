"""Header names tidings sets on NATS messages (de-duplication id, dead-letter details)."""

from __future__ import annotations

_HDR_ERROR = "Tidings-Error"
_HDR_ATTEMPTS = "Tidings-Attempts"
_HDR_FAILED_AT = "Tidings-Failed-At"
_HDR_EVENT_ID = "Tidings-Event-Id"
_HDR_EVENT_TYPE = "Tidings-Event-Type"
_HDR_SUBJECT = "Tidings-Subject"
_MSG_ID = "Nats-Msg-Id"


def _header_value(text: str) -> str:
    """Header values cannot span lines; keep them on one and bounded."""
    return " ".join(text.split())[:2000]
