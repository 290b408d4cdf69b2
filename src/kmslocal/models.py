"""The key service's state and rules: keys, states, policies, grants, rotation, deletion.

Protocol concerns (HTTP, JSON, signatures) live in ``responses``; this module sees
validated parameters and an authenticated caller, and either returns the response
members or raises a ``KMSError``. Every call, allowed or refused, lands in the usage
log through ``Backend.call``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kmslocal import crypto
from kmslocal.clock import Clock
from kmslocal.config import Config, account_of
from kmslocal.exceptions import (
    KMSError,
    access_denied,
    disabled,
    explicit_deny,
    invalid_ciphertext,
    invalid_state,
    malformed_policy,
    not_found,
    validation,
)
from kmslocal.params import Params
from kmslocal.policy import Decision, Policy, Request, default_key_policy, parse_policy
from kmslocal.storage import GrantRow, KeyRow, Storage
from kmslocal.trail import Publish, Trail, no_events

DAY = 86400.0

SYMMETRIC = "SYMMETRIC_DEFAULT"
_KEY_SPECS: dict[str, tuple[str, ...]] = {
    SYMMETRIC: ("ENCRYPT_DECRYPT",),
    "RSA_2048": ("ENCRYPT_DECRYPT", "SIGN_VERIFY"),
    "RSA_3072": ("ENCRYPT_DECRYPT", "SIGN_VERIFY"),
    "RSA_4096": ("ENCRYPT_DECRYPT", "SIGN_VERIFY"),
    "ECC_NIST_P256": ("SIGN_VERIFY", "KEY_AGREEMENT"),
    "ECC_NIST_P384": ("SIGN_VERIFY", "KEY_AGREEMENT"),
    "ECC_NIST_P521": ("SIGN_VERIFY", "KEY_AGREEMENT"),
    "ECC_SECG_P256K1": ("SIGN_VERIFY",),
    "HMAC_224": ("GENERATE_VERIFY_MAC",),
    "HMAC_256": ("GENERATE_VERIFY_MAC",),
    "HMAC_384": ("GENERATE_VERIFY_MAC",),
    "HMAC_512": ("GENERATE_VERIFY_MAC",),
}
_KEY_USAGES = ("ENCRYPT_DECRYPT", "SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT")
_ORIGINS = ("AWS_KMS", "EXTERNAL", "AWS_CLOUDHSM", "EXTERNAL_KEY_STORE")
_ENCRYPTION_ALGORITHMS = ("SYMMETRIC_DEFAULT", "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "SM2PKE")
GRANT_OPERATIONS = (
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "Sign", "Verify", "GetPublicKey", "CreateGrant", "RetireGrant", "DescribeKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateMac", "VerifyMac",
    "DeriveSharedSecret",
)
_SYMMETRIC_GRANT_OPS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "CreateGrant", "RetireGrant", "DescribeKey", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
})
# Constraints may sit on grants with these; they constrain only the cryptographic ones.
_CONSTRAINABLE_GRANT_OPS = frozenset({
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "DescribeKey",
    "RetireGrant",
})
_CRYPTO_GRANT_OPS = {
    "Decrypt", "Encrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext", "ReEncryptFrom",
    "ReEncryptTo", "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext",
}
MAX_ON_DEMAND_ROTATIONS = 25

# Calls that change a key's usability; they are delivered to the owner's event targets.
EVENT_OPERATIONS = frozenset({
    "DisableKey", "EnableKey", "ScheduleKeyDeletion", "CancelKeyDeletion", "PutKeyPolicy",
    "RevokeGrant", "RetireGrant", "RotateKeyOnDemand",
})
READ_ONLY_OPERATIONS = frozenset({
    "DescribeKey", "ListKeys", "ListAliases", "GetKeyRotationStatus", "ListKeyRotations",
    "GetKeyPolicy", "ListGrants", "ListResourceTags", "ListKeyPolicies", "ListRetirableGrants",
})

_KEY_ARN = re.compile(r"^arn:aws:kms:([a-z0-9-]+):(\d{12}):key/(.+)$")
_ALIAS_ARN = re.compile(r"^arn:aws:kms:([a-z0-9-]+):(\d{12}):(alias/.+)$")
_KEY_ID = re.compile(
    r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
)
_ALIAS_NAME = re.compile(r"^alias/[a-zA-Z0-9/_-]+$")
_PRINCIPAL = re.compile(r"^arn:aws:(iam|sts)::\d{12}:(root|user/.+|role/.+|assumed-role/.+)$")


@dataclass(frozen=True)
class Caller:
    arn: str
    access_key_id: str
    source_ip: str = "127.0.0.1"
    user_agent: str = ""

    @property
    def account(self) -> str:
        return account_of(self.arn)


@dataclass
class Call:
    """What one API call touched, for authorization and for the usage log."""

    caller: Caller
    operation: str
    request_id: str
    keys: list[KeyRow] = field(default_factory=list)


def _ts(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def material_id(key_id: str, version: int) -> str:
    """A stable, non-secret name for one version of a key's material."""
    return hashlib.sha256(f"{key_id}:{version}".encode()).hexdigest()


class Backend:
    def __init__(
        self, storage: Storage, root_key: crypto.RootKey, clock: Clock, config: Config,
        publish: Publish = no_events,
    ) -> None:
        self.storage = storage
        self.root_key = root_key
        self.clock = clock
        self.config = config
        self.region = config.region
        self.trail = Trail(storage, config, publish)
        self._policies: dict[str, Policy] = {}
        self._materials: dict[tuple[str, int], bytes] = {}
        self._ops: dict[str, Callable[[Call, Params], dict[str, Any]]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")
        }

    @property
    def operations(self) -> frozenset[str]:
        return frozenset(self._ops)

    # --- entry point ----------------------------------------------------------------
    def call(
        self, operation: str, raw: Mapping[str, Any], caller: Caller, request_id: str
    ) -> dict[str, Any]:
        self.tick()
        handler = self._ops.get(operation)
        if handler is None:
            raise KMSError("UnknownOperationException", "")
        call = Call(caller, operation, request_id)
        params = Params(raw)
        try:
            with self.storage.transaction():  # the call and its log record commit together
                result = handler(call, params)
                self._log(call, raw, result, None)
        except KMSError as err:
            with self.storage.transaction():  # a refusal changes nothing but the log
                self._log(call, raw, None, err)
            raise
        return result

    def _log(
        self, call: Call, raw: Mapping[str, Any], result: dict[str, Any] | None,
        err: KMSError | None,
    ) -> None:
        self.trail.record_call(
            call.caller, call.operation, call.request_id, self.clock.timestamp(), raw,
            result, err, call.keys, call.operation in READ_ONLY_OPERATIONS,
            emit_event=err is None and call.operation in EVENT_OPERATIONS,
        )

    # --- scheduled work: deletion at the window's end, automatic rotation -------------
    def tick(self) -> None:
        now = self.clock.timestamp()
        to_delete, to_rotate = self.storage.keys_due(now)
        for key in to_delete:
            with self.storage.transaction():
                self.storage.delete_key(key.key_id)
                self.trail.record_service_event(
                    key, "DeleteKey", key.deletion_date or now, "KMS CMK Deletion"
                )
            self._materials = {k: v for k, v in self._materials.items() if k[0] != key.key_id}
        for key in to_rotate:
            with self.storage.transaction():
                assert key.next_rotation is not None
                assert key.rotation_period is not None
                for _ in range(1000):
                    if key.next_rotation > now:
                        break
                    self._add_material(key, key.next_rotation, "AUTOMATIC")
                    self.trail.record_service_event(
                        key, "RotateKey", key.next_rotation, "KMS CMK Rotation"
                    )
                    key.next_rotation += key.rotation_period * DAY
                self.storage.update_key(key)

    # --- helpers --------------------------------------------------------------------
    def _arn(self, account: str, key_id: str) -> str:
        return f"arn:aws:kms:{self.region}:{account}:key/{key_id}"

    def _resolve(self, call: Call, ref: str, *, cross_account: bool = False) -> KeyRow:
        account = call.caller.account
        alias: str | None = None
        if m := _KEY_ARN.match(ref):
            region, account, key_id = m.groups()
            if region != self.region:
                raise not_found(f"Invalid arn {ref}: it is not in region {self.region}")
        elif m := _ALIAS_ARN.match(ref):
            region, account, alias = m.groups()
            if region != self.region:
                raise not_found(f"Invalid arn {ref}: it is not in region {self.region}")
        elif ref.startswith("alias/"):
            alias = ref
        elif _KEY_ID.match(ref):
            key_id = ref
        else:
            raise not_found(f"Invalid keyId '{ref}'")
        if account != call.caller.account and not cross_account:
            foreign = self.storage.get_key(key_id, account) if alias is None else None
            if foreign is not None:
                call.keys.append(foreign)  # the owner sees the attempt in its usage log
            raise not_found(f"Key '{ref}' does not exist")
        if alias is not None:
            found = self.storage.get_alias(account, alias)
            if found is None:
                raise not_found(f"Alias arn:aws:kms:{self.region}:{account}:{alias} is not found.")
            key_id = found[0]
        key = self.storage.get_key(key_id, account)
        if key is None:
            raise not_found(f"Key '{self._arn(account, key_id)}' does not exist")
        call.keys.append(key)
        return key

    def _policy(self, key: KeyRow) -> Policy:
        policy = self._policies.get(key.policy)
        if policy is None:
            if len(self._policies) > 1024:
                self._policies.clear()
            policy = self._policies[key.policy] = parse_policy(key.policy)
        return policy

    def _conditions(
        self, call: Call, key: KeyRow, context: Mapping[str, str] | None,
        extra: Mapping[str, list[str]] | None = None,
    ) -> dict[str, list[str]]:
        values: dict[str, list[str]] = {
            "kms:calleraccount": [call.caller.account],
            "aws:principalarn": [call.caller.arn],
            "aws:principalaccount": [call.caller.account],
            "aws:principaltype": ["User" if ":user/" in call.caller.arn else "AssumedRole"],
            "kms:keyspec": [key.key_spec],
            "kms:keyusage": [key.key_usage],
            "kms:keyorigin": [key.origin],
            "kms:multiregion": ["true" if key.multi_region else "false"],
        }
        if context is not None:
            for k, v in context.items():
                values[f"kms:encryptioncontext:{k.lower()}"] = [v]
            values["kms:encryptioncontextkeys"] = list(context)
        if extra:
            values.update(extra)
        return values

    def _authorize(
        self, call: Call, key: KeyRow, action: str, *, context: Mapping[str, str] | None = None,
        extra: Mapping[str, list[str]] | None = None, grant_op: str | None = None,
    ) -> None:
        request = Request(
            call.caller.arn, call.caller.account, f"kms:{action}",
            self._conditions(call, key, context, extra),
        )
        decision = self._policy(key).evaluate(request)
        if decision is Decision.DENY:
            raise explicit_deny(call.caller.arn, f"kms:{action}", key.arn)
        if decision is Decision.ALLOW:
            return
        op = grant_op or action
        for grant in self.storage.grants_for_key(key.key_id):
            if self._grant_allows(grant, call.caller, op, context):
                return
        raise access_denied(call.caller.arn, f"kms:{action}", key.arn)

    @staticmethod
    def _grant_allows(
        grant: GrantRow, caller: Caller, op: str, context: Mapping[str, str] | None
    ) -> bool:
        grantee_ok = grant.grantee == caller.arn or grant.grantee == (
            f"arn:aws:iam::{caller.account}:root"
        )
        if not grantee_ok or op not in grant.operations:
            return False
        if op not in _CRYPTO_GRANT_OPS or not grant.constraints:
            return True
        # Context keys compare without case, values with it, as AWS does for constraints.
        ctx = {k.lower(): v for k, v in (context or {}).items()}
        equals = grant.constraints.get("EncryptionContextEquals")
        if equals is not None and ctx != {k.lower(): v for k, v in equals.items()}:
            return False
        subset = grant.constraints.get("EncryptionContextSubset")
        return subset is None or all(ctx.get(k.lower()) == v for k, v in subset.items())

    @staticmethod
    def _require_enabled(key: KeyRow) -> None:
        if key.state == "Disabled":
            raise disabled(key.arn)
        if key.state != "Enabled":
            raise invalid_state(f"{key.arn} is pending deletion." if key.state ==
                                "PendingDeletion" else f"{key.arn} is {key.state}.")

    @staticmethod
    def _require_not_pending_deletion(key: KeyRow) -> None:
        if key.state == "PendingDeletion":
            raise invalid_state(f"{key.arn} is pending deletion.")

    def _require_symmetric(self, key: KeyRow, algorithm: str | None) -> None:
        if key.key_spec != SYMMETRIC or key.key_usage != "ENCRYPT_DECRYPT":
            raise KMSError(
                "InvalidKeyUsageException",
                f"{key.arn} key usage is {key.key_usage}, key spec is {key.key_spec}; "
                "this operation needs a symmetric encryption key",
            )
        if algorithm not in (None, SYMMETRIC):
            raise KMSError(
                "InvalidKeyUsageException",
                f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}.",
            )

    def _add_material(self, key: KeyRow, created: float, rotation_type: str | None) -> int:
        version = (self.storage.latest_material_version(key.key_id) or 0) + 1
        material = crypto.new_material()
        label = f"{key.key_id}:{version}".encode()
        self.storage.add_material(
            key.key_id, version, created, rotation_type, self.root_key.wrap(material, label)
        )
        self._materials[(key.key_id, version)] = material
        return version

    def _material(self, key_id: str, version: int) -> bytes | None:
        cached = self._materials.get((key_id, version))
        if cached is not None:
            return cached
        wrapped = self.storage.get_material(key_id, version)
        if wrapped is None:
            return None
        material = self.root_key.unwrap(wrapped, f"{key_id}:{version}".encode())
        self._materials[(key_id, version)] = material
        return material

    def _encrypt(
        self, key: KeyRow, plaintext: bytes, context: Mapping[str, str]
    ) -> tuple[bytes, str]:
        """Seal under the newest material; returns the blob and that material's id."""
        version = self.storage.latest_material_version(key.key_id)
        if version is None:
            raise invalid_state(f"{key.arn} has no key material.")
        material = self._material(key.key_id, version)
        assert material is not None
        blob = crypto.seal(material, key.key_id, version, plaintext, context)
        return blob, material_id(key.key_id, version)

    def _decrypt(
        self, call: Call, p: Params, blob_name: str, key_name: str, context_name: str,
        algorithm_name: str, action: str,
    ) -> tuple[KeyRow, bytes, str]:
        """The shared source half of Decrypt and ReEncrypt."""
        blob = p.blob(blob_name, required=True, max_len=crypto.MAX_BLOB)
        assert blob is not None
        key_ref = p.string(key_name)
        context = p.context(context_name)
        algorithm = p.string(algorithm_name, choices=_ENCRYPTION_ALGORITHMS)
        p.str_list("GrantTokens")
        try:
            header = crypto.parse_header(blob)
        except crypto.CiphertextError:
            raise invalid_ciphertext() from None
        blob_key_id = str(uuid.UUID(bytes=header.key_bytes))
        owner = self.storage.get_key(blob_key_id)
        if owner is None:
            mrk = "mrk-" + header.key_bytes.hex()
            owner = self.storage.get_key(mrk)
        if key_ref is not None:
            named = self._resolve(call, key_ref, cross_account=True)
            if owner is None or named.key_id != owner.key_id:
                raise KMSError(
                    "IncorrectKeyException",
                    "The key ID in the request does not identify a CMK that can perform this "
                    "operation.",
                )
            key = named
        else:
            if owner is None:
                raise invalid_ciphertext()
            key = owner
            call.keys.append(key)
        self._authorize(call, key, action, context=context)
        self._require_symmetric(key, algorithm)
        self._require_enabled(key)
        material = self._material(key.key_id, header.material_version)
        if material is None:
            raise invalid_ciphertext()
        try:
            plaintext = crypto.open_blob(material, blob, context)
        except crypto.CiphertextError:
            raise invalid_ciphertext() from None
        return key, plaintext, material_id(key.key_id, header.material_version)

    def _dry_run(self, p: Params) -> None:
        if p.boolean("DryRun"):
            raise KMSError(
                "DryRunOperationException",
                "The request would have succeeded, but the DryRun option is set.",
            )

    def _metadata(self, key: KeyRow) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "AWSAccountId": key.account,
            "KeyId": key.key_id,
            "Arn": key.arn,
            "CreationDate": _ts(key.created),
            "Enabled": key.state == "Enabled",
            "Description": key.description,
            "KeyUsage": key.key_usage,
            "KeyState": key.state,
            "Origin": key.origin,
            "KeyManager": "CUSTOMER",
            "CustomerMasterKeySpec": key.key_spec,
            "KeySpec": key.key_spec,
            "MultiRegion": bool(key.multi_region),
        }
        if key.deletion_date is not None:
            meta["DeletionDate"] = _ts(key.deletion_date)
        if key.key_usage == "ENCRYPT_DECRYPT":
            meta["EncryptionAlgorithms"] = (
                [SYMMETRIC] if key.key_spec == SYMMETRIC
                else ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
            )
        elif key.key_usage == "SIGN_VERIFY":
            meta["SigningAlgorithms"] = (
                ["RSASSA_PSS_SHA_256", "RSASSA_PKCS1_V1_5_SHA_256"]
                if key.key_spec.startswith("RSA") else ["ECDSA_SHA_256"]
            )
        elif key.key_usage == "GENERATE_VERIFY_MAC":
            meta["MacAlgorithms"] = [key.key_spec.replace("HMAC_", "HMAC_SHA_")]
        if key.multi_region:
            meta["MultiRegionConfiguration"] = {
                "MultiRegionKeyType": "PRIMARY",
                "PrimaryKey": {"Arn": key.arn, "Region": self.region},
                "ReplicaKeys": [],
            }
        return meta

    def _check_new_policy(self, call: Call, key: KeyRow, text: str, bypass: bool) -> None:
        policy = parse_policy(text)
        if bypass:
            return
        request = Request(
            call.caller.arn, call.caller.account, "kms:PutKeyPolicy",
            self._conditions(call, key, None),
        )
        if policy.evaluate(request) is not Decision.ALLOW:
            raise malformed_policy(
                "The new key policy will not allow you to update the key policy in the future."
            )

    @staticmethod
    def _page(
        items: list[Any], p: Params, default: int, hi: int
    ) -> tuple[list[Any], dict[str, Any]]:
        limit = p.integer("Limit", lo=1, hi=hi) or default
        marker = p.string("Marker", max_len=1024)
        start = 0
        if marker is not None:
            try:
                start = int(base64.urlsafe_b64decode(marker.encode()).decode())
            except (ValueError, UnicodeDecodeError):
                raise KMSError("InvalidMarkerException", "Invalid marker") from None
        page = items[start : start + limit]
        more = start + limit < len(items)
        tail: dict[str, Any] = {"Truncated": more}
        if more:
            tail["NextMarker"] = base64.urlsafe_b64encode(str(start + limit).encode()).decode()
        return page, tail

    # --- keys -----------------------------------------------------------------------
    def op_CreateKey(self, call: Call, p: Params) -> dict[str, Any]:
        spec = p.string("KeySpec", choices=tuple(_KEY_SPECS)) or p.string(
            "CustomerMasterKeySpec", choices=tuple(_KEY_SPECS)
        ) or SYMMETRIC
        usage = p.string("KeyUsage", choices=_KEY_USAGES) or _KEY_SPECS[spec][0]
        origin = p.string("Origin", choices=_ORIGINS) or "AWS_KMS"
        description = p.string("Description", min_len=0, max_len=8192) or ""
        multi_region = p.boolean("MultiRegion")
        policy_text = p.string("Policy", max_len=32768)
        bypass = p.boolean("BypassPolicyLockoutSafetyCheck")
        tags = p.objects("Tags")
        if usage not in _KEY_SPECS[spec]:
            raise validation(f"KeyUsage {usage} is not compatible with KeySpec {spec}")
        if origin in ("AWS_CLOUDHSM", "EXTERNAL_KEY_STORE"):
            raise KMSError(
                "UnsupportedOperationException", "kmslocal has no custom key stores"
            )
        if p.string("CustomKeyStoreId") is not None:
            raise KMSError("CustomKeyStoreNotFoundException", "kmslocal has no custom key stores")
        if origin == "EXTERNAL" and spec != SYMMETRIC:
            raise validation("Only symmetric keys can have imported key material in kmslocal")
        account = call.caller.account
        key_id = "mrk-" + uuid.uuid4().hex if multi_region else str(uuid.uuid4())
        now = self.clock.timestamp()
        key = KeyRow(
            key_id=key_id, account=account, region=self.region, arn=self._arn(account, key_id),
            created=now, description=description, key_usage=usage, key_spec=spec,
            origin=origin, multi_region=int(multi_region),
            state="PendingImport" if origin == "EXTERNAL" else "Enabled", deletion_date=None,
            pending_window=None, policy=policy_text or default_key_policy(account),
            rotation_period=None, next_rotation=None,
        )
        if policy_text is not None:
            self._check_new_policy(call, key, policy_text, bypass)
        self._put_tags(key, tags)
        self.storage.insert_key(key)
        call.keys.append(key)
        if origin == "AWS_KMS" and spec == SYMMETRIC:
            self._add_material(key, now, None)
        return {"KeyMetadata": self._metadata(key)}

    def op_DescribeKey(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"), cross_account=True)
        p.str_list("GrantTokens")
        self._authorize(call, key, "DescribeKey")
        return {"KeyMetadata": self._metadata(key)}

    def op_ListKeys(self, call: Call, p: Params) -> dict[str, Any]:
        keys, tail = self._page(self.storage.list_keys(call.caller.account), p, 100, 1000)
        return {"Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for k in keys], **tail}

    def op_UpdateKeyDescription(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        description = p.string("Description", required=True, min_len=0, max_len=8192)
        self._authorize(call, key, "UpdateKeyDescription")
        self._require_not_pending_deletion(key)
        key.description = description or ""
        self.storage.update_key(key)
        return {}

    def op_EnableKey(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "EnableKey")
        if key.state in ("PendingDeletion", "PendingImport"):
            raise invalid_state(f"{key.arn} is {key.state}.")
        key.state = "Enabled"
        self.storage.update_key(key)
        return {}

    def op_DisableKey(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "DisableKey")
        if key.state in ("PendingDeletion", "PendingImport"):
            raise invalid_state(f"{key.arn} is {key.state}.")
        key.state = "Disabled"
        self.storage.update_key(key)
        return {}

    def op_ScheduleKeyDeletion(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        window = p.integer("PendingWindowInDays", lo=-(2**31), hi=2**31)
        window = 30 if window is None else window
        if not 7 <= window <= 30:
            raise validation(
                f"1 validation error detected: Value '{window}' at 'pendingWindowInDays' failed "
                "to satisfy constraint: Member must have value between 7 and 30"
            )
        self._authorize(call, key, "ScheduleKeyDeletion")
        self._require_not_pending_deletion(key)
        key.state = "PendingDeletion"
        key.deletion_date = self.clock.timestamp() + window * DAY
        key.pending_window = window
        self.storage.update_key(key)
        return {
            "KeyId": key.arn, "DeletionDate": _ts(key.deletion_date), "KeyState": key.state,
            "PendingWindowInDays": window,
        }

    def op_CancelKeyDeletion(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "CancelKeyDeletion")
        if key.state != "PendingDeletion":
            raise invalid_state(f"{key.arn} is not pending deletion.")
        key.state = "Disabled"
        key.deletion_date = None
        key.pending_window = None
        self.storage.update_key(key)
        return {"KeyId": key.arn}

    # --- cryptographic operations -----------------------------------------------------
    def op_Encrypt(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"), cross_account=True)
        plaintext = p.blob("Plaintext", required=True, max_len=4096)
        assert plaintext is not None
        context = p.context("EncryptionContext")
        algorithm = p.string("EncryptionAlgorithm", choices=_ENCRYPTION_ALGORITHMS)
        p.str_list("GrantTokens")
        self._authorize(call, key, "Encrypt", context=context)
        self._require_symmetric(key, algorithm)
        self._require_enabled(key)
        self._dry_run(p)
        blob, _ = self._encrypt(key, plaintext, context)
        return {
            "CiphertextBlob": base64.b64encode(blob).decode(), "KeyId": key.arn,
            "EncryptionAlgorithm": SYMMETRIC,
        }

    def op_Decrypt(self, call: Call, p: Params) -> dict[str, Any]:
        key, plaintext, material = self._decrypt(
            call, p, "CiphertextBlob", "KeyId", "EncryptionContext", "EncryptionAlgorithm",
            "Decrypt",
        )
        if p.obj("Recipient") is not None:
            raise KMSError("UnsupportedOperationException", "kmslocal does not support Recipient")
        self._dry_run(p)
        return {
            "KeyId": key.arn, "Plaintext": base64.b64encode(plaintext).decode(),
            "EncryptionAlgorithm": SYMMETRIC, "KeyMaterialId": material,
        }

    def _data_key_size(self, p: Params) -> int:
        size = p.integer("NumberOfBytes", lo=1, hi=1024)
        spec = p.string("KeySpec", choices=("AES_256", "AES_128"))
        if (size is None) == (spec is None):
            raise validation("Please specify either number of bytes or key spec.")
        return size if size is not None else {"AES_256": 32, "AES_128": 16}[str(spec)]

    def _generate(
        self, call: Call, p: Params, action: str
    ) -> tuple[KeyRow, bytes, bytes, str]:
        key = self._resolve(call, p.req_str("KeyId"), cross_account=True)
        context = p.context("EncryptionContext")
        size = self._data_key_size(p)
        p.str_list("GrantTokens")
        self._authorize(call, key, action, context=context)
        self._require_symmetric(key, None)
        self._require_enabled(key)
        self._dry_run(p)
        data_key = secrets.token_bytes(size)
        return key, data_key, *self._encrypt(key, data_key, context)

    def op_GenerateDataKey(self, call: Call, p: Params) -> dict[str, Any]:
        if p.obj("Recipient") is not None:
            raise KMSError("UnsupportedOperationException", "kmslocal does not support Recipient")
        key, data_key, blob, material = self._generate(call, p, "GenerateDataKey")
        return {
            "CiphertextBlob": base64.b64encode(blob).decode(),
            "Plaintext": base64.b64encode(data_key).decode(), "KeyId": key.arn,
            "KeyMaterialId": material,
        }

    def op_GenerateDataKeyWithoutPlaintext(self, call: Call, p: Params) -> dict[str, Any]:
        key, _, blob, material = self._generate(call, p, "GenerateDataKeyWithoutPlaintext")
        return {
            "CiphertextBlob": base64.b64encode(blob).decode(), "KeyId": key.arn,
            "KeyMaterialId": material,
        }

    def op_ReEncrypt(self, call: Call, p: Params) -> dict[str, Any]:
        source, plaintext, source_material = self._decrypt(
            call, p, "CiphertextBlob", "SourceKeyId", "SourceEncryptionContext",
            "SourceEncryptionAlgorithm", "ReEncryptFrom",
        )
        dest = self._resolve(call, p.req_str("DestinationKeyId"), cross_account=True)
        context = p.context("DestinationEncryptionContext")
        algorithm = p.string("DestinationEncryptionAlgorithm", choices=_ENCRYPTION_ALGORITHMS)
        self._authorize(call, dest, "ReEncryptTo", context=context)
        self._require_symmetric(dest, algorithm)
        self._require_enabled(dest)
        self._dry_run(p)
        blob, dest_material = self._encrypt(dest, plaintext, context)
        return {
            "CiphertextBlob": base64.b64encode(blob).decode(), "SourceKeyId": source.arn,
            "KeyId": dest.arn, "SourceEncryptionAlgorithm": SYMMETRIC,
            "DestinationEncryptionAlgorithm": SYMMETRIC, "SourceKeyMaterialId": source_material,
            "DestinationKeyMaterialId": dest_material,
        }

    # --- rotation -------------------------------------------------------------------
    def _rotatable(self, key: KeyRow) -> None:
        if key.key_spec != SYMMETRIC or key.origin != "AWS_KMS":
            raise KMSError(
                "UnsupportedOperationException",
                f"{key.arn} does not support rotation: only symmetric keys with AWS_KMS origin "
                "rotate",
            )
        self._require_enabled(key)

    def op_EnableKeyRotation(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        period = p.integer("RotationPeriodInDays", lo=90, hi=2560) or 365
        self._authorize(call, key, "EnableKeyRotation")
        self._rotatable(key)
        key.rotation_period = period
        key.next_rotation = self.clock.timestamp() + period * DAY
        self.storage.update_key(key)
        return {}

    def op_DisableKeyRotation(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "DisableKeyRotation")
        self._rotatable(key)
        key.rotation_period = None
        key.next_rotation = None
        self.storage.update_key(key)
        return {}

    def op_GetKeyRotationStatus(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"), cross_account=True)
        self._authorize(call, key, "GetKeyRotationStatus")
        if key.key_spec != SYMMETRIC:
            raise KMSError("UnsupportedOperationException", f"{key.arn} does not rotate")
        self._require_not_pending_deletion(key)
        out: dict[str, Any] = {"KeyRotationEnabled": key.rotation_period is not None,
                               "KeyId": key.arn}
        if key.rotation_period is not None:
            out["RotationPeriodInDays"] = key.rotation_period
            out["NextRotationDate"] = _ts(key.next_rotation)
        return out

    def op_RotateKeyOnDemand(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "RotateKeyOnDemand")
        self._rotatable(key)
        on_demand = sum(1 for _, kind in self.storage.rotations(key.key_id) if kind == "ON_DEMAND")
        if on_demand >= MAX_ON_DEMAND_ROTATIONS:
            raise KMSError(
                "LimitExceededException",
                f"{key.arn} has reached the limit of {MAX_ON_DEMAND_ROTATIONS} on-demand "
                "rotations",
            )
        self._add_material(key, self.clock.timestamp(), "ON_DEMAND")
        return {"KeyId": key.arn}

    def op_ListKeyRotations(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "ListKeyRotations")
        if key.key_spec != SYMMETRIC:
            raise KMSError("UnsupportedOperationException", f"{key.arn} does not rotate")
        rotations, tail = self._page(self.storage.rotations(key.key_id), p, 100, 1000)
        return {
            "Rotations": [
                {"KeyId": key.arn, "RotationDate": _ts(created), "RotationType": kind}
                for created, kind in rotations
            ],
            **tail,
        }

    # --- key policy -----------------------------------------------------------------
    def _policy_name(self, p: Params) -> None:
        name = p.string("PolicyName", max_len=128)
        if name not in (None, "default"):
            raise not_found(f"Policy {name} does not exist: the only key policy is 'default'")

    def op_PutKeyPolicy(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._policy_name(p)
        text = p.req_str("Policy", max_len=32768)
        bypass = p.boolean("BypassPolicyLockoutSafetyCheck")
        self._authorize(call, key, "PutKeyPolicy")
        self._check_new_policy(call, key, text, bypass)
        key.policy = text
        self.storage.update_key(key)
        return {}

    def op_GetKeyPolicy(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._policy_name(p)
        self._authorize(call, key, "GetKeyPolicy")
        return {"Policy": key.policy, "PolicyName": "default"}

    def op_ListKeyPolicies(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "ListKeyPolicies")
        return {"PolicyNames": ["default"], "Truncated": False}

    # --- aliases --------------------------------------------------------------------
    def _alias_name(self, p: Params) -> str:
        name = p.req_str("AliasName", max_len=256)
        if not _ALIAS_NAME.match(name):
            raise validation(
                f"Alias name {name} must begin with 'alias/' and contain only alphanumeric "
                "characters, forward slashes (/), underscores (_) and dashes (-)"
            )
        if name.startswith("alias/aws/"):
            raise KMSError(
                "AccessDeniedException",
                "Alias names beginning with alias/aws/ are reserved for AWS managed keys",
            )
        return name

    def _alias_target(self, call: Call, p: Params) -> KeyRow:
        ref = p.req_str("TargetKeyId")
        if ref.startswith("alias/") or _ALIAS_ARN.match(ref):
            raise validation("TargetKeyId must identify a key, not an alias")
        key = self._resolve(call, ref)
        self._require_not_pending_deletion(key)
        return key

    def op_CreateAlias(self, call: Call, p: Params) -> dict[str, Any]:
        name = self._alias_name(p)
        key = self._alias_target(call, p)
        self._authorize(call, key, "CreateAlias")
        if self.storage.get_alias(call.caller.account, name) is not None:
            raise KMSError(
                "AlreadyExistsException",
                f"An alias with the name arn:aws:kms:{self.region}:{call.caller.account}:{name} "
                "already exists",
            )
        self.storage.put_alias(call.caller.account, name, key.key_id, self.clock.timestamp())
        return {}

    def op_UpdateAlias(self, call: Call, p: Params) -> dict[str, Any]:
        name = self._alias_name(p)
        key = self._alias_target(call, p)
        found = self.storage.get_alias(call.caller.account, name)
        if found is None:
            raise not_found(f"Alias {name} is not found.")
        self._authorize(call, key, "UpdateAlias")
        self.storage.put_alias(call.caller.account, name, key.key_id, self.clock.timestamp())
        return {}

    def op_DeleteAlias(self, call: Call, p: Params) -> dict[str, Any]:
        name = self._alias_name(p)
        found = self.storage.get_alias(call.caller.account, name)
        if found is None:
            raise not_found(
                f"Alias arn:aws:kms:{self.region}:{call.caller.account}:{name} is not found."
            )
        key = self.storage.get_key(found[0])
        assert key is not None
        call.keys.append(key)
        self._authorize(call, key, "DeleteAlias")
        self.storage.delete_alias(call.caller.account, name)
        return {}

    def op_ListAliases(self, call: Call, p: Params) -> dict[str, Any]:
        key_ref = p.string("KeyId")
        aliases = self.storage.list_aliases(call.caller.account)
        if key_ref is not None:
            key = self._resolve(call, key_ref)
            aliases = [a for a in aliases if a[1] == key.key_id]
        page, tail = self._page(aliases, p, 50, 100)
        return {
            "Aliases": [
                {
                    "AliasName": name,
                    "AliasArn": f"arn:aws:kms:{self.region}:{call.caller.account}:{name}",
                    "TargetKeyId": key_id, "CreationDate": _ts(created),
                    "LastUpdatedDate": _ts(updated),
                }
                for name, key_id, created, updated in page
            ],
            **tail,
        }

    # --- grants ---------------------------------------------------------------------
    def op_CreateGrant(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"), cross_account=True)
        grantee = p.req_str("GranteePrincipal", max_len=256)
        retiring = p.string("RetiringPrincipal", max_len=256)
        operations = p.str_list("Operations", required=True)
        constraints = p.obj("Constraints")
        name = p.string("Name", max_len=256) or ""
        p.str_list("GrantTokens")
        for principal in filter(None, (grantee, retiring)):
            if not _PRINCIPAL.match(principal):
                raise validation(f"Invalid principal {principal}")
        if not operations or any(op not in GRANT_OPERATIONS for op in operations):
            raise validation(f"Operations must be a non-empty subset of {list(GRANT_OPERATIONS)}")
        if key.key_spec == SYMMETRIC and not set(operations) <= _SYMMETRIC_GRANT_OPS:
            unsupported = sorted(set(operations) - _SYMMETRIC_GRANT_OPS)
            raise validation(f"Operations {unsupported} are not supported by {key.arn}")
        normalized = self._grant_constraints(constraints, operations)
        self._authorize(
            call, key, "CreateGrant", grant_op="CreateGrant",
            extra={
                "kms:grantisforawsresource": ["false"],
                "kms:grantoperations": list(operations),
                "kms:granteeprincipal": [grantee],
                **({"kms:retiringprincipal": [retiring]} if retiring else {}),
            },
        )
        self._require_not_pending_deletion(key)
        self._dry_run(p)
        grant_id = secrets.token_hex(32)
        token = base64.urlsafe_b64encode(secrets.token_bytes(48)).decode()
        self.storage.add_grant(GrantRow(
            grant_id, key.key_id, name, grantee, retiring, tuple(operations), normalized,
            call.caller.account, self.clock.timestamp(), token,
        ))
        return {"GrantToken": token, "GrantId": grant_id}

    @staticmethod
    def _grant_constraints(
        constraints: dict[str, Any] | None, operations: Iterable[str]
    ) -> dict[str, dict[str, str]] | None:
        if not constraints:
            return None
        out: dict[str, dict[str, str]] = {}
        for name, value in constraints.items():
            if name not in ("EncryptionContextSubset", "EncryptionContextEquals"):
                raise validation(f"Unknown grant constraint {name}")
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise validation(f"{name} must be a map of strings")
            out[name] = dict(value)
        ops = set(operations)
        if not ops <= _CONSTRAINABLE_GRANT_OPS or not ops & _CRYPTO_GRANT_OPS:
            raise validation(
                "Grant constraints apply only to grants for cryptographic operations with a "
                "symmetric key"
            )
        return out

    def _grant_view(self, key: KeyRow, g: GrantRow) -> dict[str, Any]:
        view: dict[str, Any] = {
            "KeyId": key.arn, "GrantId": g.grant_id, "Name": g.name,
            "CreationDate": _ts(g.created), "GranteePrincipal": g.grantee,
            "IssuingAccount": f"arn:aws:iam::{g.issuing_account}:root",
            "Operations": list(g.operations),
        }
        if g.retiring:
            view["RetiringPrincipal"] = g.retiring
        if g.constraints:
            view["Constraints"] = g.constraints
        return view

    def op_ListGrants(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"), cross_account=True)
        grant_id = p.string("GrantId", max_len=128)
        grantee = p.string("GranteePrincipal", max_len=256)
        self._authorize(call, key, "ListGrants", extra={"kms:grantisforawsresource": ["false"]})
        grants = [
            g for g in self.storage.grants_for_key(key.key_id)
            if (grant_id is None or g.grant_id == grant_id)
            and (grantee is None or g.grantee == grantee)
        ]
        page, tail = self._page(grants, p, 50, 100)
        return {"Grants": [self._grant_view(key, g) for g in page], **tail}

    def op_ListRetirableGrants(self, call: Call, p: Params) -> dict[str, Any]:
        principal = p.req_str("RetiringPrincipal", max_len=256)
        grants = self.storage.grants_for_retiring(principal)
        page, tail = self._page(grants, p, 50, 100)
        views = []
        for g in page:
            key = self.storage.get_key(g.key_id)
            if key is not None:
                views.append(self._grant_view(key, g))
        return {"Grants": views, **tail}

    def op_RevokeGrant(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"), cross_account=True)
        grant_id = p.req_str("GrantId", max_len=128)
        self._authorize(call, key, "RevokeGrant", extra={"kms:grantisforawsresource": ["false"]})
        if not any(g.grant_id == grant_id for g in self.storage.grants_for_key(key.key_id)):
            raise KMSError("InvalidGrantIdException", f"Grant {grant_id} does not exist")
        self._dry_run(p)
        self.storage.delete_grant(grant_id)
        return {}

    def op_RetireGrant(self, call: Call, p: Params) -> dict[str, Any]:
        token = p.string("GrantToken", max_len=8192)
        key_ref = p.string("KeyId")
        grant_id = p.string("GrantId", max_len=128)
        grant: GrantRow | None
        if token is not None:
            grant = self.storage.grant_by_token(token)
            if grant is None:
                raise KMSError("InvalidGrantTokenException", "Invalid grant token")
            key = self.storage.get_key(grant.key_id)
            assert key is not None
            call.keys.append(key)
        elif key_ref is not None and grant_id is not None:
            key = self._resolve(call, key_ref, cross_account=True)
            grant = next(
                (g for g in self.storage.grants_for_key(key.key_id) if g.grant_id == grant_id),
                None,
            )
            if grant is None:
                raise KMSError("InvalidGrantIdException", f"Grant {grant_id} does not exist")
        else:
            raise validation("Specify either GrantToken, or both KeyId and GrantId")
        allowed = call.caller.arn == grant.retiring or (
            "RetireGrant" in grant.operations
            and self._grant_allows(grant, call.caller, "RetireGrant", None)
        )
        if not allowed:
            raise access_denied(call.caller.arn, "kms:RetireGrant", key.arn)
        self._dry_run(p)
        self.storage.delete_grant(grant.grant_id)
        return {}

    # --- tags -----------------------------------------------------------------------
    def _put_tags(self, key: KeyRow, tags: list[dict[str, Any]]) -> None:
        for tag in tags:
            k, v = tag.get("TagKey"), tag.get("TagValue")
            if not isinstance(k, str) or not isinstance(v, str) or not 1 <= len(k) <= 128 \
                    or len(v) > 256:
                raise KMSError("TagException", "Each tag needs a TagKey (1-128) and TagValue")
            if k.startswith("aws:"):
                raise KMSError("TagException", "Tag keys beginning with aws: are reserved")
        for tag in tags:
            self.storage.put_tag(key.key_id, tag["TagKey"], tag["TagValue"])

    def op_TagResource(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        tags = p.objects("Tags", required=True)
        self._authorize(call, key, "TagResource")
        self._require_not_pending_deletion(key)
        self._put_tags(key, tags)
        return {}

    def op_UntagResource(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        names = p.str_list("TagKeys", required=True)
        self._authorize(call, key, "UntagResource")
        self._require_not_pending_deletion(key)
        for name in names:
            self.storage.delete_tag(key.key_id, name)
        return {}

    def op_ListResourceTags(self, call: Call, p: Params) -> dict[str, Any]:
        key = self._resolve(call, p.req_str("KeyId"))
        self._authorize(call, key, "ListResourceTags")
        tags, tail = self._page(self.storage.tags(key.key_id), p, 50, 50)
        return {"Tags": [{"TagKey": k, "TagValue": v} for k, v in tags], **tail}
