"""Each tenant's search index: in memory while its key is usable, at rest only sealed.

A write updates the index in memory and saves it; if the object store refuses the save,
the index serves from memory and the indexing job saves it later. If the update itself
fails, or a restore replaced the metadata, the index is stale and the job rebuilds it
from the metadata. A loaded index is caught up with the store by comparing versions, so
a write whose index update a crash kept out is indexed the next time it is loaded.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from cmek.errors import CmekError
from cmek.keyring import Keyring
from cmek.stores.objects import ObjectNotFound, ObjectStore
from cmek.stores.search import Hit, SearchIndex
from cmek.stores.tenant import NotFound, TenantStore

log = logging.getLogger("cmek.platform")


class StoreIndex(SearchIndex):
    """A tenant's search index with the version of each object in it. Sealed at rest as
    one line of versions, then the index itself; checked against the store when loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, int] = {}

    def dump(self) -> bytes:
        return json.dumps(self.versions, sort_keys=True).encode() + b"\n" + self.to_bytes()

    @classmethod
    def load(cls, data: bytes) -> StoreIndex | None:
        """None for an index saved without versions: it is rebuilt."""
        head, newline, body = data.partition(b"\n")
        versions = json.loads(head) if newline else None
        if not isinstance(versions, dict) or not all(
                isinstance(k, str) and type(v) is int for k, v in versions.items()):
            return None
        index = cls.from_bytes(body)
        assert isinstance(index, StoreIndex)
        index.versions = versions
        return index


class SearchIndexes:
    """The tenants' indexes in this process."""

    def __init__(self, objects: ObjectStore, keyring: Keyring,
                 store: Callable[[str], TenantStore]) -> None:
        self.objects = objects
        self.keyring = keyring
        self.store = store
        self._indexes: dict[str, StoreIndex] = {}
        self._stale: set[str] = set()  # to rebuild from the metadata
        self._unsaved: set[str] = set()  # current in memory, not yet saved
        self._locks: dict[str, threading.RLock] = {}
        self._lock = threading.Lock()

    def lock(self, tenant_id: str) -> threading.RLock:
        """One writer of a tenant's index at a time (loading, updating and saving, or
        rebuilding it): otherwise an update can land in a copy that another load replaces,
        or an older snapshot can be saved over a newer one, and be gone after a lock."""
        with self._lock:
            return self._locks.setdefault(tenant_id, threading.RLock())

    def get(self, tenant_id: str) -> StoreIndex:
        """The tenant's index: loaded (and caught up) or rebuilt on first use."""
        with self._lock:
            index = self._indexes.get(tenant_id)
        if index is not None:
            return index
        with self.lock(tenant_id):
            with self._lock:
                index = self._indexes.get(tenant_id)
            if index is not None:  # loaded meanwhile by another request
                return index
            try:
                sealed = self.objects.get(_index_key(tenant_id))
            except ObjectNotFound:
                loaded = None
            else:
                loaded = StoreIndex.load(
                    self.keyring.open(tenant_id, "search_index", "index/search", sealed))
            index = (self.rebuild(tenant_id) if loaded is None
                     else self._catch_up(tenant_id, loaded))
            with self._lock:
                self._indexes[tenant_id] = index
        return index

    def search(self, tenant_id: str, query: str, limit: int) -> list[Hit]:
        return self.get(tenant_id).search(query, limit=limit)

    def put(self, tenant_id: str, kind: str, object_id: str, body: dict[str, Any],
            version: int) -> None:
        """Index an object just written; never over a later version of it."""
        with self.lock(tenant_id):
            index = self.get(tenant_id)
            doc = f"{kind}/{object_id}"
            if index.versions.get(doc, 0) < version:
                index.upsert(doc, kind, object_title(body, object_id), index_texts(body))
                index.versions[doc] = version
                self._keep(tenant_id, index)

    def remove(self, tenant_id: str, kind: str, object_id: str) -> None:
        with self.lock(tenant_id):
            index = self.get(tenant_id)
            known = index.versions.pop(f"{kind}/{object_id}", None) is not None
            if index.remove(f"{kind}/{object_id}") or known:
                self._keep(tenant_id, index)

    def mark_stale(self, tenant_id: str) -> None:
        """The indexing job rebuilds it from the metadata."""
        with self._lock:
            self._stale.add(tenant_id)

    def drop(self, tenant_id: str) -> None:
        """Forget the tenant's index in memory (its key went away, or its metadata was
        replaced); the sealed copy stays."""
        with self._lock:
            self._indexes.pop(tenant_id, None)

    def rebuild(self, tenant_id: str) -> StoreIndex:
        index = StoreIndex()
        for obj in self.store(tenant_id).list_objects():
            doc = f"{obj.kind}/{obj.object_id}"
            index.upsert(doc, obj.kind, object_title(obj.body, obj.object_id),
                         index_texts(obj.body))
            index.versions[doc] = obj.version
        self._keep(tenant_id, index)
        return index

    def run_due(self) -> int:
        """The indexing job: rebuild the indexes marked stale, from the tenant's metadata;
        save those that serve from memory because the object store refused them."""
        with self._lock:
            stale, self._stale = self._stale, set()
            unsaved, self._unsaved = self._unsaved - stale, set()
        done = 0
        for tenant_id in sorted(stale):
            try:
                with self.lock(tenant_id):  # no update slips in between
                    index = self.rebuild(tenant_id)
                    with self._lock:
                        self._indexes[tenant_id] = index
            except CmekError:
                self.mark_stale(tenant_id)
                continue
            done += 1
        for tenant_id in sorted(unsaved):
            with self.lock(tenant_id):
                with self._lock:
                    kept = self._indexes.get(tenant_id)
                if kept is None:  # dropped by a lock: nothing to save
                    continue
                try:
                    self._save(tenant_id, kept)
                except CmekError:
                    with self._lock:
                        self._unsaved.add(tenant_id)
                    continue
            done += 1
        return done

    def _catch_up(self, tenant_id: str, index: StoreIndex) -> StoreIndex:
        """Bring a loaded index level with the store, comparing versions only: a write
        whose index update a crash (or a failed save) kept out is indexed now."""
        store = self.store(tenant_id)
        current = store.object_versions()
        changed = [d for d in index.versions if d not in current]
        for doc in changed:
            index.remove(doc)
            del index.versions[doc]
        for doc, version in current.items():
            if index.versions.get(doc) != version:
                kind, object_id = doc.split("/", 1)
                try:
                    obj = store.get_object(kind, object_id)
                except NotFound:
                    continue  # deleted meanwhile
                index.upsert(doc, kind, object_title(obj.body, object_id),
                             index_texts(obj.body))
                index.versions[doc] = obj.version
                changed.append(doc)
        if changed:
            self._keep(tenant_id, index)
        return index

    def _keep(self, tenant_id: str, index: StoreIndex) -> None:
        """Save an index that is current in memory; if the object store refuses, it serves
        from memory and the indexing job saves it later."""
        try:
            self._save(tenant_id, index)
        except CmekError as e:
            with self._lock:
                self._unsaved.add(tenant_id)
            log.warning("saving the search index of %s failed (%s); the indexing job "
                        "retries", tenant_id, e.code)

    def _save(self, tenant_id: str, index: StoreIndex) -> None:
        self.objects.put(_index_key(tenant_id), self.keyring.seal(
            tenant_id, "search_index", "index/search", index.dump()))


def _index_key(tenant_id: str) -> str:
    return f"tenants/{tenant_id}/index/search"


def object_title(body: dict[str, Any], fallback: str) -> str:
    title = body.get("title")
    return title if isinstance(title, str) and title else fallback


def index_texts(body: dict[str, Any]) -> list[str]:
    """What of an object besides its title is searched: its description and columns."""
    texts: list[str] = []
    description = body.get("description")
    if isinstance(description, str):
        texts.append(description)
    for column in body.get("columns", []) if isinstance(body.get("columns"), list) else []:
        if isinstance(column, str):
            texts.append(column)
        elif isinstance(column, dict) and isinstance(column.get("name"), str):
            texts.append(column["name"])
    return texts
