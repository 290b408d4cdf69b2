"""Key create, run with the customer's credentials.

``create_key`` creates a symmetric, single-Region, KMS-generated key with the AWS default
key policy (the owner account keeps administering it), merges the provider's
least-privilege statements into that policy and, if asked, names it with an alias. A key
left half-made by a failing step is scheduled for deletion (7 days) before the error is
raised.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from cmek.customer.aws_errors import CustomerKeyError, aws_error, one_line
from cmek.customer.keys import KEY_SPEC, KEY_USAGE, ORIGIN
from cmek.customer.policy import merge, provider_statements
from cmek.errors import CmekError, InvalidInput

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient


DELETION_WINDOW_DAYS: Final = 7

_ALIAS = re.compile(r"^alias/[A-Za-z0-9/_-]{1,250}$")


class KeyCreateFailed(CustomerKeyError):
    code = "key_create_failed"


@dataclass(frozen=True)
class CreatedKey:
    key_arn: str
    key_id: str
    alias: str | None
    policy: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "key_arn": self.key_arn, "key_id": self.key_id, "alias": self.alias,
            "policy": self.policy,
        }


def normalize_alias(alias: str) -> str:
    """Accept ``name`` or ``alias/name``; refuse what KMS would refuse, before any call."""
    name = alias.strip()
    if not name.startswith("alias/"):
        name = f"alias/{name}"
    if not _ALIAS.match(name):
        raise InvalidInput(
            f"alias {alias[:100]!r} must be 1-250 characters of A-Z, a-z, 0-9, '/', '_' and "
            "'-' (optionally prefixed with 'alias/')"
        )
    if name.startswith("alias/aws/"):
        raise InvalidInput(f"alias {name!r}: names under alias/aws/ are reserved for AWS")
    return name


def create_key(
    kms: KMSClient, provider_account: str, *, alias: str | None = None,
    tenant: str | None = None, description: str | None = None,
) -> CreatedKey:
    """Create the customer's key and give the provider least-privilege use of it."""
    # bad input (account, tenant, alias) is refused before any call
    provider_statements(provider_account, tenant=tenant)
    alias_name = normalize_alias(alias) if alias is not None else None
    if description is None:
        description = f"cmek: customer-managed key used by provider account {provider_account}"
        if tenant:
            description += f" for tenant {tenant}"

    def fail(message: str, step: str, code: str | None) -> CustomerKeyError:
        return KeyCreateFailed(message, step=step, aws_code=code)

    try:
        created = kms.create_key(
            KeySpec=KEY_SPEC, KeyUsage=KEY_USAGE, Origin=ORIGIN, MultiRegion=False,
            Description=description,
        )
    except Exception as e:
        mapped = aws_error(e, step="CreateKey", failed=fail)
        if mapped is None:
            raise
        raise mapped from None
    meta = created["KeyMetadata"]
    key_id, key_arn = meta["KeyId"], meta["Arn"]

    step = "GetKeyPolicy"
    try:
        text = kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]
        existing = json.loads(text)
        if not isinstance(existing, dict):
            raise KeyCreateFailed(
                "GetKeyPolicy failed: the key policy is not a JSON object", step=step
            )
        step = "merge policy"
        policy = merge(existing, provider_account, tenant=tenant)
        step = "PutKeyPolicy"
        kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(policy))
        if alias_name is not None:
            step = "CreateAlias"
            kms.create_alias(AliasName=alias_name, TargetKeyId=key_id)
    except Exception as e:
        cause = _step_error(e, step, fail)
        raise type(cause)(
            f"{cause.message}; {_discard(kms, key_id, key_arn)}", step=cause.step,
            aws_code=cause.aws_code, key_arn=key_arn,
        ) from e
    return CreatedKey(key_arn, key_id, alias_name, policy)


def _step_error(
    e: Exception, step: str, fail: Callable[[str, str, str | None], CustomerKeyError],
) -> CustomerKeyError:
    if isinstance(e, CustomerKeyError):
        return e
    mapped = aws_error(e, step=step, failed=fail)
    if mapped is not None:
        return mapped
    if isinstance(e, CmekError):
        return KeyCreateFailed(f"{step} failed: {e.message}", step=step)
    if isinstance(e, ValueError):  # the key policy AWS returned is not JSON
        return KeyCreateFailed(f"{step} failed: {one_line(str(e))}", step=step)
    return KeyCreateFailed(f"{step} failed: {type(e).__name__}: {one_line(str(e))}", step=step)


def _discard(kms: KMSClient, key_id: str, key_arn: str) -> str:
    """Schedule a half-made key for deletion; say what happened, for the error message."""
    try:
        kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=DELETION_WINDOW_DAYS)
    except Exception as e:
        mapped = aws_error(e, step="ScheduleKeyDeletion",
                           failed=lambda m, s, c: KeyCreateFailed(m, step=s, aws_code=c))
        why = mapped.message if mapped is not None else f"{type(e).__name__}: {e}"
        return (f"the half-made key {key_arn} could NOT be scheduled for deletion "
                f"({one_line(why, 200)}): delete it by hand")
    return (f"the half-made key {key_arn} was scheduled for deletion in "
            f"{DELETION_WINDOW_DAYS} days")
