"""Tenants' warehouses: where a connection may lead, and where its SQL runs.

Three rules, each in its own module: a connection names only the tenant's own files or
an allowed network address (:mod:`.connections`, :mod:`.egress`); its SQL is one
read-only statement (:mod:`.engines`); and that statement runs in a confined process of
its own, never in the platform's (:mod:`.sandbox`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cmek.files import private_dir
from cmek.platform.warehouse.connections import (
    CONNECTION_TYPES,
    Target,
    connection_view,
    resolve_target,
    validate_connection,
)
from cmek.platform.warehouse.egress import EgressPolicy
from cmek.platform.warehouse.engines import QueryLimits, QueryResult
from cmek.platform.warehouse.errors import ConnectorError, WarehouseUnreachable
from cmek.platform.warehouse.sandbox import QueryRunner


class Warehouses:
    """The platform's one door to tenants' warehouses."""

    def __init__(self, root: Path, egress: EgressPolicy, runner: QueryRunner) -> None:
        self.root = root
        self.egress = egress
        self.runner = runner

    def area(self, tenant_id: str) -> Path:
        """The tenant's warehouse folder: the only files its DuckDB connections can name."""
        return self.root / tenant_id

    def prepare(self, tenant_id: str) -> Path:
        return private_dir(self.area(tenant_id))

    def remove(self, tenant_id: str) -> int:
        """A destroyed tenant's warehouse files go with the rest of its data: they are the
        one part of it held in clear. Returns how many files were deleted."""
        area = self.area(tenant_id)
        count = sum(1 for p in area.rglob("*") if p.is_file()) if area.is_dir() else 0
        shutil.rmtree(area, ignore_errors=True)
        return count

    def check(self, tenant_id: str, kind: str, config: Mapping[str, Any],
              credentials: Mapping[str, Any]) -> dict[str, Any]:
        """The connection as it is to be stored, refused now if it names a file outside
        the tenant's folder or an address the tenant may not reach. A name that does not
        resolve yet is kept: the query will say so."""
        stored = validate_connection(kind, config, credentials)
        with contextlib.suppress(WarehouseUnreachable):
            resolve_target(kind, stored, credentials, area=self.area(tenant_id),
                           egress=self.egress)
        return stored

    def query(self, tenant_id: str, kind: str, config: Mapping[str, Any],
              credentials: Mapping[str, Any], sql: str) -> QueryResult:
        target = resolve_target(kind, config, credentials, area=self.area(tenant_id),
                                egress=self.egress)
        return self.runner.run(tenant_id, target, sql)

    def close(self) -> None:
        self.runner.close()


__all__ = ["CONNECTION_TYPES", "ConnectorError", "EgressPolicy", "QueryLimits", "QueryResult",
           "QueryRunner", "Target", "Warehouses", "connection_view", "validate_connection"]
