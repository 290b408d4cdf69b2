"""Key policies: the IAM policy grammar as AWS KMS applies it to a key.

A key policy is the only resource policy KMS consults, so every request is
checked here. The parser is strict because AWS refuses a bad document at
``PutKeyPolicy``/``CreateKey`` time with ``MalformedPolicyDocumentException``;
accepting it locally would let a policy pass tests and then fail in AWS.

Evaluation follows IAM: an applying ``Deny`` beats any ``Allow``, and a request
no statement applies to is an implicit deny (``Decision.NONE``) so the caller
can still consult grants.
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kmslocal.exceptions import KMSError, malformed_policy

__all__ = [
    "Decision",
    "Policy",
    "Request",
    "Statement",
    "default_key_policy",
    "parse_policy",
]

MAX_POLICY_BYTES = 32768
_VERSIONS = frozenset({"2012-10-17", "2008-10-17"})
_TOP_LEVEL_KEYS = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS = frozenset(
    {
        "Sid",
        "Effect",
        "Principal",
        "NotPrincipal",
        "Action",
        "NotAction",
        "Resource",
        "NotResource",
        "Condition",
    }
)
_PRINCIPAL_TYPES = frozenset({"AWS", "Service", "Federated"})

_ACCOUNT_RE = re.compile(r"\d{12}")
_IAM_ARN_RE = re.compile(r"arn:aws:iam::(\d{12}):(root|user/.+|role/.+)", re.DOTALL)
_STS_ARN_RE = re.compile(r"arn:aws:sts::(\d{12}):assumed-role/.+", re.DOTALL)
# "*" or "<service>:<action pattern>"; the service part may itself use wildcards.
_ACTION_RE = re.compile(r"\*|[A-Za-z0-9*?-]+:[A-Za-z0-9*?]+")

_INVALID_PRINCIPALS = "Policy contains a statement with one or more invalid principals."


class Decision(enum.Enum):
    """Outcome of a key policy check; ``NONE`` is an implicit deny (grants may still allow)."""

    ALLOW = "Allow"
    DENY = "Deny"
    NONE = "None"


@dataclass(frozen=True)
class Request:
    """Who is asking for what; condition keys are matched case-insensitively, as in IAM."""

    principal_arn: str
    principal_account: str
    action: str
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------- matching


@functools.lru_cache(maxsize=4096)
def _wildcard_regex(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    """IAM wildcards are only ``*`` and ``?``; everything else (even ``[``) is literal."""
    parts: list[str] = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    flags = re.DOTALL | (re.IGNORECASE if ignore_case else 0)
    return re.compile("".join(parts), flags)


def _wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    return _wildcard_regex(pattern, ignore_case).fullmatch(value) is not None


def _arn_match(pattern: str, value: str) -> bool:
    """IAM compares ARNs per colon-delimited component, so ``*`` never spans a colon
    in the first five components (the resource part may contain colons)."""
    pattern_parts = pattern.split(":", 5)
    if len(pattern_parts) < 6:
        return _wildcard_match(pattern, value)
    value_parts = value.split(":", 5)
    if len(value_parts) < 6:
        return False
    return all(_wildcard_match(p, v) for p, v in zip(pattern_parts, value_parts, strict=True))


def _string_equals(pattern: str, value: str) -> bool:
    return pattern == value


def _string_equals_ignore_case(pattern: str, value: str) -> bool:
    return pattern.casefold() == value.casefold()


def _string_like(pattern: str, value: str) -> bool:
    return _wildcard_match(pattern, value)


def _bool_equals(pattern: str, value: str) -> bool:
    return pattern.lower() == value.lower()


# Operator name (lower case) -> (canonical name, comparison, negated).
_OPERATORS: dict[str, tuple[str, Callable[[str, str], bool], bool]] = {
    "stringequals": ("StringEquals", _string_equals, False),
    "stringnotequals": ("StringNotEquals", _string_equals, True),
    "stringequalsignorecase": ("StringEqualsIgnoreCase", _string_equals_ignore_case, False),
    "stringnotequalsignorecase": ("StringNotEqualsIgnoreCase", _string_equals_ignore_case, True),
    "stringlike": ("StringLike", _string_like, False),
    "stringnotlike": ("StringNotLike", _string_like, True),
    "bool": ("Bool", _bool_equals, False),
    "arnequals": ("ArnEquals", _arn_match, False),
    "arnlike": ("ArnLike", _arn_match, False),
    "arnnotequals": ("ArnNotEquals", _arn_match, True),
    "arnnotlike": ("ArnNotLike", _arn_match, True),
}


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Condition:
    """One ``operator -> key -> values`` test; the key is stored lower-cased."""

    operator: str  # canonical base name, e.g. "StringLike" or "Null"
    set_operator: str | None  # None, "ForAnyValue" or "ForAllValues"
    if_exists: bool
    key: str
    values: tuple[str, ...]

    def matches(self, context: Mapping[str, tuple[str, ...]]) -> bool:
        present = context.get(self.key, ())
        if self.operator == "Null":
            # "true" asks for the key to be absent, "false" for it to be present.
            return any(
                (v.lower() == "true" and not present) or (v.lower() == "false" and bool(present))
                for v in self.values
            )
        _, compare, negated = _OPERATORS[self.operator.lower()]

        def satisfied(value: str) -> bool:
            hit = any(compare(pattern, value) for pattern in self.values)
            return not hit if negated else hit

        if self.set_operator == "ForAllValues":
            return all(satisfied(v) for v in present)
        if not present:
            if self.if_exists:
                return True
            # A negated single-valued test passes when there is nothing to contradict it.
            return negated and self.set_operator is None
        if self.set_operator == "ForAnyValue":
            return any(satisfied(v) for v in present)
        if negated:
            return all(satisfied(v) for v in present)
        return any(satisfied(v) for v in present)


@dataclass(frozen=True)
class Principals:
    """The parsed ``Principal``/``NotPrincipal`` element."""

    wildcard: bool = False
    accounts: frozenset[str] = frozenset()  # from root ARNs or bare account ids
    arns: frozenset[str] = frozenset()  # user, role and assumed-role ARNs
    others: tuple[str, ...] = ()  # Service/Federated: accepted, never match a caller

    def matches(self, principal_arn: str, principal_account: str) -> bool:
        if self.wildcard or principal_account in self.accounts:
            return True
        if principal_arn in self.arns:
            return True
        # A role principal also covers that role's sessions, as in AWS.
        session = _STS_ARN_RE.fullmatch(principal_arn)
        if session is not None:
            role_name = principal_arn.split(":assumed-role/", 1)[1].split("/", 1)[0]
            for arn in self.arns:
                role = _IAM_ARN_RE.fullmatch(arn)
                if (
                    role is not None
                    and role.group(1) == session.group(1)
                    and role.group(2).startswith("role/")
                    and role.group(2).rsplit("/", 1)[1] == role_name
                ):
                    return True
        return False


@dataclass(frozen=True)
class Statement:
    """One parsed statement; ``not_*`` flags invert the matching element."""

    sid: str | None
    effect: str  # "Allow" or "Deny"
    principals: Principals
    not_principal: bool
    actions: tuple[str, ...]
    not_action: bool
    resources: tuple[str, ...]
    not_resource: bool
    conditions: tuple[Condition, ...]

    def applies(self, request: Request, context: Mapping[str, tuple[str, ...]]) -> bool:
        principal_hit = self.principals.matches(request.principal_arn, request.principal_account)
        if principal_hit == self.not_principal:
            return False
        action_hit = any(
            _wildcard_match(pattern, request.action, ignore_case=True) for pattern in self.actions
        )
        if action_hit == self.not_action:
            return False
        # A key policy is attached to one key, so "*" is the resource that means "this key".
        resource_hit = "*" in self.resources
        if resource_hit == self.not_resource:
            return False
        return all(condition.matches(context) for condition in self.conditions)


def _normalize_context(context: Mapping[str, Sequence[str]]) -> dict[str, tuple[str, ...]]:
    """Lower-case the keys (IAM condition keys are case-insensitive), merging duplicates."""
    normalized: dict[str, tuple[str, ...]] = {}
    for key, values in context.items():
        items = (values,) if isinstance(values, str) else tuple(values)
        lowered = key.lower()
        normalized[lowered] = normalized.get(lowered, ()) + items
    return normalized


@dataclass(frozen=True)
class Policy:
    """A validated key policy plus the document it came from (returned by GetKeyPolicy)."""

    document: dict[str, Any]
    statements: tuple[Statement, ...]

    def evaluate(self, request: Request) -> Decision:
        context = _normalize_context(request.context)
        allowed = False
        for statement in self.statements:
            if not statement.applies(request, context):
                continue
            if statement.effect == "Deny":
                return Decision.DENY
            allowed = True
        return Decision.ALLOW if allowed else Decision.NONE


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid JSON constant {name}")


def _string_list(value: Any, what: str) -> tuple[str, ...]:
    """IAM lets most elements be a string or a non-empty list of strings."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise malformed_policy(f"Policy contains a statement with an invalid {what} element.")


def _parse_principals(value: Any) -> Principals:
    if value == "*":
        return Principals(wildcard=True)
    if not isinstance(value, dict) or not value:
        raise malformed_policy(_INVALID_PRINCIPALS)
    wildcard = False
    accounts: set[str] = set()
    arns: set[str] = set()
    others: list[str] = []
    for kind, raw in value.items():
        if kind not in _PRINCIPAL_TYPES:
            raise malformed_policy(_INVALID_PRINCIPALS)
        if isinstance(raw, str):
            entries: list[Any] = [raw]
        elif isinstance(raw, list) and raw:
            entries = raw
        else:
            raise malformed_policy(_INVALID_PRINCIPALS)
        for entry in entries:
            if not isinstance(entry, str) or not entry:
                raise malformed_policy(_INVALID_PRINCIPALS)
            if kind != "AWS":
                others.append(f"{kind}:{entry}")
            elif entry == "*":
                wildcard = True
            elif _ACCOUNT_RE.fullmatch(entry):
                accounts.add(entry)
            elif (iam := _IAM_ARN_RE.fullmatch(entry)) is not None:
                if iam.group(2) == "root":
                    accounts.add(iam.group(1))
                else:
                    arns.add(entry)
            elif _STS_ARN_RE.fullmatch(entry):
                arns.add(entry)
            else:
                raise malformed_policy(_INVALID_PRINCIPALS)
    return Principals(
        wildcard=wildcard,
        accounts=frozenset(accounts),
        arns=frozenset(arns),
        others=tuple(others),
    )


def _condition_values(raw: Any, operator: str, key: str) -> tuple[str, ...]:
    def one(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str | int | float):
            return str(item)
        raise malformed_policy(
            f"Policy contains an invalid value for condition key {key} in operator {operator}."
        )

    if isinstance(raw, list):
        return tuple(one(item) for item in raw)
    return (one(raw),)


def _parse_operator(name: str) -> tuple[str, str | None, bool]:
    """Split ``ForAnyValue:StringLikeIfExists`` into (base, set operator, if-exists)."""
    rest = name
    set_operator: str | None = None
    for prefix in ("ForAnyValue:", "ForAllValues:"):
        if rest.lower().startswith(prefix.lower()):
            set_operator = prefix[:-1]
            rest = rest[len(prefix) :]
            break
    if_exists = False
    if rest.lower().endswith("ifexists"):
        if_exists = True
        rest = rest[: -len("IfExists")]
    lowered = rest.lower()
    if lowered == "null" and set_operator is None and not if_exists:
        return "Null", None, False
    if lowered in _OPERATORS:
        return _OPERATORS[lowered][0], set_operator, if_exists
    raise malformed_policy(f"Policy contains an unknown condition operator: {name}")


def _parse_conditions(value: Any) -> tuple[Condition, ...]:
    if not isinstance(value, dict):
        raise malformed_policy("Policy contains a statement with an invalid Condition element.")
    conditions: list[Condition] = []
    for name, block in value.items():
        operator, set_operator, if_exists = _parse_operator(name)
        if not isinstance(block, dict) or not block:
            raise malformed_policy(f"Policy contains an invalid condition block for {name}.")
        for key, raw in block.items():
            if not key:
                raise malformed_policy(f"Policy contains an empty condition key under {name}.")
            conditions.append(
                Condition(
                    operator=operator,
                    set_operator=set_operator,
                    if_exists=if_exists,
                    key=key.lower(),
                    values=_condition_values(raw, name, key),
                )
            )
    return tuple(conditions)


def _exactly_one(statement: dict[str, Any], positive: str, negative: str) -> tuple[Any, bool]:
    """Return the element's value and whether it was the ``Not`` form."""
    has_positive = positive in statement
    has_negative = negative in statement
    if has_positive == has_negative:
        raise malformed_policy(
            f"Policy contains a statement that must have exactly one of {positive} or {negative}."
        )
    return (statement[negative], True) if has_negative else (statement[positive], False)


def _parse_statement(raw: Any) -> Statement:
    if not isinstance(raw, dict):
        raise malformed_policy("Policy contains a statement that is not a JSON object.")
    unknown = sorted(set(raw) - _STATEMENT_KEYS)
    if unknown:
        raise malformed_policy(f"Policy contains a statement with an unknown element: {unknown[0]}")
    sid = raw.get("Sid")
    if sid is not None and not isinstance(sid, str):
        raise malformed_policy("Policy contains a statement with a Sid that is not a string.")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise malformed_policy('Policy contains a statement whose Effect is not "Allow" or "Deny".')

    principal_value, not_principal = _exactly_one(raw, "Principal", "NotPrincipal")
    principals = _parse_principals(principal_value)

    action_value, not_action = _exactly_one(raw, "Action", "NotAction")
    actions = _string_list(action_value, "Action")
    for action in actions:
        if not _ACTION_RE.fullmatch(action):
            raise malformed_policy(f"Policy contains an invalid action: {action}")

    resource_value, not_resource = _exactly_one(raw, "Resource", "NotResource")
    resources = _string_list(resource_value, "Resource")

    conditions = _parse_conditions(raw["Condition"]) if "Condition" in raw else ()
    return Statement(
        sid=sid,
        effect=effect,
        principals=principals,
        not_principal=not_principal,
        actions=actions,
        not_action=not_action,
        resources=resources,
        not_resource=not_resource,
        conditions=conditions,
    )


def parse_policy(text: str) -> Policy:
    """Validate a key policy document; every refusal is ``MalformedPolicyDocumentException``."""
    if not isinstance(text, str) or not text.strip():
        raise malformed_policy("Policy document is empty.")
    if len(text.encode("utf-8", errors="surrogatepass")) > MAX_POLICY_BYTES:
        raise malformed_policy(f"Policy document exceeds the maximum of {MAX_POLICY_BYTES} bytes.")
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise malformed_policy("Policy document is not valid JSON.") from exc
    if not isinstance(document, dict):
        raise malformed_policy("Policy document must be a JSON object.")
    unknown = sorted(set(document) - _TOP_LEVEL_KEYS)
    if unknown:
        raise malformed_policy(f"Policy contains an unknown element: {unknown[0]}")
    version = document.get("Version", "2012-10-17")
    if not isinstance(version, str) or version not in _VERSIONS:
        raise malformed_policy("Policy document has an unsupported Version.")
    if "Id" in document and not isinstance(document["Id"], str):
        raise malformed_policy("Policy document Id must be a string.")
    if "Statement" not in document:
        raise malformed_policy("Policy document is missing the Statement element.")
    raw_statements = document["Statement"]
    if isinstance(raw_statements, dict):
        raw_statements = [raw_statements]
    if not isinstance(raw_statements, list) or not raw_statements:
        raise malformed_policy("Policy Statement must be an object or a non-empty list.")
    try:
        statements = tuple(_parse_statement(raw) for raw in raw_statements)
    except KMSError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # defensive: never leak others
        raise malformed_policy("Policy document is malformed.") from exc
    return Policy(document=document, statements=statements)


def default_key_policy(account: str) -> str:
    """The policy AWS attaches when CreateKey gets none: delegate everything to IAM."""
    document = {
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            }
        ],
    }
    return json.dumps(document, indent=2)
