"""A search index the object store refused to save: it serves from memory, and the
indexing job saves it once the store takes writes again, without rebuilding it from the
metadata on every tick meanwhile."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from cmek.platform.access import Caller
from cmek.platform.indexing import StoreIndex
from cmek.platform.service import Platform
from cmek.stores.objects import ObjectStoreUnavailable
from tests.kmslocal_harness import KmsLocal
from tests.platform_harness import customer_key

PASSWORD = "correct horse battery"


def test_an_unsaved_index_is_saved_later_not_rebuilt(
        local_platform: Platform, kmslocal: KmsLocal, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant = f"t{uuid.uuid4().hex[:10]}"
    local_platform.provision(tenant, customer_key(kmslocal), "admin@example.com", PASSWORD)
    caller = local_platform.sessions.authenticate(
        local_platform.sessions.login(tenant, "admin@example.com", PASSWORD)[0], tenant)
    assert isinstance(caller, Caller)
    local_platform.put_object(caller, "tables", "first", {"title": "First"})
    real_put = local_platform.objects.put
    refused: list[str] = []

    def read_only(key: str, data: bytes) -> Any:
        refused.append(key)
        raise ObjectStoreUnavailable("the object store is read-only")

    monkeypatch.setattr(local_platform.objects, "put", read_only)
    local_platform.put_object(caller, "tables", "orders", {"title": "Orders"})  # answered: saved
    assert [h.doc_id for h in local_platform.indexes.search(tenant, "orders", 20)] == [
        "tables/orders"]
    rebuilds: list[str] = []
    real_rebuild = local_platform.indexes.rebuild
    monkeypatch.setattr(local_platform.indexes, "rebuild",
                        lambda t: rebuilds.append(t) or real_rebuild(t))

    assert local_platform.indexes.run_due() == 0  # still refused: tried again, nothing rebuilt
    assert local_platform.indexes.run_due() == 0
    assert rebuilds == []
    assert len(refused) == 3  # the write's own save, then one retry per run

    monkeypatch.setattr(local_platform.objects, "put", real_put)
    assert local_platform.indexes.run_due() == 1
    assert local_platform.indexes.run_due() == 0  # saved: nothing more to do
    assert rebuilds == []
    saved = StoreIndex.load(local_platform.keyring.open(
        tenant, "search_index", "index/search", local_platform.objects.get(
            f"tenants/{tenant}/index/search")))
    assert saved is not None
    assert [h.doc_id for h in saved.search("orders")] == ["tables/orders"]
