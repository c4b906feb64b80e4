"""The store contract against the in-process memory backend."""

from __future__ import annotations

import uuid

import pytest

from tests.contract.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store_url(self) -> str:
        # a named store: a second open_store() on the URL shares it, as a database would
        return f"memory://contract-{uuid.uuid4().hex}"
