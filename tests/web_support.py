"""A running stack for the page tests: kmslocal forwarding key events to a real platform
process, and tenants loaded with a small warehouse, tables, a model, answers and a
liveboard over the HTTP API (as a customer would)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.kmslocal_harness import KmsLocal, write_config
from tests.platform_harness import (
    OPERATOR_TOKEN,
    PlatformProcess,
    customer_key,
)

PROVIDER_ACCOUNT = "111111111111"
ADMIN = ("admin@example.com", "correct horse battery")
ANALYST = ("analyst@example.com", "analyst horse battery")


@dataclass
class Stack:
    kms: KmsLocal
    platform: PlatformProcess

    def stop(self) -> None:
        self.platform.stop()
        self.kms.stop()


def start_stack(base: Path) -> Stack:
    kms = KmsLocal(base / "kms", write_config(base / "kmslocal.toml", None))
    kms.start()
    platform = PlatformProcess(base / "platform", kms, key_events=True, extra_env={
        "CMEK_CHECK_INTERVAL": "3600", "CMEK_BACKUP_INTERVAL": "0",
        "CMEK_PROVIDER_ACCOUNT": PROVIDER_ACCOUNT})
    try:
        platform.start()
    except Exception:
        kms.stop()
        raise
    return Stack(kms, platform)


@dataclass
class Tenant:
    name: str
    key_arn: str
    marker: str  # a word in the tenant's data and nowhere else


def seed_tenant(stack: Stack, folder: Path, prefix: str = "t") -> Tenant:
    """A provisioned tenant with an analyst, a warehouse and the objects that show it."""
    import duckdb

    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    marker = f"Zq{uuid.uuid4().hex[:6]}"
    arn = customer_key(stack.kms)
    stack.platform.provision(name, arn, *ADMIN)
    token = stack.platform.login(name, *ADMIN)
    warehouse = stack.platform.warehouse_file(name)
    with duckdb.connect(str(warehouse)) as db:
        db.execute("create table sales(region varchar, revenue_usd decimal(10, 2), "
                   "orders integer)")
        db.execute(f"insert into sales values ('{marker} North', 1200.50, 12), "
                   f"('{marker} South', 830.25, 9), ('East', 2400, 21), ('West', 310, 4)")
    base = f"/v1/tenants/{name}"
    with stack.platform.client(token) as c:
        def ok(r: httpx.Response) -> Any:
            assert r.status_code < 300, f"{r.request.url.path}: {r.status_code} {r.text}"
            return r.json() if r.content else None

        ok(c.post(f"{base}/users", json={"email": ANALYST[0], "password": ANALYST[1],
                                        "role": "analyst"}))
        ok(c.put(f"{base}/connections/warehouse", json={
            "type": "duckdb", "config": {"path": warehouse.name}, "credentials": {}}))
        ok(c.put(f"{base}/objects/tables/sales", json={
            "title": "Sales", "description": f"Revenue by region ({marker})",
            "connection": "warehouse", "columns": ["region", "revenue_usd", "orders"]}))
        ok(c.put(f"{base}/objects/models/revenue", json={
            "title": "Revenue model", "description": "Sales by region",
            "tables": ["sales"], "columns": ["region", "revenue_usd"]}))
        answers = {"revenue-by-region": ("Revenue by region",
                                         "select region, revenue_usd from sales order by 2 desc"),
                   "orders-by-region": ("Orders by region",
                                        "select region, orders from sales order by 1")}
        for answer_id, (title, sql) in answers.items():
            result = ok(c.post(f"{base}/connections/warehouse/query", json={"sql": sql}))
            ok(c.put(f"{base}/objects/answers/{answer_id}", json={
                "title": title, "connection": "warehouse", "sql": sql,
                "result_id": result["result_id"], "columns": result["columns"]}))
        ok(c.put(f"{base}/objects/liveboards/overview", json={
            "title": "Sales overview", "description": f"Revenue and orders of {marker}",
            "answers": list(answers)}))
    return Tenant(name, arn, marker)


def key_state(stack: Stack, tenant: str) -> dict[str, Any]:
    with stack.platform.client(OPERATOR_TOKEN) as op:
        return dict(op.get(f"/v1/tenants/{tenant}/key").json())


def hidden_field(html: str, name: str) -> str:
    m = re.search(rf'<input type="hidden" name="{name}" value="([^"]*)"', html)
    assert m is not None, f"no hidden field {name}"
    return m.group(1)
