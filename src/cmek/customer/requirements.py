"""What the provider does with a customer's key: the one model behind render, merge,
lint and verify, so that they can never disagree.

The provider makes four calls. ``kms:DescribeKey`` carries no encryption context; the
three cryptographic calls carry ``{"cmek:tenant": <tenant>, "cmek:category": <category>,
"cmek:epoch": <n>}``, with every category of docs/format.md (and ``verification`` for
``cmek key verify``) and any epoch. A key policy works for the provider exactly when each
call is allowed, under conditions that can hold for the context that call carries, and
no Deny refuses it. Where each call belongs in the policy, and the one-line fix when it
is missing, are defined here once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

USAGE_SID: Final = "Allow use of the key"
DESCRIBE_SID: Final = "Allow description of the key"
TENANT_KEY: Final = "cmek:tenant"
CONTEXT_KEYS: Final = (TENANT_KEY, "cmek:category", "cmek:epoch")
CONTEXT_CONDITION_PREFIX: Final = "kms:EncryptionContext:"


@dataclass(frozen=True)
class Call:
    """One call the provider makes on the key."""

    action: str  # the permission, e.g. kms:Decrypt
    check: str  # the name of the verify check that makes it
    with_context: bool  # whether it carries the tenant's encryption context

    def statement(self, tenant: str | None) -> str:
        """The Sid of the statement that grants it in the policy cmek renders."""
        return DESCRIBE_SID if (tenant is not None and not self.with_context) else USAGE_SID

    def fix(self, provider_account: str | None, tenant: str | None) -> str:
        """The one-line fix when the provider may not make this call."""
        root = (f"arn:aws:iam::{provider_account}:root" if provider_account
                else "the provider account")
        if not self.with_context:
            return (f"Allow {self.action} to {root} in a statement with no "
                    f"{CONTEXT_CONDITION_PREFIX}* condition ({self.action} carries no "
                    f"encryption context, so such a condition refuses it): the "
                    f"\"{DESCRIBE_SID}\" statement that `cmek policy render --tenant` prints, "
                    f"or \"{USAGE_SID}\" when it has no such condition.")
        where = f"Allow {self.action} to {root} in the \"{USAGE_SID}\" statement"
        if tenant is not None:
            return (f"{where}; a {CONTEXT_CONDITION_PREFIX}{TENANT_KEY} condition on it must "
                    f"allow tenant \"{tenant}\", and no condition may restrict cmek:category "
                    "or cmek:epoch.")
        return (f"{where}. If the statement restricts {CONTEXT_CONDITION_PREFIX}{TENANT_KEY}, "
                "name the tenant: run this with --tenant <tenant id>.")


CALLS: Final = (
    Call("kms:Encrypt", "encrypt", with_context=True),
    Call("kms:Decrypt", "decrypt", with_context=True),
    Call("kms:GenerateDataKey", "generate_data_key", with_context=True),
    Call("kms:DescribeKey", "reachable", with_context=False),
)
REQUIRED_ACTIONS: Final = tuple(c.action for c in CALLS)


def call(action: str) -> Call:
    return next(c for c in CALLS if c.action == action)
