"""TEMPORARY STUB of COND's triggers/definitions.py (branch i12-cond): only ``ActionSpec``, so
the JOBS part imports until COND's module is merged. Delete before the final commit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ActionSpec:
    type: str
    options: Mapping[str, Any] = field(default_factory=dict)
    name: str | None = None
