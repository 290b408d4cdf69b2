"""Key verify, run with the provider's credentials: is a customer's key the kind of key
the provider accepts, and may the provider use it?

``verify_key`` runs through the KMS port, before a tenant is provisioned with a key. It
first establishes who is calling (a dry run made with anyone else's credentials proves
nothing about the provider's access), then runs named checks in order; a check that
cannot run because an earlier one failed is recorded as skipped. Every failed check
carries a one-line fix.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cmek.customer import requirements
from cmek.customer.requirements import USAGE_SID
from cmek.kms import (
    KeyArn,
    KeyDescription,
    KeyRevoked,
    Kms,
    KmsError,
    KmsInvalidCiphertext,
    KmsMisconfigured,
    KmsUnavailable,
    RevocationReason,
)

# The only kind of key the provider accepts (cmek.customer.create makes one).
KEY_SPEC: Final = "SYMMETRIC_DEFAULT"
KEY_USAGE: Final = "ENCRYPT_DECRYPT"
ORIGIN: Final = "AWS_KMS"
PROBE: Final = b"cmek key verification probe"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str  # "" when ok
    skipped: bool = False  # not run: an earlier check it needs failed

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "skipped": self.skipped,
                "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class VerifyReport:
    key_arn: str
    tenant: str | None
    checks: list[Check]
    description: KeyDescription | None = None  # what DescribeKey said, when it answered

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "key_arn": self.key_arn, "tenant": self.tenant, "ok": self.ok,
            "checks": [c.to_json() for c in self.checks],
        }

    def findings(self) -> list[dict[str, Any]]:
        """The failed checks, and those not run because of them (``skipped``), as the
        platform returns them (HTTP 422 findings)."""
        return [{"check": c.name, "skipped": c.skipped, "detail": c.detail, "fix": c.fix}
                for c in self.checks if not c.ok]

    def check(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


CHECKS = (
    "arn", "caller", "region", "reachable", "key_spec", "key_usage", "origin",
    "single_region", "enabled", "generate_data_key", "decrypt", "encrypt",
)
# What each check needs to have passed before it can run. A DescribeKey that was only
# denied (and the checks skipped for it) does not block the cryptographic checks: they can
# still run, and test their own permissions.
_NEEDS: dict[str, tuple[str, ...]] = {
    "arn": (),
    "caller": (),
    "region": ("arn",),
    "reachable": ("arn", "caller", "region"),
    "key_spec": ("reachable",),
    "key_usage": ("reachable",),
    "origin": ("reachable",),
    "single_region": ("reachable",),
    "enabled": ("reachable",),
    "generate_data_key": ("reachable", "key_spec", "key_usage", "enabled"),
    "decrypt": ("generate_data_key",),
    "encrypt": ("reachable", "key_spec", "key_usage", "enabled"),
}
_CRYPTO = frozenset({"generate_data_key", "decrypt", "encrypt"})


def verification_context(tenant: str | None) -> dict[str, str]:
    """The encryption context of verify's calls, as it shows in the customer's usage log."""
    return {"cmek:tenant": tenant or "verify", "cmek:category": "verification",
            "cmek:epoch": "0"}


class _Verifier:
    def __init__(self, kms: Kms, key_arn: str, region: str, tenant: str | None,
                 provider_account: str | None) -> None:
        self.kms = kms
        self.key_arn = key_arn
        self.region = region
        self.tenant = tenant
        self.provider_account = provider_account
        self.principal = (f"arn:aws:iam::{provider_account}:root" if provider_account
                          else "the provider account")
        self.context = verification_context(tenant)
        self.checks: dict[str, Check] = {}
        self.arn: KeyArn | None = None
        self.description: KeyDescription | None = None
        self.wrapped: bytes | None = None
        self.data_key: bytearray | None = None
        self.soft: set[str] = set()  # failed, yet not blocking the cryptographic checks

    def run(self) -> list[Check]:
        try:
            for name in CHECKS:
                blocked = next((n for n in _NEEDS[name] if self._blocks(n, name)), None)
                if blocked is not None:
                    self.checks[name] = Check(
                        name, False, f"skipped: {blocked} failed",
                        f"fix the '{blocked}' check first", skipped=True,
                    )
                    if blocked in self.soft:
                        self.soft.add(name)
                    continue
                self.checks[name] = getattr(self, f"_{name}")()
        finally:
            if self.data_key is not None:
                _wipe(self.data_key)
        return [self.checks[n] for n in CHECKS]

    def _blocks(self, need: str, name: str) -> bool:
        return not self.checks[need].ok and not (name in _CRYPTO and need in self.soft)

    # --- the checks, in order ---------------------------------------------------------
    def _arn(self) -> Check:
        try:
            self.arn = KeyArn.parse(self.key_arn)
        except KmsMisconfigured:
            return Check(
                "arn", False, f"not a KMS key ARN: {self.key_arn[:200]!r}",
                "give the full key ARN, arn:aws:kms:REGION:ACCOUNT:key/KEY_ID "
                "(not a key id, alias or alias ARN)",
            )
        a = self.arn
        return _ok("arn", f"key {a.key_id} of account {a.account} in {a.region}")

    def _caller(self) -> Check:
        try:
            who = self.kms.caller_identity()
        except KmsUnavailable as e:
            return Check("caller", False, f"cannot reach AWS to learn who is calling: "
                         f"{e.message}", "check the endpoint (--endpoint-url) and the network")
        except KmsError as e:
            return Check("caller", False, f"the AWS credentials do not work: {e.message}",
                         "set the provider's AWS credentials: --profile, AWS_PROFILE, or "
                         "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if self.provider_account is not None and who.account != self.provider_account:
            return Check(
                "caller", False,
                f"the checks would run as {who.arn} (account {who.account}), not as the "
                f"provider account {self.provider_account}: they would prove nothing about "
                "the provider's access",
                "run verify with the provider's credentials (--profile, or AWS_* variables)")
        role = (" (the provider account)" if self.provider_account is not None
                else " (no provider account given to compare with)")
        return _ok("caller", f"running as {who.arn}{role}")

    def _region(self) -> Check:
        assert self.arn is not None
        if self.arn.region != self.region:
            return Check(
                "region", False,
                f"the key is in {self.arn.region}, the platform runs in {self.region}",
                f"create the key in {self.region}: a KMS key cannot be used from another "
                "Region",
            )
        return _ok("region", f"the key is in {self.region}, the platform's Region")

    def _reachable(self) -> Check:
        try:
            self.description = d = self.kms.describe_key(self.key_arn)
        except KeyRevoked as e:
            if e.reason is RevocationReason.NOT_FOUND:
                return Check(
                    "reachable", False,
                    "key does not exist or the provider is not allowed to see it",
                    "check the ARN (account, Region, key id), that the key was not deleted, and "
                    f"that the key policy allows kms:DescribeKey to {self.principal}",
                )
            if e.reason is RevocationReason.ACCESS_DENIED:
                self.soft.add("reachable")
                return Check(
                    "reachable", False,
                    "access denied: the provider may not call kms:DescribeKey on the key",
                    requirements.call("kms:DescribeKey").fix(self.provider_account,
                                                            self.tenant),
                )
            return Check("reachable", False, f"DescribeKey refused: {e.message}",
                         f"allow kms:DescribeKey to {self.principal} in statement "
                         f"'{USAGE_SID}'")
        except KmsUnavailable as e:
            return Check("reachable", False, f"KMS unreachable: {e.message}",
                         "retry in a few minutes; if it persists, contact the provider")
        except KmsError as e:
            return Check("reachable", False, f"DescribeKey failed: {e.message}",
                         "the provider's KMS settings or credentials are wrong: contact the "
                         "provider")
        return _ok("reachable", f"DescribeKey: {d.key_state}, {d.key_spec}, {d.key_usage}, "
                                f"origin {d.origin}")

    def _key_spec(self) -> Check:
        d = self._described()
        if d.key_spec != KEY_SPEC:
            return Check("key_spec", False, f"key spec is {d.key_spec}, not {KEY_SPEC}",
                         f"create a new key with KeySpec {KEY_SPEC} (a key's spec cannot be "
                         "changed)")
        return _ok("key_spec", f"key spec {KEY_SPEC}")

    def _key_usage(self) -> Check:
        d = self._described()
        if d.key_usage != KEY_USAGE:
            return Check("key_usage", False, f"key usage is {d.key_usage}, not {KEY_USAGE}",
                         f"create a new key with KeyUsage {KEY_USAGE} and KeySpec {KEY_SPEC} "
                         "(a key's usage cannot be changed)")
        return _ok("key_usage", f"key usage {KEY_USAGE}")

    def _origin(self) -> Check:
        d = self._described()
        if d.origin != ORIGIN:
            return Check("origin", False, f"key origin is {d.origin or 'unknown'}, not {ORIGIN}",
                         f"create a new key with Origin {ORIGIN} (key material generated by "
                         "KMS, not imported or in a custom key store)")
        return _ok("origin", f"origin {ORIGIN}")

    def _single_region(self) -> Check:
        d = self._described()
        if d.multi_region:
            return Check("single_region", False, "the key is a multi-Region key",
                         "create a single-Region key (MultiRegion false): multi-Region keys "
                         "are not accepted")
        return _ok("single_region", "single-Region key")

    def _enabled(self) -> Check:
        d = self._described()
        if d.key_state == "Enabled":
            return _ok("enabled", "key state Enabled")
        detail = f"key state is {d.key_state}, not Enabled"
        if d.key_state == "Disabled":
            fix = f"EnableKey (aws kms enable-key --key-id {self.key_arn})"
        elif d.key_state == "PendingDeletion":
            detail += " (scheduled for deletion)"
            fix = (f"CancelKeyDeletion then EnableKey (aws kms cancel-key-deletion --key-id "
                   f"{self.key_arn}, then aws kms enable-key --key-id {self.key_arn})")
        else:
            fix = "bring the key to state Enabled, or create a new key"
        return Check("enabled", False, detail, fix)

    def _generate_data_key(self) -> Check:
        try:
            out = self.kms.generate_data_key(self.key_arn, self.context)
        except KmsError as e:
            return self._crypto_failure("generate_data_key", "kms:GenerateDataKey", e)
        self.data_key, self.wrapped = out.plaintext, out.wrapped
        return _ok("generate_data_key", f"GenerateDataKey with context {_ctx(self.context)}")

    def _decrypt(self) -> Check:
        assert self.wrapped is not None
        assert self.data_key is not None
        try:
            out = self.kms.decrypt(self.key_arn, self.wrapped, self.context)
        except KmsError as e:
            return self._crypto_failure("decrypt", "kms:Decrypt", e)
        try:
            same = hmac.compare_digest(out.plaintext, self.data_key)
        finally:
            _wipe(out.plaintext)
        if not same:
            return Check("decrypt", False,
                         "Decrypt returned a different data key than GenerateDataKey",
                         "the key does not round-trip: contact AWS support or the provider")
        return _ok("decrypt", "Decrypt of the generated data key returned the same key")

    def _encrypt(self) -> Check:
        try:
            self.kms.encrypt(self.key_arn, PROBE, self.context)
        except KmsError as e:
            return self._crypto_failure("encrypt", "kms:Encrypt", e)
        return _ok("encrypt", f"Encrypt with context {_ctx(self.context)}")

    # --- helpers ----------------------------------------------------------------------
    def _described(self) -> KeyDescription:
        assert self.description is not None
        return self.description

    def _crypto_failure(self, name: str, permission: str, e: KmsError) -> Check:
        if isinstance(e, KeyRevoked):
            if e.reason is RevocationReason.ACCESS_DENIED:
                fix = requirements.call(permission).fix(self.provider_account, self.tenant)
                return Check(name, False,
                             f"access denied: the provider lacks {permission} on the key "
                             f"(with context {_ctx(self.context)}), or a Deny refuses it",
                             f"{fix} Remove any Deny of {permission} that applies to it.")
            if e.reason is RevocationReason.DISABLED:
                return Check(name, False, f"{permission} refused: the key is disabled",
                             f"EnableKey (aws kms enable-key --key-id {self.key_arn})")
            if e.reason is RevocationReason.PENDING_DELETION:
                return Check(name, False,
                             f"{permission} refused: the key is pending deletion",
                             "CancelKeyDeletion then EnableKey")
            if e.reason is RevocationReason.NOT_FOUND:
                return Check(name, False, f"{permission} refused: the key no longer exists",
                             "create a new key and verify it")
            return Check(name, False, f"{permission} refused: {e.message}",
                         f"allow {permission} to {self.principal} in statement "
                         f"'{USAGE_SID}'")
        if isinstance(e, KmsUnavailable):
            return Check(name, False, f"KMS unreachable during {permission}: {e.message}",
                         "retry in a few minutes; if it persists, contact the provider")
        if isinstance(e, KmsInvalidCiphertext):
            return Check(name, False,
                         f"{permission}: the key could not decrypt the data key it generated",
                         "the key does not round-trip: contact AWS support or the provider")
        if e.kms_code == "InvalidKeyUsageException":
            return Check(name, False, f"{permission} refused: {e.message}",
                         f"create a new key with KeySpec {KEY_SPEC} and KeyUsage {KEY_USAGE}")
        return Check(name, False, f"{permission} failed: {e.message}",
                     "the provider's KMS settings or credentials are wrong: contact the "
                     "provider")


def verify_key(
    kms: Kms, key_arn: str, *, region: str, tenant: str | None = None,
    provider_account: str | None = None,
) -> VerifyReport:
    """Check, as the provider, that a customer's key is fit for a tenant, with fixes."""
    verifier = _Verifier(kms, key_arn, region, tenant, provider_account)
    checks = verifier.run()
    return VerifyReport(key_arn, tenant, checks, verifier.description)


def _ok(name: str, detail: str) -> Check:
    return Check(name, True, detail, "")


def _ctx(context: Mapping[str, str]) -> str:
    return json.dumps(dict(context), separators=(",", ":"), sort_keys=True)


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))
