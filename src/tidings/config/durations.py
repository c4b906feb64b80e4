"""Durations: seconds written as numbers or Go-style strings (``30s``, ``1m30s``)."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["DURATION_HELP", "Duration", "dec_hook", "enc_hook", "parse_duration"]

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_UNIT = r"(?:ns|us|µs|ms|s|m|h|d)"
_DURATION = re.compile(rf"(?:{_NUMBER}\s*{_UNIT}\s*)+")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*({_UNIT})")
DURATION_HELP = "seconds as a number, or a string like 500ms, 30s, 5m, 1h or 1m30s"


class Duration(float):
    """Seconds. A type of its own only so that loading accepts ``"30s"`` where seconds go."""


def parse_duration(value: str | float) -> float:
    """Seconds from a number or a Go-style duration string, as seed configs write them.

    Accepts ``30``, ``1.5``, ``"30"``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"`` and sums
    such as ``"1m30s"`` (units ns, us, ms, s, m, h, d). Raises ``ValueError`` on anything
    else, on negative and on non-finite values.
    """
    seconds: float
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"invalid duration {value!r}: expected {DURATION_HELP}")
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.fullmatch(text):
                raise ValueError(f"invalid duration {value!r}: expected {DURATION_HELP}") from None
            seconds = sum(
                float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text)
            )
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}: expected a finite duration >= 0")
    return seconds


def enc_hook(obj: Any) -> Any:
    if isinstance(obj, float):  # Duration
        return float(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def dec_hook(tp: type, obj: Any) -> Any:
    if tp is Duration:
        return Duration(parse_duration(obj))
    raise NotImplementedError(f"cannot decode {tp!r}")
