"""A key policy statement as IAM reads it: whom it names, which actions it covers, which
callers its conditions rule out, and whether they can hold for the provider's calls.

The lint checks reason over this model, never over raw JSON, so that a wildcard, a
NotAction or a condition on the caller is interpreted in one place.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from cmek.customer.requirements import CONTEXT_CONDITION_PREFIX, CONTEXT_KEYS, TENANT_KEY, Call

# --------------------------------------------------------------------------- constants

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
_MAX_SHOWN = 80  # characters of a customer-supplied value quoted in a message


# --------------------------------------------------------------------------- messages


def root_arn(account: str) -> str:
    return f"arn:aws:iam::{account}:root"


def json_type(value: object) -> str:
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


def quote(value: object) -> str:
    """A customer-supplied value, JSON-quoted, one line, bounded in length."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


# --------------------------------------------------------------------------- parsing model


@functools.lru_cache(maxsize=4096)
def _wildcard_regex(pattern: str) -> re.Pattern[str]:
    """IAM wildcards are ``*`` and ``?`` only; action names compare case-insensitively."""
    parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
    return re.compile("".join(parts), re.IGNORECASE | re.DOTALL)


def wildcard_match(pattern: str, value: str) -> bool:
    return _wildcard_regex(pattern).fullmatch(value) is not None


@dataclass(frozen=True)
class Principals:
    wildcard: bool = False  # "*" or {"AWS": "*"}
    accounts: frozenset[str] = frozenset()  # named by root ARN, bare id, or a principal in it

    def names(self, account: str) -> bool:
        return account in self.accounts


@dataclass(frozen=True)
class Condition:
    operator: str  # as written
    base: str | None  # lower-case base operator, None when unknown
    set_operator: str | None  # "foranyvalue", "forallvalues" or None
    if_exists: bool
    key: str  # lower-case
    values: tuple[str, ...]


@dataclass(frozen=True)
class Statement:
    index: int
    label: str
    sid: str | None
    effect: str
    principals: Principals
    not_principal: bool
    actions: tuple[str, ...]
    not_action: bool
    conditions: tuple[Condition, ...]
    has_condition: bool

    def covers(self, action: str) -> bool:
        """Whether the statement's Action (or NotAction) element includes ``action``."""
        hit = any(wildcard_match(pattern, action) for pattern in self.actions)
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
        return wildcard_match(value, account)
    return value == account


def _arn_in_account(base: str, value: str, account: str) -> bool:
    parts = value.split(":", 5)
    if len(parts) < 6:  # "*" and the like: cannot rule the account out
        return base in _WILDCARD_OPERATORS and wildcard_match(value, root_arn(account))
    if base in _WILDCARD_OPERATORS:
        return wildcard_match(parts[4], account)
    return parts[4] == account


def _conditions_exclude(
    conditions: Iterable[Condition], account: str, *, by_wildcard: bool
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


# --------------------------------------------------------------------------- conditions


def _string_match(base: str, pattern: str, value: str) -> bool:
    if base in ("stringequalsignorecase", "stringnotequalsignorecase"):
        return pattern.lower() == value.lower()
    if base in ("stringlike", "stringnotlike"):
        parts = [".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern]
        return re.fullmatch("".join(parts), value, re.DOTALL) is not None
    return pattern == value


def refusal(conditions: Iterable[Condition], required: Call,
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
                    f"{', '.join(quote(v) for v in c.values)}, not tenant {quote(tenant)}")
        if not positive and hit:
            return f"{c.operator} on {c.key} refuses tenant {quote(tenant)}"
    return None


def restricts_wildcard(conditions: Iterable[Condition]) -> bool:
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


def grant_is_for_aws_resource(conditions: Iterable[Condition]) -> bool:
    return any(
        c.base == "bool"
        and c.set_operator is None
        and not c.if_exists
        and c.key == "kms:grantisforawsresource"
        and c.values
        and all(v.lower() == "true" for v in c.values)
        for c in conditions
    )
