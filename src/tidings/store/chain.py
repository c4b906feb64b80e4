"""Chain coordinates of an event: seed 001's columns, carried as CloudEvents extensions.

An event from a blockchain indexer says where it happened: chain, block, transaction, log.
Seed 001's ``events`` table keeps that in columns (``chain_id``, ``block_number``, ...); the
envelope keeps it in ``Event.extensions``. CloudEvents attribute names are lowercase letters
and digits only, so each column has an extension name without the underscore
(``chain_id`` -> ``chainid``). Every store fills the columns from the extensions when tidings
writes, and a row a plain SQL writer filled reads back with the extensions set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tidings.event import Event, EventError

__all__ = [
    "COLUMNS",
    "EXTENSION_OF",
    "ChainInfo",
    "chain_extensions",
    "chain_info",
    "chain_values",
    "has_chain",
    "merge_columns",
]

# column -> (extension attribute name, kind): "int" columns are bigint (log_index: int)
_SPEC: tuple[tuple[str, str, str], ...] = (
    ("chain_id", "chainid", "int"),
    ("block_number", "blocknumber", "int"),
    ("block_hash", "blockhash", "str"),
    ("parent_hash", "parenthash", "str"),
    ("transaction_hash", "transactionhash", "str"),
    ("log_index", "logindex", "int4"),
    ("registry", "registry", "str"),
)
#: The chain columns, in the order ``chain_values`` returns them.
COLUMNS: tuple[str, ...] = tuple(column for column, _, _ in _SPEC)
#: Column name -> extension attribute name (``"chain_id"`` -> ``"chainid"``).
EXTENSION_OF: dict[str, str] = {column: ext for column, ext, _ in _SPEC}
_NONE: tuple[None, ...] = (None,) * len(_SPEC)
_LIMITS = {"int": 2**63, "int4": 2**31}


@dataclass(frozen=True, slots=True)
class ChainInfo:
    """Where an event happened on a chain (``chain_info(event)``)."""

    chain_id: int | None = None
    block_number: int | None = None
    block_hash: str | None = None
    parent_hash: str | None = None
    transaction_hash: str | None = None
    log_index: int | None = None
    registry: str | None = None


def chain_extensions(**columns: Any) -> dict[str, Any]:
    """The extensions for ``Event(extensions=...)`` from column names, Nones left out::

    Event(type="AgentRegistered", extensions=chain_extensions(chain_id=1, block_number=7))
    """
    unknown = sorted(set(columns) - set(EXTENSION_OF))
    if unknown:
        raise ValueError(
            f"chain_extensions: unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}"
        )
    return {EXTENSION_OF[k]: v for k, v in columns.items() if v is not None}


def _coerce(value: Any, ext: str, kind: str) -> int | str:
    """An extension value as its column wants it; EventError naming the attribute if not."""
    if kind == "str":
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        expected = "a string"
    else:
        number: int | None = None
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
            number = int(value)  # CloudEvents Integer travels as text in binary mode
        if number is not None and -_LIMITS[kind] <= number < _LIMITS[kind]:
            return number
        bits = 64 if kind == "int" else 32
        expected = f"a {bits}-bit integer"
    raise EventError(
        f"extensions[{ext!r}]",
        f"expected {expected}, got {value!r}",
        "Chain coordinates are stored in typed columns; send chainid, blocknumber and "
        "logindex as integers and the hashes and registry as strings.",
    )


def chain_values(event: Event) -> tuple[Any, ...]:
    """The chain columns of ``event`` (``COLUMNS`` order), from its extensions.

    Cheap for events without extensions (the common case): one attribute read.
    """
    ext = event.extensions
    if not ext:
        return _NONE
    out: list[Any] = []
    for _, name, kind in _SPEC:
        value = ext.get(name)
        out.append(None if value is None else _coerce(value, name, kind))
    return tuple(out)


def has_chain(values: tuple[Any, ...]) -> bool:
    """Whether ``chain_values(...)`` found any chain coordinate (a store then writes the
    chain columns; without, it leaves them out of the statement: binding seven NULLs per
    row cost SQLite 20 % of a batch append)."""
    return values is not _NONE and any(v is not None for v in values)


def chain_info(event: Event) -> ChainInfo | None:
    """The chain coordinates of ``event``; None when it carries none."""
    values = chain_values(event)
    if values is _NONE or all(v is None for v in values):
        return None
    return ChainInfo(*values)


def merge_columns(event: Event, values: Mapping[str, Any]) -> Event:
    """``event`` with the chain columns a plain SQL writer filled added to its extensions.

    Extensions the event already has win (tidings wrote both from the same value); only
    missing ones are added. Returns ``event`` itself when nothing is missing.
    """
    ext = dict(event.extensions or {})
    changed = False
    for column, name, _ in _SPEC:
        value = values.get(column)
        if value is not None and name not in ext:
            ext[name] = value
            changed = True
    if changed:
        event.extensions = ext
    return event
