"""Reading a key policy someone wrote into the statement model, reporting every schema
problem on the way: a customer fixes all of them in one edit, not one per run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, Literal

from cmek.customer.policy import ACCOUNT_RE, POLICY_ID, POLICY_VERSION
from cmek.customer.policy_doc import Condition, Principals, Statement, json_type, quote

# --------------------------------------------------------------------------- constants

CONDITION_OPERATORS: Final = (
    "StringEquals", "StringNotEquals", "StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase",
    "StringLike", "StringNotLike", "NumericEquals", "NumericNotEquals", "NumericLessThan",
    "NumericLessThanEquals", "NumericGreaterThan", "NumericGreaterThanEquals", "DateEquals",
    "DateNotEquals", "DateLessThan", "DateLessThanEquals", "DateGreaterThan",
    "DateGreaterThanEquals", "Bool", "BinaryEquals", "IpAddress", "NotIpAddress", "ArnEquals",
    "ArnLike", "ArnNotEquals", "ArnNotLike", "Null",
)
_OPERATORS_LOWER: Final = frozenset(o.lower() for o in CONDITION_OPERATORS)
_VERSIONS: Final = frozenset({"2012-10-17", "2008-10-17"})
_TOP_LEVEL_KEYS: Final = frozenset({"Version", "Id", "Statement"})
_STATEMENT_KEYS: Final = frozenset(
    {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction", "Resource",
     "NotResource", "Condition"}
)
_PRINCIPAL_TYPES: Final = frozenset({"AWS", "Service", "Federated", "CanonicalUser"})
_IAM_PRINCIPAL_RE: Final = re.compile(
    r"arn:aws(?:-[a-z]+)*:(?:iam::([0-9]{12}):(root|(?:user|role)/[^*?]+)"
    r"|sts::([0-9]{12}):assumed-role/[^*?]+)",
    re.DOTALL,
)
_ACTION_RE: Final = re.compile(r"\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+")

Severity = Literal["error", "warning"]
# How a problem is reported: statement index, label, code, severity, message, fix.
Report = Callable[[int, str, str, Severity, str, str], None]


# --------------------------------------------------------------------------- parsing


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


class PolicyReader:
    """Reads one document into statements; every problem goes to ``report``."""

    def __init__(self, report: Report) -> None:
        self.add = report

    def schema(self, index: int, label: str, message: str, fix: str) -> None:
        self.add(index, label, "schema_invalid", "error", message, fix)

    def check_document(self, doc: dict[str, Any]) -> list[Any]:
        for key in sorted(set(doc) - _TOP_LEVEL_KEYS):
            self.schema(-1, "-", f"unknown top-level element {quote(key)}",
                        "Keep only Version, Id and Statement at the top level.")
        if "Version" in doc and not (isinstance(doc["Version"], str)
                                     and doc["Version"] in _VERSIONS):
            self.schema(-1, "-", f"Version {quote(doc['Version'])} is not an IAM policy version",
                        f'Set "Version": "{POLICY_VERSION}".')
        if "Id" in doc and not isinstance(doc["Id"], str):
            self.schema(-1, "-", f"Id is {json_type(doc['Id'])}, not a string",
                        f'Set "Id" to a string such as "{POLICY_ID}", or remove it.')
        raw = doc["Statement"]
        if isinstance(raw, dict):
            return [raw]
        if not isinstance(raw, list):
            self.schema(-1, "-", f"Statement is {json_type(raw)}, not an array of statements",
                        'Make "Statement" an array of statement objects.')
            return []
        if not raw:
            self.schema(-1, "-", "Statement is empty; KMS rejects a policy without statements",
                        "Add the owner's and the provider's statements.")
        return raw

    def parse_statement(self, index: int, raw: Any) -> Statement | None:
        """Report every schema problem; return a model only if Effect, Principal and Action
        are usable, so that the semantic checks never reason about half a statement."""
        label = f"#{index}"
        if not isinstance(raw, dict):
            self.schema(index, label, f"statement is {json_type(raw)}, not an object",
                        "Make every entry of Statement a JSON object.")
            return None
        sid = raw.get("Sid")
        if isinstance(sid, str) and sid:
            label = sid
        elif "Sid" in raw and not isinstance(sid, str):
            self.schema(index, label, f"Sid is {json_type(sid)}, not a string",
                        "Make Sid a string, or remove it.")
        for key in sorted(set(raw) - _STATEMENT_KEYS):
            self.schema(index, label, f"unknown statement element {quote(key)}",
                        "Remove it; a statement has Sid, Effect, (Not)Principal, (Not)Action, "
                        "(Not)Resource and Condition.")
        effect = raw.get("Effect")
        if effect not in ("Allow", "Deny"):
            self.schema(index, label, f"Effect is {quote(effect)}, not \"Allow\" or \"Deny\"",
                        'Set "Effect" to "Allow" or "Deny" (case matters).')
        principals = self.parse_principal(index, label, raw)
        actions = self.parse_actions(index, label, raw)
        self.check_resource(index, label, raw)
        conditions = self.parse_conditions(index, label, raw.get("Condition"))
        if effect not in ("Allow", "Deny") or principals is None or actions is None:
            return None
        return Statement(
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
    ) -> tuple[Principals, bool] | None:
        found = self.exactly_one(index, label, raw, "Principal")
        if found is None:
            return None
        value, negated = found
        element = "NotPrincipal" if negated else "Principal"
        fix = f'Write {element} as {{"AWS": "arn:aws:iam::<account>:root"}} or a list of ARNs.'
        if value == "*":
            return Principals(wildcard=True), negated
        if not isinstance(value, dict) or not value:
            self.schema(index, label, f"{element} is {quote(value)}, not \"*\" or an object",
                        fix)
            return None
        wildcard = False
        accounts: set[str] = set()
        valid = True
        for kind, entries in value.items():
            items = entries if isinstance(entries, list) else [entries]
            if kind not in _PRINCIPAL_TYPES or not items:
                self.schema(index, label, f"{element} has an invalid entry {quote(kind)}", fix)
                valid = False
                continue
            for entry in items:
                if not isinstance(entry, str) or not entry:
                    self.schema(index, label, f"{element} {kind} entry {quote(entry)} is not a "
                                "string", fix)
                    valid = False
                elif kind != "AWS":
                    continue  # a service or federated principal is never an account
                elif entry == "*":
                    wildcard = True
                elif ACCOUNT_RE.fullmatch(entry):
                    accounts.add(entry)
                elif (match := _IAM_PRINCIPAL_RE.fullmatch(entry)) is not None:
                    accounts.add(match.group(1) or match.group(3))
                else:
                    self.schema(index, label, f"{element} AWS entry {quote(entry)} is not an "
                                "account id, root ARN or role/user ARN (no wildcards)", fix)
                    valid = False
        if not valid:
            return None
        return Principals(wildcard=wildcard, accounts=frozenset(accounts)), negated

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
                self.schema(index, label, f"{element} entry {quote(item)} is not a string",
                            'Write each action as a string such as "kms:Decrypt".')
            elif not _ACTION_RE.fullmatch(item):
                self.schema(index, label, f"{element} entry {quote(item)} is not "
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
            self.schema(index, label, f"{element} is {quote(value)}, not a string or strings",
                        'In a key policy write "Resource": "*" (it means this key).')

    def parse_conditions(self, index: int, label: str, raw: Any) -> tuple[Condition, ...]:
        if raw is None:
            return ()
        fix = 'Write Condition as {"<Operator>": {"<key>": "<value>" or ["<value>", ...]}}.'
        if not isinstance(raw, dict):
            self.schema(index, label, f"Condition is {json_type(raw)}, not an object", fix)
            return ()
        conditions: list[Condition] = []
        for operator, block in raw.items():
            base, set_operator, if_exists = _parse_operator(operator)
            if base is None:
                self.add(index, label, "unknown_condition_operator", "error",
                         f"condition operator {quote(operator)} is not an IAM operator",
                         "Use an IAM operator such as StringEquals, StringLike, ArnLike or "
                         "Bool (optionally ForAnyValue:/ForAllValues: and ...IfExists).")
            if not isinstance(block, dict) or not block:
                self.schema(index, label, f"condition {quote(operator)} is not a non-empty "
                            "object of keys to values", fix)
                continue
            for key, value in block.items():
                values = _condition_values(value)
                if values is None:
                    self.schema(index, label, f"condition {quote(operator)} key {quote(key)} "
                                "has an invalid value", fix)
                    continue
                conditions.append(Condition(
                    operator=operator, base=base, set_operator=set_operator,
                    if_exists=if_exists, key=str(key).lower(), values=values))
        return tuple(conditions)
