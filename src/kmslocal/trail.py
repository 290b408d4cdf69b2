"""The usage log: a CloudTrail-shaped record of every call, and the key events it feeds.

Each record is stored once per account that may see it: the caller's account always,
and the owner account of every key the call named, so a customer sees every use of
its keys, cross-account calls included. State-changing calls and scheduled deletion
and rotation are also published as EventBridge events about the owner's keys.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kmslocal.clock import iso
from kmslocal.config import Config, account_of
from kmslocal.exceptions import KMSError
from kmslocal.params import Params
from kmslocal.storage import KeyRow, Storage

if TYPE_CHECKING:
    from kmslocal.models import Caller

# Parameters that carry secrets or bulk data never reach the log.
_SECRET_PARAMS = frozenset({"Plaintext", "CiphertextBlob", "GrantTokens", "GrantToken"})
_LOOKUP_COLUMNS = {
    "EventName": "event_name",
    "ResourceName": "resource_name",
    "Username": "username",
    "AccessKeyId": "access_key_id",
    "EventId": "event_id",
    "ReadOnly": "read_only",
}
_UNSUPPORTED_LOOKUPS = ("EventSource", "ResourceType")

# Publishes one event (account, its resources, the event as JSON) to the targets that
# want it, inside the transaction of the call or scheduled work that caused it.
Publish = Callable[[str, Sequence[str], str], None]


def no_events(account: str, resources: Sequence[str], event: str) -> None:
    """Publish nowhere."""


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _request_parameters(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {_camel(k): v for k, v in raw.items() if k not in _SECRET_PARAMS}


def _response_elements(result: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if result is None:
        return None
    kept = {
        _camel(k): v for k, v in result.items()
        if k not in ("Plaintext", "CiphertextBlob", "GrantToken")
    }
    return kept or None


class Trail:
    def __init__(self, storage: Storage, config: Config, publish: Publish) -> None:
        self.storage = storage
        self.config = config
        self.publish = publish

    def record_call(
        self, caller: Caller, operation: str, request_id: str, now: float,
        raw: Mapping[str, Any], result: dict[str, Any] | None, err: KMSError | None,
        keys: list[KeyRow], read_only: bool, *, emit_event: bool,
    ) -> None:
        unique = list({k.key_id: k for k in keys}.values())
        kind = "IAMUser" if ":user/" in caller.arn else "AssumedRole"
        username = caller.arn.rsplit("/", 1)[-1]
        record: dict[str, Any] = {
            "eventVersion": "1.08",
            "userIdentity": {
                "type": kind, "principalId": caller.access_key_id, "arn": caller.arn,
                "accountId": caller.account, "accessKeyId": caller.access_key_id,
                "userName": username,
            },
            "eventTime": iso(now),
            "eventSource": "kms.amazonaws.com",
            "eventName": operation,
            "awsRegion": self.config.region,
            "sourceIPAddress": caller.source_ip,
            "userAgent": caller.user_agent,
            "requestParameters": _request_parameters(raw),
            "responseElements": _response_elements(result),
            "requestID": request_id,
            "eventID": str(uuid.uuid4()),
            "readOnly": read_only,
            "resources": [
                {"accountId": k.account, "type": "AWS::KMS::Key", "ARN": k.arn} for k in unique
            ],
            "eventType": "AwsApiCall",
            "managementEvent": True,
            "eventCategory": "Management",
        }
        if err is not None:
            record["errorCode"] = err.code
            record["errorMessage"] = err.message
        resource = unique[0].arn if unique else None
        accounts = [caller.account] + [k.account for k in unique]
        for account in dict.fromkeys(accounts):
            copy = {**record, "recipientAccountId": account}
            if account != caller.account:
                copy["sharedEventID"] = record["eventID"]
            self._append(account, copy, now, operation, resource, caller.access_key_id,
                         username, read_only)
        if emit_event and unique:
            owner = unique[0].account
            self._enqueue(owner, "AWS API Call via CloudTrail", now, [unique[0].arn],
                          {**record, "recipientAccountId": owner})

    def record_service_event(
        self, key: KeyRow, operation: str, when: float, detail_type: str
    ) -> None:
        """Work KMS does on its own (deletion, automatic rotation), seen by the owner."""
        record: dict[str, Any] = {
            "eventVersion": "1.08",
            "userIdentity": {"accountId": key.account, "invokedBy": "kms.amazonaws.com"},
            "eventTime": iso(when),
            "eventSource": "kms.amazonaws.com",
            "eventName": operation,
            "awsRegion": self.config.region,
            "sourceIPAddress": "kms.amazonaws.com",
            "userAgent": "kms.amazonaws.com",
            "requestParameters": None,
            "responseElements": None,
            "requestID": str(uuid.uuid4()),
            "eventID": str(uuid.uuid4()),
            "readOnly": False,
            "resources": [{"accountId": key.account, "type": "AWS::KMS::Key", "ARN": key.arn}],
            "eventType": "AwsServiceEvent",
            "managementEvent": True,
            "recipientAccountId": key.account,
            "eventCategory": "Management",
        }
        self._append(key.account, record, when, operation, key.arn, None, None, False)
        self._enqueue(key.account, detail_type, when, [key.arn], {"key-id": key.key_id})

    def _append(
        self, account: str, record: dict[str, Any], now: float, operation: str,
        resource: str | None, access_key_id: str | None, username: str | None, read_only: bool,
    ) -> None:
        self.storage.append_trail(
            account, record["eventID"], now, operation, resource, access_key_id, username,
            read_only, json.dumps(record, separators=(",", ":")),
        )

    def _enqueue(
        self, account: str, detail_type: str, when: float, resources: list[str],
        detail: dict[str, Any],
    ) -> None:
        event = json.dumps({
            "version": "0", "id": str(uuid.uuid4()), "detail-type": detail_type,
            "source": "aws.kms", "account": account, "time": iso(when),
            "region": self.config.region, "resources": resources, "detail": detail,
        })
        self.publish(account, resources, event)

    # --- CloudTrail LookupEvents ----------------------------------------------------
    def lookup(self, caller_arn: str, raw: Mapping[str, Any], now: float) -> dict[str, Any]:
        p = Params(raw)
        attrs = p.objects("LookupAttributes")
        if len(attrs) > 1:
            raise KMSError("InvalidLookupAttributesException",
                           "You cannot specify more than one lookup attribute.")
        attribute: tuple[str, str] | None = None
        if attrs:
            name, value = attrs[0].get("AttributeKey"), attrs[0].get("AttributeValue")
            if not isinstance(value, str) or not value:
                raise KMSError("InvalidLookupAttributesException", "AttributeValue is required.")
            if name in _UNSUPPORTED_LOOKUPS:
                if name == "EventSource" and value != "kms.amazonaws.com":
                    return {"Events": []}
            elif name in _LOOKUP_COLUMNS:
                column = _LOOKUP_COLUMNS[name]
                if column == "read_only":
                    value = "1" if value.lower() == "true" else "0"
                attribute = (column, value)
            else:
                raise KMSError("InvalidLookupAttributesException",
                               f"Unsupported lookup attribute {name}.")
        start = raw.get("StartTime", now - 90 * 86400)
        end = raw.get("EndTime", now)
        if not isinstance(start, int | float) or not isinstance(end, int | float):
            raise KMSError("InvalidTimeRangeException", "StartTime and EndTime must be times.")
        if start > end:
            raise KMSError("InvalidTimeRangeException",
                           "Start time must be equal to or earlier than end time.")
        limit = raw.get("MaxResults", 50)
        if not isinstance(limit, int) or not 1 <= limit <= 50:
            raise KMSError("InvalidMaxResultsException", "MaxResults must be between 1 and 50.")
        before: int | None = None
        token = raw.get("NextToken")
        if token is not None:
            try:
                before = int(base64.urlsafe_b64decode(str(token).encode()).decode())
            except (ValueError, UnicodeDecodeError):
                raise KMSError("InvalidNextTokenException", "Invalid NextToken.") from None
        rows = self.storage.lookup_trail(
            account_of(caller_arn), float(start), float(end), attribute, before, limit + 1
        )
        out: dict[str, Any] = {"Events": [self._event(r) for r in rows[:limit]]}
        if len(rows) > limit:
            out["NextToken"] = base64.urlsafe_b64encode(str(rows[limit - 1][0]).encode()).decode()
        return out

    @staticmethod
    def _event(row: tuple[Any, ...]) -> dict[str, Any]:
        _, event_id, event_time, event_name, resource, access_key, username, read_only, rec = row
        event: dict[str, Any] = {
            "EventId": event_id, "EventName": event_name, "ReadOnly": str(bool(read_only)).lower(),
            "EventTime": event_time, "EventSource": "kms.amazonaws.com",
            "Resources": [{"ResourceType": "AWS::KMS::Key", "ResourceName": resource}]
            if resource else [],
            "CloudTrailEvent": rec,
        }
        if access_key:
            event["AccessKeyId"] = access_key
        if username:
            event["Username"] = username
        return event
