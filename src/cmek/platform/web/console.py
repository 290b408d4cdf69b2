"""What the key console and the operator console show, read from the platform's own
records: the control plane (tenant, key state), the audit trail (state transitions, the
last verification, every KMS call the keyring made under the tenant's key) and the
reference key policy. Nothing here is sealed under the tenant's key, which is why the
operator can read it while the tenant is locked.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

from cmek.customer.policy import render
from cmek.kms import KeyArn, KmsMisconfigured
from cmek.platform.service import Platform
from cmek.platform.web.charts import SERIES, Chart, usage_chart

HOUR = 3600.0
USAGE_HOURS = 24
TIMELINE_LIMIT = 50

STATE_TEXT = {
    "active": "Active: the key works and the tenant is served.",
    "degraded": "Degraded: KMS is unreachable or throttling; the tenant is served from "
                "cached data keys for a bounded grace.",
    "locked": "Locked: the platform cannot use the key; nothing of the tenant is served.",
    "pending_deletion": "Pending deletion: the key is scheduled for deletion in KMS; nothing "
                        "of the tenant is served.",
    "restoring": "Restoring: the key works again and the tenant's stores are coming back.",
    "destroyed": "Destroyed: the key is gone; the tenant's data keys and backups were "
                 "shredded and cannot be recovered.",
}
REASON_TEXT = {
    "disabled": "The key was disabled in the customer's KMS account.",
    "access_denied": "The key policy no longer lets the platform use the key.",
    "grant_revoked": "The grant that let the platform use the key was revoked.",
    "not_found": "KMS does not find the key: it was deleted, or the platform may no longer "
                 "see it.",
    "pending_deletion": "The key is scheduled for deletion in the customer's KMS account.",
    "kms_unavailable": "KMS has been unreachable for longer than the outage grace.",
    "key_deleted": "The key was deleted in the customer's KMS account.",
    "restore_window_over": "The key was not given back within the restore window.",
    "key_usable": "The key works again.",
    "kms_recovered": "KMS answers again.",
    "provisioned": "The tenant was provisioned with this key.",
}


def state_text(state: str) -> str:
    return STATE_TEXT.get(state, state)


def reason_text(reason: str) -> str:
    if reason.startswith("restored:"):
        how = reason.split(":", 1)[1]
        return ("Service came back: the tenant's stores restarted as they were."
                if how == "restart" else
                "Service came back: the stores were rebuilt from the latest backup.")
    if reason.startswith("kms_error:"):
        return f"KMS refused the key with {reason.split(':', 1)[1]}."
    return REASON_TEXT.get(reason, f"KMS reports the key as {reason}.")


def when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(seconds: float) -> str:
    """A duration for people: the two largest units."""
    seconds = max(0.0, seconds)
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def countdowns(view: dict[str, Any], now: float) -> list[dict[str, Any]]:
    """The deadlines of an unusable key, each with the time left (empty while serving)."""
    out = []
    for name, key, meaning in (
        ("Restore window ends", "restore_deadline",
         "after this, the tenant's data is shredded even if the key comes back"),
        ("Live stores kept until", "live_store_deadline",
         "back before this: the stores restart as they were; after: rebuilt from the "
         "latest backup"),
        ("KMS deletion date", "deletion_date",
         "the customer's KMS deletes the key; nothing is recoverable after it"),
    ):
        at = view.get(key)
        if at is not None:
            left = at - now
            out.append({"name": name, "at": when(at), "meaning": meaning,
                        "left": f"in {span(left)}" if left > 0 else "passed"})
    return out


def key_properties(arn: str) -> dict[str, str]:
    try:
        parsed = KeyArn.parse(arn)
    except KmsMisconfigured:
        return {}
    return {"account": parsed.account, "region": parsed.region, "key_id": parsed.key_id}


def tenant_rows(platform: Platform) -> list[dict[str, Any]]:
    """The operator console's list: every tenant, its key state and how fresh it is."""
    now = platform.clock.now()
    states = {s.tenant_id: s for s in platform.lifecycle.states.all()}  # one query
    rows = []
    for tenant in platform.tenant_views():
        tid = tenant["tenant_id"]
        state = states.get(tid) or platform.lifecycle.state(tid)
        ok = state.last_ok_at
        rows.append({"tenant_id": tid, "key_arn": tenant["kms_key_arn"],
                     "state": state.state.value, "reason": state.reason,
                     "last_checked": when(state.last_checked_at),
                     "since_ok": "never" if ok is None else f"{span(now - ok)} ago",
                     "countdowns": countdowns(platform.lifecycle.view_of(state), now)})
    return rows


def key_console(platform: Platform, tenant_id: str) -> dict[str, Any]:
    tenant = platform.tenant_view(tenant_id)
    view = platform.lifecycle.view(tenant_id)
    now = platform.clock.now()
    changes = platform.audit.entries(tenant_id, kinds=["key_state_changed"],
                                     last=TIMELINE_LIMIT)
    timeline = [{"at": when(e.ts), "from": str(e.data.get("from", "")),
                 "to": str(e.data.get("to", "")), "reason": str(e.data.get("reason", "")),
                 "cause": str(e.data.get("cause", "")),
                 "request_id": str(e.data.get("request_id") or "")}
                for e in reversed(changes)]
    verified = platform.audit.entries(tenant_id, kinds=["key_verified"], last=1)
    verification = None
    if verified:
        last = verified[-1]
        verification = {"at": when(last.ts), "ok": bool(last.data.get("ok")),
                        "cause": str(last.data.get("cause", "")),
                        "key": last.data.get("key"), "checks": last.data.get("checks", [])}
    provider = platform.settings.provider_account
    policy = render(provider, tenant=tenant_id) if provider else None
    chart, usage_rows, usage_total, refused_total = _usage(platform, tenant_id, now)
    return {
        "tenant_id": tenant_id, "key_arn": tenant["kms_key_arn"],
        "arn_parts": key_properties(tenant["kms_key_arn"]),
        "state": view["state"], "reason": view["reason"],
        "state_text": state_text(view["state"]), "reason_text": reason_text(view["reason"]),
        "since": when(view["since"]), "last_checked": when(view["last_checked_at"]),
        "last_ok": when(view["last_ok_at"]),
        "since_ok": None if view["last_ok_at"] is None else span(now - view["last_ok_at"]),
        "countdowns": countdowns(view, now), "timeline": timeline,
        "verification": verification, "policy": policy, "provider_account": provider,
        "usage_chart": chart, "usage_rows": usage_rows, "usage_total": usage_total,
        "refused_total": refused_total,
    }


def _usage(platform: Platform, tenant_id: str, now: float
           ) -> tuple[Chart, list[dict[str, Any]], int, int]:
    """Calls per hour over the last day, from the audit trail's ``kms_call`` entries."""
    last_hour = int(now // HOUR) * HOUR
    hours = [last_hour - HOUR * (USAGE_HOURS - 1 - i) for i in range(USAGE_HOURS)]
    calls: Counter[tuple[float, str, str]] = Counter()
    refused: Counter[tuple[float, str, str]] = Counter()
    codes: dict[tuple[float, str, str], set[str]] = {}
    for entry in platform.audit.entries(tenant_id, kinds=["kms_call"], since=hours[0]):
        hour = int(entry.ts // HOUR) * HOUR
        context = entry.data.get("context")
        category = str(context.get("cmek:category", "-")) if isinstance(context, dict) else "-"
        key = (hour, category, str(entry.data.get("operation", "-")))
        calls[key] += 1
        if entry.data.get("outcome") == "error":
            refused[key] += 1
            codes.setdefault(key, set()).add(str(entry.data.get("kms_code")
                                                 or entry.data.get("error_code") or "error"))
    names = sorted({(k[1], k[2]) for k in calls})
    index = {h: i for i, h in enumerate(hours)}
    series = []
    for category, operation in names:
        counts = [0] * len(hours)
        for (hour, cat, op), count in calls.items():
            if (cat, op) == (category, operation) and hour in index:
                counts[index[hour]] += count - refused[(hour, cat, op)]
        series.append((_colour(category), f"{category} · {operation}", counts))
    legend = [(_colour(c), c) for c in sorted({c for c, _ in names})]
    refused_per_hour = [0] * len(hours)
    for (hour, _, _), count in refused.items():
        if hour in index:
            refused_per_hour[index[hour]] += count
    chart = usage_chart(hours, series, refused_per_hour, _hour_label, legend)
    rows = [{"hour": f"{when(hour)[:13]}:00", "category": cat, "operation": op,
             "calls": count, "refused": refused[(hour, cat, op)],
             "codes": ", ".join(sorted(codes.get((hour, cat, op), set())))}
            for (hour, cat, op), count in sorted(calls.items(), key=lambda i: (-i[0][0],
                                                                                i[0][1:]))]
    return chart, rows, sum(calls.values()), sum(refused.values())


def _colour(category: str) -> str:
    """Each data category keeps its colour from chart to chart."""
    known = ("auth", "metadata", "search_index", "warehouse_data", "warehouse_credentials",
             "logs", "backups")
    return f"s{known.index(category) % SERIES}" if category in known else f"s{SERIES - 1}"


def _hour_label(start: float) -> str:
    return dt.datetime.fromtimestamp(start, tz=dt.UTC).strftime("%H:00")
