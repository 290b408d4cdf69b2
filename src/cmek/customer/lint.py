"""The static linter: reads a key policy a customer wrote or edited and says, with stable
codes, what would break the integration (a missing action), what gives the provider too
much (an administrative action, a grant usable for anything), and what risks locking the
owner out of its own key. A pure function over text (no AWS calls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from cmek.customer.policy import (
    REFERENCE_STATEMENTS,
    TENANT_CONDITION_KEY,
    owner_statement_unchecked,
    validate_account,
    validate_owner,
)
from cmek.customer.policy_doc import (
    Statement,
    grant_is_for_aws_resource,
    json_type,
    quote,
    refusal,
    restricts_wildcard,
    root_arn,
    wildcard_match,
)
from cmek.customer.policy_schema import PolicyReader, Severity
from cmek.customer.requirements import CALLS, DESCRIBE_SID, REQUIRED_ACTIONS
from cmek.ids import validate_tenant_id

# --------------------------------------------------------------------------- constants

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


# --------------------------------------------------------------------------- findings


@dataclass(frozen=True)
class Finding:
    """One problem in a key policy: a stable code, where it is, and the one-line fix."""

    code: str
    severity: Severity
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


# --------------------------------------------------------------------------- lint


def _one_line(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


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
        self.reader = PolicyReader(self.add)

    def add(
        self, index: int, label: str, code: str, severity: Severity, message: str, fix: str
    ) -> None:
        self.found.append((index, Finding(
            code, severity, _one_line(label), _one_line(message), _one_line(fix))))

    def run(self) -> list[Finding]:
        statements = self.reader.check_document(self.document)
        parsed = [self.reader.parse_statement(i, raw) for i, raw in enumerate(statements)]
        usable = [s for s in parsed if s is not None]
        self.owners = self.owner_accounts(usable)
        for statement in usable:
            self.check_statement(statement)
        self.check_provider_actions(usable)
        self.check_owner(usable)
        self.found.sort(key=lambda item: (item[0], item[1].code))  # stable: keeps emit order
        return [finding for _, finding in self.found]

    def owner_accounts(self, usable: list[Statement]) -> set[str]:
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

    def check_statement(self, s: Statement) -> None:
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
            if s.principals.wildcard and not s.not_principal and not restricts_wildcard(
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

    def check_provider_allow(self, s: Statement) -> None:
        root = root_arn(self.provider)
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
                          if not any(wildcard_match(p, a) for a in KMS_ACTIONS)]
            if extra:
                self.add(s.index, s.label, "provider_extra_actions", "warning",
                         f"grants the provider actions it does not need: {', '.join(extra)}",
                         f"Remove {', '.join(extra)}; the provider needs only "
                         f"{', '.join(REQUIRED_ACTIONS)}.")
        grants = s.covered(GRANT_ACTIONS)
        if grants and not grant_is_for_aws_resource(s.conditions):
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
                     + ", ".join(quote(t) for t in tenants),
                     "Check these are the tenant ids the provider gave you; otherwise fix or "
                     f"remove the {TENANT_CONDITION_KEY} condition.")

    def check_wrong_account(self, s: Statement) -> None:
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
                     f'Set "Principal": {{"AWS": "{root_arn(self.provider)}"}}.')

    def check_deny(self, s: Statement) -> None:
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
                     f"Narrow the Deny so it does not apply to {root_arn(self.provider)} or to "
                     "these actions.")

    def check_provider_actions(self, usable: list[Statement]) -> None:
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
            refusals = [(s, refusal(s.conditions, required, self.tenant)) for s in covering]
            if all(why is not None for _, why in refusals):
                s, why = refusals[0]
                self.add(s.index, s.label, "provider_action_conditioned", "error",
                         f"{required.action} is allowed to the provider only under conditions "
                         f"that never hold for it: {why}",
                         required.fix(self.provider, self.tenant))

    def check_owner(self, usable: list[Statement]) -> None:
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
            statement = json.dumps(owner_statement_unchecked(self.owner or "<your account id>"))
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
    owner = validate_owner(owner_account, provider) if owner_account is not None else None
    if tenant is not None:
        validate_tenant_id(tenant)
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
            f"the JSON is {json_type(document)} without a Statement element, not a key policy",
            'Lint the policy document itself: {"Version": "2012-10-17", "Statement": [...]}.',
        )], is_policy=False)
    return LintResult(_Linter(document, provider, owner, tenant).run(), is_policy=True)
