"""Topic globs as POSIX regexes, so a publish matches subscriptions inside PostgreSQL."""

from __future__ import annotations

from tidings.topics import Pattern

_REGEX_SPECIAL = set("\\^$.|?*+()[]{}")


def glob_to_regex(pattern: Pattern) -> str:
    """The POSIX regex (PostgreSQL ``~``) that matches exactly what ``pattern.matches`` does.

    ``*`` is one segment (possibly empty), ``**`` zero or more; each ``**`` absorbs the dot
    next to it so ``a.**.z`` matches ``a.z`` as well as ``a.b.c.z``.
    """
    segs = pattern.segments
    if segs == ("**",):
        return "^.*$"
    out: list[str] = ["^"]
    dot_needed = False
    for i, seg in enumerate(segs):
        if seg == "**":
            out.append(r"([^.]*\.)*" if i == 0 else r"(\.[^.]*)*")
            dot_needed = i != 0
            continue
        atom = (
            "[^.]*" if seg == "*" else "".join("\\" + c if c in _REGEX_SPECIAL else c for c in seg)
        )
        out.append((r"\." if dot_needed else "") + atom)
        dot_needed = True
    out.append("$")
    return "".join(out)
