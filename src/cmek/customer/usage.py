"""The customer's view of the provider's use of its key, from its own usage log.

Runs with the customer's credentials: CloudTrail ``LookupEvents`` by resource (the key
ARN) over a time window, every page. Each record is counted once (by event id) under
its operation, and under the data category and tenant that its encryption context
names (``-`` when the call carried none, as management calls do). ``calls`` counts
every record, refused ones included; ``refusals`` lists those with an error code.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cmek.customer.aws_errors import CustomerKeyError, aws_error
from cmek.errors import InvalidInput
from cmek.kms import KeyArn, KmsMisconfigured

if TYPE_CHECKING:
    from mypy_boto3_cloudtrail import CloudTrailClient
    from mypy_boto3_cloudtrail.type_defs import LookupAttributeTypeDef

NONE = "-"
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SINCE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
MAX_PAGES = 10_000  # 500,000 records: a guard against a service that never stops paging


class UsageLookupFailed(CustomerKeyError):
    code = "usage_lookup_failed"


@dataclass(frozen=True)
class UsageReport:
    key_arn: str
    since: float
    until: float
    total: int
    calls: list[dict[str, Any]]  # {"operation","category","tenant","count"}
    refusals: list[dict[str, Any]]  # {"operation","error_code","count","principals"}
    first_use: float | None
    last_use: float | None
    principals: list[dict[str, Any]]  # {"arn","account","count"}

    def to_json(self) -> dict[str, Any]:
        return {
            "key_arn": self.key_arn, "since": self.since, "until": self.until,
            "total": self.total, "calls": self.calls, "refusals": self.refusals,
            "first_use": self.first_use, "last_use": self.last_use,
            "principals": self.principals,
        }


HISTORY_SECONDS = 90 * 86400.0  # what CloudTrail's LookupEvents can look back over


def parse_since(text: str) -> float:
    """``"24h"``, ``"30m"``, ``"7d"``, ``"90s"`` or plain seconds, to seconds (> 0)."""
    m = _SINCE.match(text.strip().lower())
    if m is None:
        raise InvalidInput(
            f"bad time span {text[:40]!r}: use a number with an optional unit s, m, h or d "
            "(e.g. 90s, 30m, 24h, 7d)"
        )
    seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInput(f"bad time span {text[:40]!r}: it must be more than zero")
    if seconds > HISTORY_SECONDS:
        raise InvalidInput(f"bad time span {text[:40]!r}: CloudTrail's event history "
                           "keeps the last 90 days (use 90d or less)")
    return seconds


def usage_report(
    cloudtrail: CloudTrailClient, key_arn: str, *, since_seconds: float, now: float
) -> UsageReport:
    """Every use of ``key_arn`` in the last ``since_seconds`` before ``now``, summed up."""
    try:
        KeyArn.parse(key_arn)
    except KmsMisconfigured as e:
        raise InvalidInput(e.message) from None
    if not math.isfinite(since_seconds) or since_seconds <= 0:
        raise InvalidInput("the time span must be a positive number of seconds")
    since, until = max(now - since_seconds, 0.0), now  # no usage log predates 1970

    calls: Counter[tuple[str, str, str]] = Counter()
    refusals: Counter[tuple[str, str]] = Counter()
    refused_by: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    principals: Counter[tuple[str, str]] = Counter()
    seen: set[str] = set()
    first: float | None = None
    last: float | None = None

    for event in _events(cloudtrail, key_arn, since, until):
        event_id = str(event.get("EventId", ""))
        if event_id:
            if event_id in seen:
                continue
            seen.add(event_id)
        record = _record(event.get("CloudTrailEvent"))
        operation = str(event.get("EventName") or record.get("eventName") or NONE)
        context = _context(record)
        calls[(operation, context.get("cmek:category", NONE),
               context.get("cmek:tenant", NONE))] += 1
        principal = _principal(record)
        principals[principal] += 1
        error = record.get("errorCode")
        if error:
            refusals[(operation, str(error))] += 1
            refused_by[(operation, str(error))].add(principal[0])
        when = _time(event, record)
        if when is not None:
            first = when if first is None else min(first, when)
            last = when if last is None else max(last, when)

    return UsageReport(
        key_arn=key_arn, since=since, until=until, total=sum(calls.values()),
        calls=[
            {"operation": op, "category": cat, "tenant": tenant, "count": n}
            for (op, cat, tenant), n in sorted(calls.items(), key=lambda i: (-i[1], i[0]))
        ],
        refusals=[
            {"operation": op, "error_code": code, "count": n,
             "principals": sorted(refused_by[(op, code)])}
            for (op, code), n in sorted(refusals.items(), key=lambda i: (-i[1], i[0]))
        ],
        first_use=first, last_use=last,
        principals=[
            {"arn": arn, "account": account, "count": n}
            for (arn, account), n in sorted(principals.items(), key=lambda i: (-i[1], i[0]))
        ],
    )


def _events(
    cloudtrail: CloudTrailClient, key_arn: str, since: float, until: float
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    token: str | None = None
    start = dt.datetime.fromtimestamp(since, tz=dt.UTC)
    end = dt.datetime.fromtimestamp(until, tz=dt.UTC)
    for _ in range(MAX_PAGES):
        try:
            attrs: list[LookupAttributeTypeDef] = [
                {"AttributeKey": "ResourceName", "AttributeValue": key_arn}
            ]
            if token:
                page = cloudtrail.lookup_events(
                    LookupAttributes=attrs, StartTime=start, EndTime=end, MaxResults=50,
                    NextToken=token,
                )
            else:
                page = cloudtrail.lookup_events(
                    LookupAttributes=attrs, StartTime=start, EndTime=end, MaxResults=50,
                )
        except Exception as e:
            mapped = aws_error(
                e, step="LookupEvents",
                failed=lambda m, s, c: UsageLookupFailed(m, step=s, aws_code=c),
            )
            if mapped is None:
                raise
            raise mapped from None
        events.extend(dict(ev) for ev in page.get("Events", []))
        token = page.get("NextToken")
        if not token:
            return events
    raise UsageLookupFailed(
        f"LookupEvents failed: still paging after {MAX_PAGES} pages; use a shorter time span",
        step="LookupEvents",
    )


def _record(text: object) -> dict[str, Any]:
    if not isinstance(text, str):
        return {}
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _context(record: dict[str, Any]) -> dict[str, str]:
    params = record.get("requestParameters")
    if not isinstance(params, dict):
        return {}
    context = params.get("encryptionContext")
    if not isinstance(context, dict):
        return {}
    return {str(k): str(v) for k, v in context.items()}


def _principal(record: dict[str, Any]) -> tuple[str, str]:
    identity = record.get("userIdentity")
    if not isinstance(identity, dict):
        return NONE, NONE
    arn = identity.get("arn") or identity.get("invokedBy") or NONE
    account = identity.get("accountId") or _account_of(str(arn)) or NONE
    return str(arn), str(account)


def _account_of(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 and parts[4].isdigit() else None


def _time(event: dict[str, Any], record: dict[str, Any]) -> float | None:
    when = event.get("EventTime")
    if isinstance(when, dt.datetime):
        return when.timestamp()
    text = record.get("eventTime")
    if isinstance(text, str):
        try:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None
