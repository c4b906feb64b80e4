"""SavedTriggers and TriggerCatalog on SQLite and PostgreSQL: every write is checked like a new
definition, config ids are refused, and the catalog sees a change within its check period."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tidings.event import Event
from tidings.triggers.definitions import TriggerError, parse_trigger
from tidings.triggers.saved import SavedTriggers, TriggerCatalog, TriggerConflict, TriggerNotFound


def definition(trigger_id: str = "big", **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "id": trigger_id,
        "pattern": "svtest.order.*",
        "condition": "data.amount > 100",
        "actions": [{"type": "log"}],
    }
    raw.update(changes)
    return raw


@pytest.fixture
def saved(db_url: str) -> Iterator[SavedTriggers]:
    store = SavedTriggers(db_url, config_ids={"from-yaml"})
    try:
        yield store
    finally:
        store.close()


def test_create_get_list_replace_patch_delete(saved: SavedTriggers) -> None:
    v0 = saved.version()
    made = saved.create(definition())
    assert made.id == "big" and made.version == 1 and made.enabled
    assert made.definition["condition"] == "data.amount > 100"
    assert saved.version() == v0 + 1
    saved.create(definition("a-first", pattern="svtest.user.*"))
    assert [t.id for t in saved.list()] == ["a-first", "big"] and saved.count() == 2
    assert [t.id for t in saved.list(after="a-first", limit=1)] == ["big"]

    replaced, created = saved.replace("big", definition(condition="data.amount > 5"))
    assert not created and replaced.version == 2
    assert replaced.trigger.condition is not None
    assert replaced.trigger.condition.text == "data.amount > 5"
    fresh, created = saved.replace(
        "new-one", {"pattern": "svtest.x.*", "actions": [{"type": "log"}]}
    )
    assert created and fresh.id == "new-one"

    patched = saved.patch("big", {"description": "large orders", "condition": None})
    assert patched.trigger.condition is None and patched.trigger.description == "large orders"
    assert patched.version == 3

    off = saved.set_enabled("big", False)
    assert not off.enabled and off.version == 4
    assert saved.set_enabled("big", False).version == 4  # already off: nothing changes
    assert saved.get("big").definition["enabled"] is False

    saved.delete("big")
    with pytest.raises(TriggerNotFound):
        saved.get("big")
    with pytest.raises(TriggerNotFound):
        saved.delete("big")
    assert saved.version() == v0 + 7


def test_bad_definitions_are_refused_on_every_path(saved: SavedTriggers) -> None:
    with pytest.raises(TriggerError) as bad:
        saved.create(definition(condition="data.amount > "))
    assert bad.value.path == "trigger.condition" and bad.value.position == 14
    with pytest.raises(TriggerError) as unknown:
        saved.create(definition(actions=[{"type": "fax"}]))
    assert unknown.value.path == "trigger.actions[0].type" and "fax" in str(unknown.value)
    saved.create(definition())
    with pytest.raises(TriggerError) as patched:
        saved.patch("big", {"condition": "data.amount >> 3"})
    assert patched.value.path == "trigger.condition" and patched.value.position is not None
    with pytest.raises(TriggerError) as action:
        saved.patch("big", {"actions": [{"type": "webhook"}]})  # webhook needs an endpoint
    assert action.value.path.startswith("trigger.actions[0]")
    with pytest.raises(TriggerError) as renamed:
        saved.patch("big", {"id": "other"})
    assert renamed.value.path == "trigger.id"
    with pytest.raises(TriggerError):
        saved.replace("big", definition("other"))
    with pytest.raises(TriggerConflict, match="exists"):
        saved.create(definition())
    assert saved.get("big").version == 1  # nothing of the refused changes was written


def test_config_ids_cannot_be_written(saved: SavedTriggers) -> None:
    for attempt in (
        lambda: saved.create(definition("from-yaml")),
        lambda: saved.replace("from-yaml", definition("from-yaml")),
        lambda: saved.patch("from-yaml", {"description": "x"}),
        lambda: saved.set_enabled("from-yaml", False),
        lambda: saved.delete("from-yaml"),
    ):
        with pytest.raises(TriggerConflict, match="config file"):
            attempt()


def test_catalog_merges_config_and_saved_and_picks_up_changes(saved: SavedTriggers) -> None:
    now = [0.0]
    yaml = parse_trigger(definition("from-yaml", pattern="svtest.user.*"))
    catalog = TriggerCatalog([yaml], saved, check_every=0.5, clock=lambda: now[0])
    assert [t.id for t in catalog()] == ["from-yaml"]
    saved.create(definition())
    assert "big" not in catalog()  # within the check period: the old index
    now[0] += 0.6
    index = catalog()
    assert [t.id for t in index] == ["from-yaml", "big"]
    event = Event(type="svtest.order.placed", source="test", data={"amount": 500})
    assert [t.id for t in index.matched(event)] == ["big"]
    rebuilds = catalog.rebuilds
    now[0] += 0.6
    assert catalog() is index and catalog.rebuilds == rebuilds  # unchanged: not rebuilt
    saved.set_enabled("big", False)
    now[0] += 0.6
    assert catalog().matched(event) == []
    saved.delete("big")
    now[0] += 0.6
    assert "big" not in catalog()


def test_catalog_in_another_process_sees_a_change_within_its_period(db_url: str) -> None:
    """Two handles on one database, as a processor and the API in two processes have: the
    catalog picks the change up on the real clock, and rebuilds once for it."""
    import time  # noqa: PLC0415

    api = SavedTriggers(db_url)
    reader = SavedTriggers(db_url)
    catalog = TriggerCatalog([], reader, check_every=0.2)
    try:
        assert len(catalog()) == 0
        rebuilds = catalog.rebuilds
        api.create(definition("remote"))
        deadline = time.monotonic() + 30
        while "remote" not in catalog():
            assert time.monotonic() < deadline, f"not seen; rebuilds {catalog.rebuilds}"
            time.sleep(0.02)
        assert catalog.rebuilds == rebuilds + 1
        for _ in range(20):  # unchanged: looked at, not rebuilt
            catalog()
            time.sleep(0.02)
        assert catalog.rebuilds == rebuilds + 1
    finally:
        catalog.close()
        api.close()
