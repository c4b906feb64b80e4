"""Subject naming: event types as NATS subjects and back, patterns as NATS filters."""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from tidings.topics import Pattern

# A type whose segments need no escaping (the common case: a fast path without a regex per char).
_PLAIN_TYPE = re.compile(r"[A-Za-z0-9_\-:]+(?:\.[A-Za-z0-9_\-:]+)*")
# Characters kept as they are inside a subject token; everything else becomes %XX (UTF-8).
_SAFE_CHARS = "".join(
    chr(c) for c in range(0x21, 0x7F) if chr(c) not in "%*>.$"
)  # printable ASCII except the ones NATS treats specially (and our escape char)


def _escape_segment(segment: str) -> str:
    """One type segment as a NATS token: reversible, never empty, never a wildcard."""
    if not segment:
        return "%"  # an empty segment ('a..b'); a lone '%' never comes out of quote()
    return quote(segment, safe=_SAFE_CHARS)


def _unescape_segment(token: str) -> str:
    return "" if token == "%" else unquote(token)


def subject_for_type(prefix: str, type_: str) -> str:
    """The subject an event of ``type_`` travels on: ``<prefix>.<type>``, odd characters escaped.

    Type segments become subject tokens. Characters NATS reserves (``*`` and ``>`` wildcards,
    whitespace, ``$``), non-ASCII text and our escape character ``%`` are percent-encoded
    (UTF-8), and an empty segment becomes ``%``, so every type maps to a valid subject and
    back (``type_for_subject``) without collisions.
    """
    if _PLAIN_TYPE.fullmatch(type_):
        return f"{prefix}.{type_}"
    return prefix + "." + ".".join(_escape_segment(s) for s in type_.split("."))


def type_for_subject(prefix: str, subject: str) -> str | None:
    """The event type a subject carries, or None when it is not under ``prefix``."""
    head = prefix + "."
    if not subject.startswith(head):
        return None
    rest = subject[len(head) :]
    if "%" not in rest:
        return rest
    return ".".join(_unescape_segment(t) for t in rest.split("."))


def filter_subject(prefix: str, pattern: Pattern) -> tuple[str, bool]:
    """The narrowest single NATS filter covering ``pattern``, and whether it is exact.

    ``*`` maps to ``*``. A ``**`` followed by more segments maps to ``>`` (it can never match
    nothing there, since a segment follows). A trailing ``**`` may match zero segments, which
    NATS ``>`` cannot: ``x.*.**`` is exactly ``x.>``, but ``x.a.**`` (which matches ``x.a``)
    widens to ``x.>``. When not exact, the subscription post-filters with the pattern.
    """
    segs = pattern.segments
    toks = [s if s in ("*", "**") else _escape_segment(s) for s in segs]
    if "**" not in segs:
        return ".".join([prefix, *toks]), True
    i = segs.index("**")
    last = i == len(segs) - 1
    if not last:
        return ".".join([prefix, *toks[:i], ">"]), False
    if i == 0:
        return f"{prefix}.>", True
    exact = segs[i - 1] == "*"  # '*.**' is one or more segments: exactly '>'
    return ".".join([prefix, *toks[: i - 1], ">"]), exact
