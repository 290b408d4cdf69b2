"""The key policy a customer attaches so the provider can use its KMS key, and nothing more.

- ``render`` prints the provider's two statements (or a complete policy for a new key);
- ``merge`` adds them to the policy a customer already has, keeping everything else.

Both are pure functions over JSON documents (no AWS calls); ``cmek.customer.lint`` checks
a policy a customer wrote. The provider statements are the reference ones (docs:
onboarding), embedded here so the package never reads files at run time; the tests
compare them with the reference file.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any, Final

from cmek.customer.policy_doc import json_type, quote, root_arn
from cmek.customer.requirements import (
    CALLS,
    CONTEXT_CONDITION_PREFIX,
    DESCRIBE_SID,
    TENANT_KEY,
    USAGE_SID,
)
from cmek.errors import CmekError
from cmek.ids import validate_tenant_id

# --------------------------------------------------------------------------- constants

POLICY_VERSION: Final = "2012-10-17"
POLICY_ID: Final = "cmek-policy"
ACCOUNT_PLACEHOLDER: Final = "<ACCOUNT_ID>"
GRANT_SID: Final = "Allow attachment of persistent resources"
OWNER_SID: Final = "Enable IAM User Permissions"
TENANT_CONDITION_KEY: Final = CONTEXT_CONDITION_PREFIX + TENANT_KEY
ACCOUNT_RE: Final = re.compile(r"[0-9]{12}")

# The reference provider statements, verbatim, with ACCOUNT_PLACEHOLDER for the provider.
REFERENCE_STATEMENTS: Final[tuple[Mapping[str, Any], ...]] = (
    {
        "Sid": USAGE_SID,
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::<ACCOUNT_ID>:root"},
        "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*", "kms:DescribeKey"],
        "Resource": "*",
    },
    {
        "Sid": GRANT_SID,
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::<ACCOUNT_ID>:root"},
        "Action": ["kms:CreateGrant", "kms:RevokeGrant"],
        "Resource": "*",
        "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}},
    },
)


# --------------------------------------------------------------------------- errors


class PolicyError(CmekError):
    """A document handed to ``merge`` is not a key policy we can safely edit."""

    code = "policy_invalid"


class InvalidAccount(PolicyError):
    """An account id that is not 12 digits: a typo here would grant a stranger's account."""

    code = "invalid_account"


# --------------------------------------------------------------------------- render, merge


def _is_account(value: object) -> bool:
    return isinstance(value, str) and ACCOUNT_RE.fullmatch(value) is not None


def validate_account(value: str) -> str:
    """Return ``value`` if it is an AWS account id (exactly 12 ASCII digits)."""
    if not _is_account(value):
        raise InvalidAccount(f"not an AWS account id (12 digits): {quote(value)}")
    return value


def validate_owner(owner_account: str, provider_account: str) -> str:
    owner = validate_account(owner_account)
    if owner == provider_account:
        raise InvalidAccount(
            "the key owner account must not be the provider account: the provider would "
            "administer the customer's key"
        )
    return owner


def _validate_tenant(tenant: object) -> None:
    validate_tenant_id(tenant)


def provider_statements(provider_account: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """The reference statements for this provider; with ``tenant`` the usage statement only
    works for that tenant's encryption context (cmek sends ``cmek:tenant`` on every call)."""
    account = validate_account(provider_account)
    if tenant is not None:
        _validate_tenant(tenant)
    statements: list[dict[str, Any]] = []
    for template in REFERENCE_STATEMENTS:
        statement = copy.deepcopy(dict(template))
        statement["Principal"] = {"AWS": root_arn(account)}  # keeps the key's position
        statements.append(statement)
    if tenant is not None:
        # A call without an encryption context would be refused by a tenant condition: it
        # moves to a statement of its own, and the condition guards the others.
        bare = [c.action for c in CALLS if not c.with_context]
        usage = statements[0]
        usage["Action"] = [a for a in usage["Action"] if a not in bare]
        usage["Condition"] = {"StringEquals": {TENANT_CONDITION_KEY: tenant}}
        statements.insert(1, {
            "Sid": DESCRIBE_SID, "Effect": "Allow", "Principal": {"AWS": root_arn(account)},
            "Action": bare[0] if len(bare) == 1 else bare, "Resource": "*",
        })
    return statements


def owner_statement(owner_account: str) -> dict[str, Any]:
    """AWS's default statement: the owner account administers the key through IAM, which is
    also what PutKeyPolicy's lockout safety check wants to see."""
    return owner_statement_unchecked(validate_account(owner_account))


def owner_statement_unchecked(account: str) -> dict[str, Any]:
    """``owner_statement`` for an account taken as given: lint shows it with a placeholder."""
    return {
        "Sid": OWNER_SID,
        "Effect": "Allow",
        "Principal": {"AWS": root_arn(account)},
        "Action": "kms:*",
        "Resource": "*",
    }


def render(
    provider_account: str, owner_account: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    """The provider statements as a policy document; with ``owner_account``, a complete
    policy for a new key (owner administration first, then the provider's use)."""
    statements = provider_statements(provider_account, tenant)
    if owner_account is not None:
        statements.insert(0, owner_statement(validate_owner(owner_account, provider_account)))
    return {"Version": POLICY_VERSION, "Id": POLICY_ID, "Statement": statements}


def merge(
    existing: dict[str, Any], provider_account: str, tenant: str | None = None
) -> dict[str, Any]:
    """Add or refresh the provider statements in a customer's policy, touching nothing else.

    A statement whose Sid is a provider Sid is replaced where it stands (later duplicates of
    that Sid are dropped), so re-running after a change of tenant or account is idempotent.
    The console's key-user statements reuse these Sids for the owner's own principals;
    such a statement (one naming a principal of an account that administers the key) is
    the customer's and is kept, and the provider statement goes in beside it under a Sid
    that names the provider account. ``existing`` is not modified.
    """
    if not isinstance(existing, Mapping):
        raise PolicyError(f"a key policy is a JSON object, not {json_type(existing)}")
    if "Statement" not in existing:
        raise PolicyError("the key policy has no Statement element")
    raw = existing["Statement"]
    statements: list[Any] = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(statements, list):
        raise PolicyError(
            f"the key policy's Statement is {json_type(raw)}, not an object or a list"
        )
    for index, statement in enumerate(statements):
        if not isinstance(statement, Mapping):
            raise PolicyError(f"statement #{index} is {json_type(statement)}, not an object")
    provider = provider_statements(provider_account, tenant)

    merged: list[Any] = copy.deepcopy(statements)
    owners = _admin_accounts(merged) - {provider_account}
    if tenant is None:  # the tenant-only DescribeKey statement of an earlier merge goes
        merged = [s for s in merged if not (s.get("Sid", "").startswith(DESCRIBE_SID)
                                            and not _principal_accounts(s) & owners)]
    for new in provider:
        if any(s.get("Sid") == new["Sid"] and _principal_accounts(s) & owners for s in merged):
            new = {**new, "Sid": f"{new['Sid']} (provider {provider_account})"}
        positions = [i for i, s in enumerate(merged)
                     if s.get("Sid") == new["Sid"] and not _principal_accounts(s) & owners]
        if not positions:
            merged.append(new)
            continue
        merged[positions[0]] = new
        for i in reversed(positions[1:]):
            del merged[i]
    result = copy.deepcopy(dict(existing))
    result["Statement"] = merged
    return result


def _principal_accounts(statement: Mapping[str, Any]) -> set[str]:
    """The 12-digit accounts of the principals a statement names."""
    principal = statement.get("Principal")
    values = principal.get("AWS") if isinstance(principal, Mapping) else principal
    names = [values] if isinstance(values, str) else values if isinstance(values, list) else []
    out = set()
    for name in names:
        if isinstance(name, str):
            if name.isdigit() and len(name) == 12:
                out.add(name)
            elif name.startswith(("arn:aws:iam::", "arn:aws:sts::")):
                out.add(name.split(":")[4])
    return out


def _admin_accounts(statements: list[Any]) -> set[str]:
    """Accounts allowed kms:* or kms:PutKeyPolicy: the key's owners."""
    out: set[str] = set()
    for statement in statements:
        actions = statement.get("Action")
        actions = [actions] if isinstance(actions, str) else actions
        if statement.get("Effect") == "Allow" and isinstance(actions, list) and any(
            isinstance(a, str) and a.lower() in ("*", "kms:*", "kms:putkeypolicy")
            for a in actions
        ):
            out |= _principal_accounts(statement)
    return out
