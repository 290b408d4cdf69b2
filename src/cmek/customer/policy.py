"""The key policy a customer attaches so the provider can use its KMS key, and nothing more.

Three tools, all pure functions over JSON documents (no AWS calls):

- ``render`` prints the provider's two statements (or a complete policy for a new key);
- ``merge`` adds them to the policy a customer already has, keeping everything else;
- ``lint`` reads a policy a customer wrote or edited and says, with stable codes, what
  would break the integration (a missing action), what gives the provider too much (an
  administrative action, a grant usable for anything), and what risks locking the owner
  out of its own key.

The provider statements are the reference ones (docs: onboarding), embedded here so the
package never reads files at run time; the tests compare them with the reference file.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from cmek.customer.requirements import (
    CALLS,
    CONTEXT_CONDITION_PREFIX,
    CONTEXT_KEYS,
    DESCRIBE_SID,
    REQUIRED_ACTIONS,
    TENANT_KEY,
    USAGE_SID,
    Call,
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

GRANT_ACTIONS: Final = ("kms:CreateGrant", "kms:RevokeGrant")

# Actions that let their holder change who controls the key, or destroy or disable it.
ADMIN_ACTIONS: Final = (
    "kms:PutKeyPolicy", "kms:ScheduleKeyDeletion", "kms:DisableKey", "kms:EnableKey",
    "kms:CancelKeyDeletion", "kms:DeleteAlias", "kms:CreateAlias", "kms:UpdateAlias",
    "kms:TagResource", "kms:UntagResource", "kms:UpdateKeyDescription",
    "kms:DisableKeyRotation", "kms:EnableKeyRotation", "kms:RotateKeyOnDemand",
    "kms:ImportKeyMaterial", "kms:DeleteImportedKeyMaterial", "kms:ReplicateKey",
    "kms:UpdatePrimaryRegion", "kms:GetKeyPolicy", "kms:CreateKey",
)

# Every KMS permission, so that a wildcard pattern can be expanded into what it grants.
KMS_ACTIONS: Final = (
    "kms:CancelKeyDeletion", "kms:ConnectCustomKeyStore", "kms:CreateAlias",
    "kms:CreateCustomKeyStore", "kms:CreateGrant", "kms:CreateKey", "kms:Decrypt",
    "kms:DeleteAlias", "kms:DeleteCustomKeyStore", "kms:DeleteImportedKeyMaterial",
    "kms:DeriveSharedSecret", "kms:DescribeCustomKeyStores", "kms:DescribeKey",
    "kms:DisableKey", "kms:DisableKeyRotation", "kms:DisconnectCustomKeyStore",
    "kms:EnableKey", "kms:EnableKeyRotation", "kms:Encrypt", "kms:GenerateDataKey",
    "kms:GenerateDataKeyPair", "kms:GenerateDataKeyPairWithoutPlaintext",
    "kms:GenerateDataKeyWithoutPlaintext", "kms:GenerateMac", "kms:GenerateRandom",
    "kms:GetKeyPolicy", "kms:GetKeyRotationStatus", "kms:GetParametersForImport",
    "kms:GetPublicKey", "kms:ImportKeyMaterial", "kms:ListAliases", "kms:ListGrants",
    "kms:ListKeyPolicies", "kms:ListKeyRotations", "kms:ListKeys", "kms:ListResourceTags",
    "kms:ListRetirableGrants", "kms:PutKeyPolicy", "kms:ReEncryptFrom", "kms:ReEncryptTo",
    "kms:ReplicateKey", "kms:RetireGrant", "kms:RevokeGrant", "kms:RotateKeyOnDemand",
    "kms:ScheduleKeyDeletion", "kms:Sign", "kms:SynchronizeMultiRegionKey",
    "kms:TagResource", "kms:UntagResource", "kms:UpdateAlias", "kms:UpdateCustomKeyStore",
    "kms:UpdateKeyDescription", "kms:UpdatePrimaryRegion", "kms:Verify", "kms:VerifyMac",
)

# What the reference grants the provider: GenerateDataKey* covers its three variants.
_PROVIDER_ALLOWED: Final = frozenset(
    a.lower()
    for a in (
        *REQUIRED_ACTIONS, *GRANT_ACTIONS, "kms:GenerateDataKeyWithoutPlaintext",
        "kms:GenerateDataKeyPair", "kms:GenerateDataKeyPairWithoutPlaintext",
    )
)
_ADMIN_LOWER: Final = frozenset(a.lower() for a in ADMIN_ACTIONS)
_USAGE_ACTION_SETS: Final = (
    frozenset(a.lower() for a in REFERENCE_STATEMENTS[0]["Action"]),
    frozenset(a.lower() for a in REQUIRED_ACTIONS),
)
_REFERENCE_SIDS: Final = frozenset(
    {*(str(s["Sid"]) for s in REFERENCE_STATEMENTS), DESCRIBE_SID}
)

CONDITION_OPERATORS: Final = (
    "StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
    "StringLike", "StringNotLike", "NumericEquals", "NumericNotEquals", "NumericLessThan",
    "NumericLessThanEquals", "NumericGreaterThan", "NumericGreaterThanEquals", "DateEquals",
    "DateNotEquals", "DateLessThan", "DateLessThanEquals", "DateGreaterThan",
    "DateGreaterThanEquals", "Bool", "BinaryEquals", "IpAddress", "NotIpAddress", "ArnEquals",
    "ArnLike", "ArnNotEquals", "ArnNotLike", "Null",
)
_OPERATORS_LOWER: Final = frozenset(o.lower() for o in CONDITION_OPERATORS)
_POSITIVE_MATCH: Final = frozenset(
    {"stringequals", "stringequalsignorecase", "stringlike", "arnequals", "arnlike"}
)
_NEGATIVE_MATCH: Final = frozenset(
    {"stringnotequals", "stringnotequalsignorecase", "stringnotlike", "arnnotequals", "arnnotlike"}
)
_WILDCARD_OPERATORS: Final = frozenset(
    {"stringlike", "stringnotlike", "arnequals", "arnlike", "arnnotequals", "arnnotlike"}
)
_ACCOUNT_KEYS: Final = frozenset({"kms:calleraccount", "aws:principalaccount"})
_ORG_KEYS: Final = frozenset({"aws:principalorgid", "aws:principalorgpaths"})
# Condition keys that narrow a Principal "*" down to known callers.
_RESTRICTING_KEYS: Final = frozenset(
    {"kms:calleraccount", "aws:principalaccount", "aws:principalarn", "aws:principalorgid",
     "aws:principalorgpaths", "aws:sourceaccount", "kms:viaservice"}
)

_VERSIONS: Final = frozenset({"2012-10-17", "2008-10-17"})
_TOP_LEVEL_KEYS: Final = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS: Final = frozenset(
    {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
     "NotResource", "Condition"}
)
_PRINCIPAL_TYPES: Final = frozenset({"AWS", "Service", "Federated", "CanonicalUser"})
_ACCOUNT_RE: Final = re.compile(r"[0-9]{12}")
_IAM_PRINCIPAL_RE: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:(?:iam::([0-9]{12}):(root|(?:user|role)/[^*?]+)"
    r"|sts::([0-9]{12}):assumed-role/[^*?]+)",
    re.DOTALL,
)
_ACTION_RE: Final = re.compile(r"\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+")
_MAX_SHOWN = 80  # characters of a customer-supplied value quoted in a message


# --------------------------------------------------------------------------- errors


class PolicyError(CmekError):
    """A document handed to ``merge`` is not a key policy we can safely edit."""

    code = "policy_invalid"


class InvalidAccount(PolicyError):
    """An account id that is not 12 digits: a typo here would grant a stranger's account."""

    code = "invalid_account"


# --------------------------------------------------------------------------- render, merge


def _is_account(value: object) -> bool:
    return isinstance(value, str) and _ACCOUNT_RE.fullmatch(value) is not None


def validate_account(value: str) -> str:
    """Return ``value`` if it is an AWS account id (exactly 12 ASCII digits)."""
    if not _is_account(value):
        raise InvalidAccount(f"not an AWS account id (12 digits): {_quote(value)}")
    return value


def _validate_owner(owner_account: str, provider_account: str) -> str:
    owner = validate_account(owner_account)
    if owner == provider_account:
        raise InvalidAccount(
            "the key owner account must not be the provider account: the provider would "
            "administer the customer's key"
        )
    return owner


def _validate_tenant(tenant: object) -> None:
    validate_tenant_id(tenant)


def _root(account: str) -> str:
    return f"arn:aws:iam::{account}:root"


def provider_statements(provider_account: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """The reference statements for this provider; with ``tenant`` the usage statement only
    works for that tenant's encryption context (cmek sends ``cmek:tenant`` on every call)."""
    account = validate_account(provider_account)
    if tenant is not None:
        _validate_tenant(tenant)
    statements: list[dict[str, Any]] = []
    for template in REFERENCE_STATEMENTS:
        statement = copy.deepcopy(dict(template))
        statement["Principal"] = {"AWS": _root(account)}  # keeps the key's position
        statements.append(statement)
    if tenant is not None:
        # A call without an encryption context would be refused by a tenant condition: it
        # moves to a statement of its own, and the condition guards the others.
        bare = [c.action for c in CALLS if not c.with_context]
        usage = statements[0]
        usage["Action"] = [a for a in usage["Action"] if a not in bare]
        usage["Condition"] = {"StringEquals": {TENANT_CONDITION_KEY: tenant}}
        statements.insert(1, {
            "Sid": DESCRIBE_SID, "Effect": "Allow", "Principal": {"AWS": _root(account)},
            "Action": bare[0] if len(bare) == 1 else bare, "Resource": "*",
        })
    return statements


def owner_statement(owner_account: str) -> dict[str, Any]:
    """AWS's default statement: the owner account administers the key through IAM, which is
    also what PutKeyPolicy's lockout safety check wants to see."""
    return _owner_statement(validate_account(owner_account))


def _owner_statement(account: str) -> dict[str, Any]:
    return {
        "Sid": OWNER_SID,
        "Effect": "Allow",
        "Principal": {"AWS": _root(account)},
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
        statements.insert(0, owner_statement(_validate_owner(owner_account, provider_account)))
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
        raise PolicyError(f"a key policy is a JSON object, not {_json_type(existing)}")
    if "Statement" not in existing:
        raise PolicyError("the key policy has no Statement element")
    raw = existing["Statement"]
    statements: list[Any] = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(statements, list):
        raise PolicyError(
            f"the key policy's Statement is {_json_type(raw)}, not an object or a list"
        )
    for index, statement in enumerate(statements):
        if not isinstance(statement, Mapping):
            raise PolicyError(f"statement #{index} is {_json_type(statement)}, not an object")
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


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """One problem in a key policy: a stable code, where it is, and the one-line fix."""

    code: str
    severity: Literal["error", "warning"]
    statement: str  # the Sid, "#<index>" (0-based) without one, "-" for the whole policy
    message: str
    fix: str

    def to_json(self) -> dict[str, str]:
        return {
            "code": self.code, "severity": self.severity, "statement": self.statement,
            "message": self.message, "fix": self.fix,
        }


@dataclass(frozen=True)
class LintResult:
    """All findings, ordered by statement then code, and whether the text was a policy."""

    findings: list[Finding]
    is_policy: bool

    @property
    def exit_code(self) -> int:
        """2: not a policy at all; 1: errors; 0: usable (warnings allowed)."""
        if not self.is_policy:
            return 2
        return 1 if any(f.severity == "error" for f in self.findings) else 0


# --------------------------------------------------------------------------- parsing model


@functools.lru_cache(maxsize=4096)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    """IAM wildcards are ``*`` and ``?`` only; action names compare case-insensitively."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def _wildcard_match(pattern: str, value: str) -> bool:
    return _wildcard_regex(pattern).fullmatch(value) is not None


@dataclass(frozen=True)
class _Principals:
    wildcard: bool = False  # "*" or {"AWS": "*"}
    accounts: frozenset[str] = frozenset()  # named by root ARN, bare id, or a principal in it

    def names(self, account: str) -> bool:
        return account in self.accounts


@dataclass(frozen=True)
class _Condition:
    operator: str  # as written
    base: str | None  # lower-case base operator, None when unknown
    set_operator: str | None  # "foranyvalue", "forallvalues" or None
    if_exists: bool
    key: str  # lower-case
    values: tuple[str, ...]


@dataclass(frozen=True)
class _Statement:
    index: int
    label: str
    sid: str | None
    effect: str
    principals: _Principals
    not_principal: bool
    actions: tuple[str, ...]
    not_action: bool
    conditions: tuple[_Condition, ...]
    has_condition: bool

    def covers(self, action: str) -> bool:
        """Whether the statement's Action (or NotAction) element includes ``action``."""
        hit = any(_wildcard_match(pattern, action) for pattern in self.actions)
        return hit != self.not_action

    def covered(self, actions: Iterable[str]) -> list[str]:
        return [a for a in actions if self.covers(a)]

    def applies_to(self, account: str) -> bool:
        """Whether a caller from ``account`` can be matched: by name, by a wildcard (or a
        NotPrincipal that does not list it), unless a condition pins callers elsewhere."""
        if self.not_principal:
            if self.principals.wildcard or self.principals.names(account):
                return False
            by_wildcard = True
        elif self.principals.names(account):
            by_wildcard = False
        elif self.principals.wildcard:
            by_wildcard = True
        else:
            return False
        return not _conditions_exclude(self.conditions, account, by_wildcard=by_wildcard)

    def administers_for(self, account: str) -> bool:
        return self.effect == "Allow" and self.covers("kms:PutKeyPolicy") and (
            self.applies_to(account)
        )


def _value_names_account(base: str, value: str, account: str) -> bool:
    if base in _WILDCARD_OPERATORS:
        return _wildcard_match(value, account)
    return value == account


def _arn_in_account(base: str, value: str, account: str) -> bool:
    parts = value.split(":", 5)
    if len(parts) < 6:  # "*" and the like: cannot rule the account out
        return base in _WILDCARD_OPERATORS and _wildcard_match(value, _root(account))
    if base in _WILDCARD_OPERATORS:
        return _wildcard_match(parts[4], account)
    return parts[4] == account


def _conditions_exclude(
    conditions: Iterable[_Condition], account: str, *, by_wildcard: bool
) -> bool:
    """True when some condition can never hold for a caller from ``account``.

    Only conditions decidable from the account alone count: kms:CallerAccount,
    aws:PrincipalAccount and aws:PrincipalArn. An organization condition on a wildcard
    principal counts too: a SaaS provider's account is not in its customer's organization.
    """
    for c in conditions:
        if c.base is None or c.set_operator == "forallvalues":
            continue
        if c.key in _ACCOUNT_KEYS:
            hit = any(_value_names_account(c.base, v, account) for v in c.values)
            if (c.base in _POSITIVE_MATCH and not hit) or (c.base in _NEGATIVE_MATCH and hit):
                return True
        elif c.key == "aws:principalarn" and c.base in _POSITIVE_MATCH:
            if not any(_arn_in_account(c.base, v, account) for v in c.values):
                return True
        elif (
            by_wildcard and c.key in _ORG_KEYS and c.base in _POSITIVE_MATCH and not c.if_exists
        ):
            return True
    return False


def _string_match(base: str, pattern: str, value: str) -> bool:
    if base in ("stringequalsignorecase", "stringnotequalsignorecase"):
        return pattern.lower() == value.lower()
    if base in ("stringlike", "stringnotlike"):
        parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
        return re.fullmatch("".join(parts), value, re.DOTALL) is not None
    return pattern == value


def _refusal(conditions: Iterable[_Condition], required: Call,
             tenant: str | None) -> str | None:
    """Why these conditions never hold for the provider's ``required`` call, or None when
    they may. Decided only on encryption-context keys: the context of each call is known
    (cmek.customer.requirements); other keys are left to KMS."""
    prefix = CONTEXT_CONDITION_PREFIX.lower()
    for c in conditions:
        if (c.base is None or c.set_operator == "forallvalues"
                or not c.key.startswith(prefix)):
            continue
        name = c.key[len(prefix):]
        sent = required.with_context and name in {k.lower() for k in CONTEXT_KEYS}
        positive = c.base in _POSITIVE_MATCH
        if not sent:
            if positive and not c.if_exists:
                what = ("carries no encryption context" if not required.with_context
                        else f"carries no {name}")
                return f"{c.operator} on {c.key} ({required.action} {what})"
            continue
        if name != TENANT_KEY:  # category and epoch take every value the provider uses
            if positive or c.base in _NEGATIVE_MATCH:
                return (f"{c.operator} on {c.key} limits {name}; the provider uses every "
                        f"{name}")
            continue
        if tenant is None or not (positive or c.base in _NEGATIVE_MATCH):
            continue
        hit = any(_string_match(c.base, v, tenant) for v in c.values)
        if positive and not hit:
            return (f"{c.operator} on {c.key} allows "
                    f"{', '.join(_quote(v) for v in c.values)}, not tenant {_quote(tenant)}")
        if not positive and hit:
            return f"{c.operator} on {c.key} refuses tenant {_quote(tenant)}"
    return None


def _restricts_wildcard(conditions: Iterable[_Condition]) -> bool:
    """A Principal "*" is tolerable only with a positive, always-evaluated condition on who
    calls (account, ARN, organization) or through which service."""
    return any(
        c.base in _POSITIVE_MATCH
        and not c.if_exists
        and c.set_operator != "forallvalues"
        and c.key in _RESTRICTING_KEYS
        and c.values
        and not any(set(v) <= {"*"} for v in c.values)
        for c in conditions
    )


def _grant_is_for_aws_resource(conditions: Iterable[_Condition]) -> bool:
    return any(
        c.base == "bool"
        and c.set_operator is None
        and not c.if_exists
        and c.key == "kms:grantisforawsresource"
        and c.values
        and all(v.lower() == "true" for v in c.values)
        for c in conditions
    )


# --------------------------------------------------------------------------- lint

_Severity = Literal["error", "warning"]


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _quote(value: object) -> str:
    """A customer-supplied value, JSON-quoted, one line, bounded in length."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _parse_operator(name: str) -> tuple[str | None, str | None, bool]:
    """Split ``ForAnyValue:StringLikeIfExists`` into (base, set operator, if-exists); the
    base is None when IAM does not know the operator."""
    rest = name
    set_operator: str | None = None
    for prefix in ("foranyvalue:", "forallvalues:"):
        if rest.lower().startswith(prefix):
            set_operator = prefix[:-1]
            rest = rest[len(prefix):]
            break
    if_exists = rest.lower().endswith("ifexists")
    base = (rest[: -len("ifexists")] if if_exists else rest).lower()
    if base not in _OPERATORS_LOWER or (base == "null" and if_exists):
        return None, set_operator, if_exists
    return base, set_operator, if_exists


def _condition_values(raw: Any) -> tuple[str, ...] | None:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        return None
    values: list[str] = []
    for item in items:
        if isinstance(item, bool):
            values.append("true" if item else "false")
        elif isinstance(item, str | int | float):
            values.append(str(item))
        else:
            return None
    return tuple(values)


class _Linter:
    """One pass over one document; collects findings keyed by statement index."""

    def __init__(self, document: dict[str, Any], provider: str, owner: str | None,
                 tenant: str | None) -> None:
        self.document = document
        self.provider = provider
        self.owner = owner
        self.tenant = tenant
        self.found: list[tuple[int, Finding]] = []
        self.owners: set[str] = set()

    def add(
        self, index: int, label: str, code: str, severity: _Severity, message: str, fix: str
    ) -> None:
        self.found.append((index, Finding(
            code, severity, _one_line(label), _one_line(message), _one_line(fix))))

    def schema(self, index: int, label: str, message: str, fix: str) -> None:
        self.add(index, label, "schema_invalid", "error", message, fix)

    # ---- structure

    def run(self) -> list[Finding]:
        statements = self.check_document()
        parsed = [self.parse_statement(i, raw) for i, raw in enumerate(statements)]
        usable = [s for s in parsed if s is not None]
        self.owners = self.owner_accounts(usable)
        for statement in usable:
            self.check_statement(statement)
        self.check_provider_actions(usable)
        self.check_owner(usable)
        self.found.sort(key=lambda item: (item[0], item[1].code))  # stable: keeps emit order
        return [finding for _, finding in self.found]

    def check_document(self) -> list[Any]:
        doc = self.document
        for key in sorted(set(doc) - _TOP_LEVEL_KEYS):
            self.schema(-1, "-", f"unknown top-level element {_quote(key)}",
                        "Keep only Version, Id and Statement at the top level.")
        if "Version" in doc and doc["Version"] not in _VERSIONS:
            self.schema(-1, "-", f"Version {_quote(doc['Version'])} is not an IAM policy version",
                        f'Set "Version": "{POLICY_VERSION}".')
        if "Id" in doc and not isinstance(doc["Id"], str):
            self.schema(-1, "-", f"Id is {_json_type(doc['Id'])}, not a string",
                        f'Set "Id" to a string such as "{POLICY_ID}", or remove it.')
        raw = doc["Statement"]
        if isinstance(raw, dict):
            return [raw]
        if not isinstance(raw, list):
            self.schema(-1, "-", f"Statement is {_json_type(raw)}, not an array of statements",
                        'Make "Statement" an array of statement objects.')
            return []
        if not raw:
            self.schema(-1, "-", "Statement is empty; KMS rejects a policy without statements",
                        "Add the owner's and the provider's statements.")
        return raw

    def parse_statement(self, index: int, raw: Any) -> _Statement | None:
        """Report every schema problem; return a model only if Effect, Principal and Action
        are usable, so that the semantic checks never reason about half a statement."""
        label = f"#{index}"
        if not isinstance(raw, dict):
            self.schema(index, label, f"statement is {_json_type(raw)}, not an object",
                        "Make every entry of Statement a JSON object.")
            return None
        sid = raw.get("Sid")
        if isinstance(sid, str) and sid:
            label = sid
        elif "Sid" in raw and not isinstance(sid, str):
            self.schema(index, label, f"Sid is {_json_type(sid)}, not a string",
                        "Make Sid a string, or remove it.")
        for key in sorted(set(raw) - _STATEMENT_KEYS):
            self.schema(index, label, f"unknown statement element {_quote(key)}",
                        "Remove it; a statement has Sid, Effect, (Not)Principal, (Not)Action, "
                        "(Not)Resource and Condition.")
        effect = raw.get("Effect")
        if effect not in ("Allow", "Deny"):
            self.schema(index, label, f"Effect is {_quote(effect)}, not \"Allow\" or \"Deny\"",
                        'Set "Effect" to "Allow" or "Deny" (case matters).')
        principals = self.parse_principal(index, label, raw)
        actions = self.parse_actions(index, label, raw)
        self.check_resource(index, label, raw)
        conditions = self.parse_conditions(index, label, raw.get("Condition"))
        if effect not in ("Allow", "Deny") or principals is None or actions is None:
            return None
        return _Statement(
            index=index, label=label, sid=sid if isinstance(sid, str) else None,
            effect=str(effect), principals=principals[0], not_principal=principals[1],
            actions=actions[0], not_action=actions[1], conditions=conditions,
            has_condition="Condition" in raw,
        )

    def exactly_one(
        self, index: int, label: str, raw: dict[str, Any], element: str
    ) -> tuple[Any, bool] | None:
        negative = "Not" + element
        if (element in raw) == (negative in raw):
            which = "both" if element in raw else "neither"
            self.schema(index, label, f"statement has {which} {element} and {negative}",
                        f"Use exactly one of {element} or {negative}.")
            return None
        return (raw[negative], True) if negative in raw else (raw[element], False)

    def parse_principal(
        self, index: int, label: str, raw: dict[str, Any]
    ) -> tuple[_Principals, bool] | None:
        found = self.exactly_one(index, label, raw, "Principal")
        if found is None:
            return None
        value, negated = found
        element = "NotPrincipal" if negated else "Principal"
        fix = f'Write {element} as {{"AWS": "arn:aws:iam::<account>:root"}} or a list of ARNs.'
        if value == "*":
            return _Principals(wildcard=True), negated
        if not isinstance(value, dict) or not value:
            self.schema(index, label, f"{element} is {_quote(value)}, not \"*\" or an object",
                        fix)
            return None
        wildcard = False
        accounts: set[str] = set()
        valid = True
        for kind, entries in value.items():
            items = entries if isinstance(entries, list) else [entries]
            if kind not in _PRINCIPAL_TYPES or not items:
                self.schema(index, label, f"{element} has an invalid entry {_quote(kind)}", fix)
                valid = False
                continue
            for entry in items:
                if not isinstance(entry, str) or not entry:
                    self.schema(index, label, f"{element} {kind} entry {_quote(entry)} is not a "
                                "string", fix)
                    valid = False
                elif kind != "AWS":
                    continue  # a service or federated principal is never an account
                elif entry == "*":
                    wildcard = True
                elif _ACCOUNT_RE.fullmatch(entry):
                    accounts.add(entry)
                elif (match := _IAM_PRINCIPAL_RE.fullmatch(entry)) is not None:
                    accounts.add(match.group(1) or match.group(3))
                else:
                    self.schema(index, label, f"{element} AWS entry {_quote(entry)} is not an "
                                "account id, root ARN or role/user ARN (no wildcards)", fix)
                    valid = False
        if not valid:
            return None
        return _Principals(wildcard=wildcard, accounts=frozenset(accounts)), negated

    def parse_actions(
        self, index: int, label: str, raw: dict[str, Any]
    ) -> tuple[tuple[str, ...], bool] | None:
        found = self.exactly_one(index, label, raw, "Action")
        if found is None:
            return None
        value, negated = found
        element = "NotAction" if negated else "Action"
        items = value if isinstance(value, list) else [value]
        if not items:
            self.schema(index, label, f"{element} is an empty array",
                        f'List at least one action, e.g. "{element}": ["kms:Decrypt"].')
            return None
        actions: list[str] = []
        for item in items:
            if not isinstance(item, str):
                self.schema(index, label, f"{element} entry {_quote(item)} is not a string",
                            'Write each action as a string such as "kms:Decrypt".')
            elif not _ACTION_RE.fullmatch(item):
                self.schema(index, label, f"{element} entry {_quote(item)} is not "
                            "service:action", 'Write each action as "kms:<Action>" or "*".')
            else:
                actions.append(item)
        if len(actions) != len(items):
            return None
        return tuple(actions), negated

    def check_resource(self, index: int, label: str, raw: dict[str, Any]) -> None:
        found = self.exactly_one(index, label, raw, "Resource")
        if found is None:
            return
        value, negated = found
        items = value if isinstance(value, list) else [value]
        if not items or not all(isinstance(v, str) and v for v in items):
            element = "NotResource" if negated else "Resource"
            self.schema(index, label, f"{element} is {_quote(value)}, not a string or strings",
                        'In a key policy write "Resource": "*" (it means this key).')

    def parse_conditions(self, index: int, label: str, raw: Any) -> tuple[_Condition, ...]:
        if raw is None:
            return ()
        fix = 'Write Condition as {"<Operator>": {"<key>": "<value>" or ["<value>", ...]}}.'
        if not isinstance(raw, dict):
            self.schema(index, label, f"Condition is {_json_type(raw)}, not an object", fix)
            return ()
        conditions: list[_Condition] = []
        for operator, block in raw.items():
            base, set_operator, if_exists = _parse_operator(operator)
            if base is None:
                self.add(index, label, "unknown_condition_operator", "error",
                         f"condition operator {_quote(operator)} is not an IAM operator",
                         "Use an IAM operator such as StringEquals, StringLike, ArnLike or "
                         "Bool (optionally ForAnyValue:/ForAllValues: and ...IfExists).")
            if not isinstance(block, dict) or not block:
                self.schema(index, label, f"condition {_quote(operator)} is not a non-empty "
                            "object of keys to values", fix)
                continue
            for key, value in block.items():
                values = _condition_values(value)
                if values is None:
                    self.schema(index, label, f"condition {_quote(operator)} key {_quote(key)} "
                                "has an invalid value", fix)
                    continue
                conditions.append(_Condition(
                    operator=operator, base=base, set_operator=set_operator,
                    if_exists=if_exists, key=str(key).lower(), values=values))
        return tuple(conditions)

    # ---- semantics

    def owner_accounts(self, usable: list[_Statement]) -> set[str]:
        """The owner, or without one, every account other than the provider's that may
        administer the key: statements naming those are the customer's own."""
        if self.owner is not None:
            return {self.owner}
        return {
            account
            for s in usable
            if s.effect == "Allow" and s.covers("kms:PutKeyPolicy")
            for account in s.principals.accounts
            if account != self.provider
        }

    def check_statement(self, s: _Statement) -> None:
        if s.effect == "Allow":
            if s.not_principal:
                self.add(s.index, s.label, "not_principal_in_allow", "error",
                         "Allow with NotPrincipal grants every principal in every account "
                         "that is not listed",
                         "Replace NotPrincipal with a Principal that lists who may act.")
            if s.not_action:
                self.add(s.index, s.label, "not_action_in_allow", "error",
                         "Allow with NotAction grants every action not listed, including "
                         "ones KMS adds later",
                         "Replace NotAction with an Action list of exactly what is needed.")
            if s.principals.wildcard and not s.not_principal and not _restricts_wildcard(
                s.conditions
            ):
                self.add(s.index, s.label, "principal_wildcard_unrestricted", "error",
                         'Allow with Principal "*" and no condition on the caller: any AWS '
                         "account can use this statement",
                         "Name the principals, or add a condition on kms:CallerAccount, "
                         "aws:PrincipalOrgID or kms:ViaService.")
            self.check_wrong_account(s)
            if s.applies_to(self.provider):
                self.check_provider_allow(s)
        elif s.applies_to(self.provider):
            self.check_deny(s)

    def check_provider_allow(self, s: _Statement) -> None:
        root = _root(self.provider)
        admin = s.covered(ADMIN_ACTIONS)
        everything = len(s.covered(KMS_ACTIONS)) == len(KMS_ACTIONS)
        if admin:
            what = (
                "every KMS action (" + ", ".join(a for a in s.actions if "*" in a) + ")"
                if everything and not s.not_action else ", ".join(admin)
            )
            self.add(s.index, s.label, "provider_overprivileged", "error",
                     f"grants the provider ({self.provider}) administrative access: {what}",
                     f"Grant {root} only {', '.join(REQUIRED_ACTIONS)} (and CreateGrant/"
                     "RevokeGrant for AWS resources).")
        if not everything:
            extra = [a for a in s.covered(KMS_ACTIONS)
                     if a.lower() not in _PROVIDER_ALLOWED and a.lower() not in _ADMIN_LOWER]
            if not s.not_action:  # patterns that match no KMS permission at all
                extra += [p for p in s.actions
                          if not any(_wildcard_match(p, a) for a in KMS_ACTIONS)]
            if extra:
                self.add(s.index, s.label, "provider_extra_actions", "warning",
                         f"grants the provider actions it does not need: {', '.join(extra)}",
                         f"Remove {', '.join(extra)}; the provider needs only "
                         f"{', '.join(REQUIRED_ACTIONS)}.")
        grants = s.covered(GRANT_ACTIONS)
        if grants and not _grant_is_for_aws_resource(s.conditions):
            self.add(s.index, s.label, "grant_without_aws_resource_condition", "error",
                     f"grants the provider {', '.join(grants)} without requiring "
                     "kms:GrantIsForAWSResource: it could grant the key to anyone",
                     'Add "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}.')
        tenants = sorted({
            v for c in s.conditions if c.key == TENANT_CONDITION_KEY.lower() for v in c.values
        })
        if tenants and self.tenant is None:  # with a tenant, check_provider_actions decides
            self.add(s.index, s.label, "tenant_restriction_other", "warning",
                     "the provider may use the key only for tenant(s) "
                     + ", ".join(_quote(t) for t in tenants),
                     "Check these are the tenant ids the provider gave you; otherwise fix or "
                     f"remove the {TENANT_CONDITION_KEY} condition.")

    def check_wrong_account(self, s: _Statement) -> None:
        looks_like_provider = s.sid in _REFERENCE_SIDS or (
            not s.not_action and frozenset(a.lower() for a in s.actions) in _USAGE_ACTION_SETS
        )
        if not looks_like_provider or s.not_principal:
            return
        wrong = sorted(
            a for a in s.principals.accounts if a != self.provider and a not in self.owners
        )
        if wrong:
            self.add(s.index, s.label, "provider_wrong_account", "error",
                     f"looks like the provider's statement but names account(s) "
                     f"{', '.join(wrong)}, not the provider {self.provider}",
                     f'Set "Principal": {{"AWS": "{_root(self.provider)}"}}.')

    def check_deny(self, s: _Statement) -> None:
        blocked = s.covered(REQUIRED_ACTIONS)
        if not blocked:
            return
        if s.has_condition:
            self.add(s.index, s.label, "deny_may_block_provider", "warning",
                     f"a conditional Deny may refuse the provider {', '.join(blocked)}",
                     "Check the condition never holds for the provider's calls, or exclude "
                     f"{self.provider} (e.g. kms:CallerAccount).")
        else:
            self.add(s.index, s.label, "deny_blocks_provider", "error",
                     f"Deny without a condition refuses the provider {', '.join(blocked)}",
                     f"Narrow the Deny so it does not apply to {_root(self.provider)} or to "
                     "these actions.")

    def check_provider_actions(self, usable: list[_Statement]) -> None:
        """Each call the provider makes must be allowed by a statement whose conditions
        can hold for the encryption context that call carries (cmek.customer.requirements)."""
        grants = [s for s in usable if s.effect == "Allow" and s.applies_to(self.provider)]
        for required in CALLS:
            covering = [s for s in grants if s.covers(required.action)]
            if not covering:
                self.add(-1, "-", "provider_action_missing", "error",
                         f"no Allow statement grants the provider ({self.provider}) "
                         f"{required.action}", required.fix(self.provider, self.tenant))
                continue
            refusals = [(s, _refusal(s.conditions, required, self.tenant)) for s in covering]
            if all(why is not None for _, why in refusals):
                s, why = refusals[0]
                self.add(s.index, s.label, "provider_action_conditioned", "error",
                         f"{required.action} is allowed to the provider only under conditions "
                         f"that never hold for it: {why}",
                         required.fix(self.provider, self.tenant))

    def check_owner(self, usable: list[_Statement]) -> None:
        if self.owner is not None:
            ok = any(s.administers_for(self.owner) for s in usable)
            who = f"the owner account {self.owner}"
        else:
            ok = any(
                s.effect == "Allow" and s.covers("kms:PutKeyPolicy") and (
                    s.not_principal or s.principals.wildcard
                    or any(a != self.provider for a in s.principals.accounts)
                )
                for s in usable
            )
            who = "any principal other than the provider"
        if not ok:
            statement = json.dumps(_owner_statement(self.owner or "<your account id>"))
            self.add(-1, "-", "owner_lockout_risk", "error",
                     f"no Allow statement lets {who} administer the key (kms:* or "
                     "kms:PutKeyPolicy): the owner could be locked out",
                     f"Add AWS's default statement first: {statement}")


def lint(text: str, provider_account: str, owner_account: str | None = None,
         tenant: str | None = None) -> LintResult:
    """Check a key policy for the provider integration, statically (no AWS calls); with
    ``tenant``, as the provider will use the key for that tenant.

    The accounts and the tenant are arguments, not findings: a malformed one raises.
    """
    provider = validate_account(provider_account)
    owner = _validate_owner(owner_account, provider) if owner_account is not None else None
    if tenant is not None:
        _validate_tenant(tenant)
    try:
        document = json.loads(text.removeprefix("\ufeff"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else "invalid JSON"
        return LintResult([Finding(
            "not_json", "error", "-", _one_line(f"the text is not JSON: {reason}"),
            "Save the key policy exactly as KMS returns it (aws kms get-key-policy "
            "--policy-name default --output text) and lint that file.",
        )], is_policy=False)
    if not isinstance(document, dict) or "Statement" not in document:
        return LintResult([Finding(
            "not_a_policy", "error", "-",
            f"the JSON is {_json_type(document)} without a Statement element, not a key policy",
            'Lint the policy document itself: {"Version": "2012-10-17", "Statement": [...]}.',
        )], is_policy=False)
    return LintResult(_Linter(document, provider, owner, tenant).run(), is_policy=True)
