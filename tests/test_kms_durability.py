"""kmslocal keeps its state across restarts, keeps secrets off disk, and hides dev controls.

kmslocal only, each test on a server of its own (the shared one must not restart).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.kmslocal_harness import (
    CUSTOMER,
    PROVIDER,
    THIRD,
    KmsLocal,
    write_config,
)

DAY = 86400
CONTEXT = {"cmek:tenant": "acme-durable", "cmek:category": "backups"}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KmsLocal]:
    local = KmsLocal(tmp_path / "data", write_config(tmp_path / "kmslocal.toml", None))
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _policy() -> str:
    return json.dumps({
        "Version": "2012-10-17",
        "Id": "durable-policy",
        "Statement": [
            {"Sid": "Owner", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::222222222222:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "Provider use", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::111111111111:root"},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey*",
                        "kms:DescribeKey"],
             "Resource": "*"},
        ],
    })


def _trail(server: KmsLocal, arn: str) -> list[dict[str, Any]]:
    trail = server.client(CUSTOMER, "cloudtrail")
    attrs = [{"AttributeKey": "ResourceName", "AttributeValue": arn}]
    events: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        page = trail.lookup_events(
            LookupAttributes=attrs, **({"NextToken": token} if token else {})
        )
        events += page["Events"]
        token = page.get("NextToken")
        if not token:
            return events


def _events(server: KmsLocal, arn: str) -> list[tuple[str, str, str]]:
    return [(e["EventId"], e["EventName"], e["CloudTrailEvent"]) for e in _trail(server, arn)]


def _clock(server: KmsLocal) -> dt.datetime:
    now = server.dev_call("GET", "/_kmslocal/clock")["now"]
    return dt.datetime.fromisoformat(str(now).replace("Z", "+00:00"))


def _snapshot(server: KmsLocal, arn: str, alias: str) -> dict[str, Any]:
    c = server.client(CUSTOMER)
    return {
        "metadata": c.describe_key(KeyId=arn)["KeyMetadata"],
        "policy": c.get_key_policy(KeyId=arn, PolicyName="default")["Policy"],
        "aliases": [a for a in c.list_aliases(KeyId=arn)["Aliases"] if a["AliasName"] == alias],
        "grants": c.list_grants(KeyId=arn)["Grants"],
        "tags": c.list_resource_tags(KeyId=arn)["Tags"],
        "rotation": {k: v for k, v in c.get_key_rotation_status(KeyId=arn).items()
                     if k != "ResponseMetadata"},
        "rotations": c.list_key_rotations(KeyId=arn)["Rotations"],
        "by_alias": c.describe_key(KeyId=alias)["KeyMetadata"]["Arn"],
    }


def test_state_and_usage_log_survive_restart(server: KmsLocal) -> None:
    c = server.client(CUSTOMER)
    key = c.create_key(
        Policy=_policy(), Description="durable key",
        Tags=[{"TagKey": "team", "TagValue": "cmek"}, {"TagKey": "env", "TagValue": "test"}],
    )["KeyMetadata"]
    arn = key["Arn"]
    alias = f"alias/durable-{uuid.uuid4().hex[:12]}"
    c.create_alias(AliasName=alias, TargetKeyId=arn)
    grant = c.create_grant(
        KeyId=arn, GranteePrincipal=THIRD[0], Operations=["Decrypt", "Encrypt"],
        Name="durable-grant", Constraints={"EncryptionContextSubset": CONTEXT},
    )
    c.enable_key_rotation(KeyId=arn, RotationPeriodInDays=180)
    before_rotation = c.encrypt(KeyId=arn, Plaintext=b"made before", EncryptionContext=CONTEXT)
    c.rotate_key_on_demand(KeyId=arn)
    after_rotation = server.client(PROVIDER).encrypt(
        KeyId=arn, Plaintext=b"made after", EncryptionContext=CONTEXT
    )
    before = _snapshot(server, arn, alias)
    assert sorted(t["TagKey"] for t in before["tags"]) == ["env", "team"]
    assert [a["TargetKeyId"] for a in before["aliases"]] == [key["KeyId"]]
    assert before["rotation"]["KeyRotationEnabled"] is True
    assert before["rotation"]["RotationPeriodInDays"] == 180
    assert [r["RotationType"] for r in before["rotations"]] == ["ON_DEMAND"]
    assert [g["GrantId"] for g in before["grants"]] == [grant["GrantId"]]
    trail = _events(server, arn)
    assert len(trail) >= 8

    server.restart()

    assert _events(server, arn) == trail  # read first: a lookup itself is not logged
    after = _snapshot(server, arn, alias)
    assert after == before
    c = server.client(CUSTOMER)
    for blob, text in ((before_rotation, b"made before"), (after_rotation, b"made after")):
        out = c.decrypt(CiphertextBlob=blob["CiphertextBlob"], EncryptionContext=CONTEXT)
        assert out["Plaintext"] == text
    # The grant (the only way in for the third account) still works, constraint included.
    other = server.client(THIRD)
    out = other.decrypt(CiphertextBlob=before_rotation["CiphertextBlob"], KeyId=arn,
                        EncryptionContext=CONTEXT)
    assert out["Plaintext"] == b"made before"
    with pytest.raises(ClientError) as caught:
        other.encrypt(KeyId=arn, Plaintext=b"x", EncryptionContext={"other": "ctx"})
    assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
    # New calls after the restart are logged after (newer than) the old ones.
    newest = _events(server, arn)
    assert len(newest) > len(trail)
    assert newest[-len(trail):] == trail


def test_pending_deletion_and_dev_clock_survive_restart(server: KmsLocal) -> None:
    c = server.client(CUSTOMER)
    key = c.create_key()["KeyMetadata"]
    scheduled = c.schedule_key_deletion(KeyId=key["Arn"], PendingWindowInDays=7)
    server.advance(3 * DAY)
    before = _clock(server)

    server.restart()

    after = _clock(server)
    assert dt.timedelta(0) <= after - before < dt.timedelta(seconds=60)
    ahead = after - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=3) - dt.timedelta(seconds=60) <= ahead
    assert ahead <= dt.timedelta(days=3) + dt.timedelta(seconds=60)
    c = server.client(CUSTOMER)
    meta = c.describe_key(KeyId=key["Arn"])["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"
    assert meta["DeletionDate"] == scheduled["DeletionDate"]

    server.advance(4 * DAY + 60)
    with pytest.raises(ClientError) as caught:
        c.describe_key(KeyId=key["Arn"])
    assert caught.value.response["Error"]["Code"] == "NotFoundException"
    names = [e["EventName"] for e in _trail(server, key["Arn"])]
    assert names[0] == "DeleteKey"

    server.restart()

    with pytest.raises(ClientError) as caught:
        server.client(CUSTOMER).describe_key(KeyId=key["Arn"])
    assert caught.value.response["Error"]["Code"] == "NotFoundException"


def test_root_key_file_is_private_and_32_bytes(server: KmsLocal) -> None:
    root = server.data_dir / "root.key"
    assert root.is_file()
    assert stat.S_IMODE(root.stat().st_mode) == 0o600
    assert len(root.read_bytes()) == 32


def _files(data_dir: Path) -> list[Path]:
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert files
    return files


def test_plaintext_data_keys_never_reach_disk(server: KmsLocal) -> None:
    c = server.client(CUSTOMER)
    key = c.create_key()["KeyMetadata"]
    data_key = c.generate_data_key(KeyId=key["Arn"], KeySpec="AES_256", EncryptionContext=CONTEXT)
    plaintext = f"plaintext-{uuid.uuid4()}".encode()
    blob = c.encrypt(KeyId=key["Arn"], Plaintext=plaintext)["CiphertextBlob"]
    assert c.decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext
    assert c.decrypt(
        CiphertextBlob=data_key["CiphertextBlob"], EncryptionContext=CONTEXT
    )["Plaintext"] == data_key["Plaintext"]
    secrets = {
        "data key": data_key["Plaintext"],
        "data key (base64)": base64.b64encode(data_key["Plaintext"]),
        "data key (hex)": data_key["Plaintext"].hex().encode(),
        "plaintext": plaintext,
        "plaintext (base64)": base64.b64encode(plaintext),
    }

    def scan() -> list[str]:
        names = [p.name for p in _files(server.data_dir)]
        assert any(n.endswith(".sqlite3") for n in names), names
        return [
            f"{what} in {path.name}"
            for path in _files(server.data_dir)
            for what, value in secrets.items()
            if value in path.read_bytes()
        ]

    assert scan() == []  # while running: the database, its -wal and -shm files
    server.stop()
    assert scan() == []  # after shutdown, once the log is checkpointed


def test_dev_controls_absent_without_dev(tmp_path: Path) -> None:
    local = KmsLocal(tmp_path / "data", write_config(tmp_path / "kmslocal.toml", None), dev=False)
    local.start()
    try:
        with httpx.Client(base_url=local.url, trust_env=False, timeout=10) as http:
            assert http.get("/_kmslocal/clock").status_code == 404
            assert http.post("/_kmslocal/clock", json={"advance_seconds": 60}).status_code == 404
            assert http.get("/_kmslocal/faults").status_code == 404
            spec = {"operations": ["Decrypt"], "error": "ThrottlingException"}
            assert http.post("/_kmslocal/faults", json=spec).status_code == 404
            assert http.delete("/_kmslocal/faults").status_code == 404
            health = http.get("/_kmslocal/health")
            assert health.status_code == 200
            assert health.json() == {"status": "ok"}
        # The refused fault did not take effect; the API works as usual.
        c = local.client(CUSTOMER)
        key = c.create_key()["KeyMetadata"]
        blob = c.encrypt(KeyId=key["Arn"], Plaintext=b"p")["CiphertextBlob"]
        assert c.decrypt(CiphertextBlob=blob)["Plaintext"] == b"p"
    finally:
        local.stop()


BAD_CONFIGS = {
    "not-toml": ('region = "us-west-2"\n[[principals]\narn = = "x"\n', "toml"),
    "malformed-principal-arn": (
        'region = "us-west-2"\n\n[[principals]]\narn = "arn:aws:iam::1234:user/short"\n'
        'access_key_id = "AKIAKMSLOCALBAD"\nsecret_access_key = "secret"\n',
        "arn",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_exits_with_one_line_message(tmp_path: Path, case: str) -> None:
    text, mentions = BAD_CONFIGS[case]
    config = tmp_path / "kmslocal.toml"
    config.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "kmslocal.cli", "serve", "--config", str(config), "--port", "0",
         "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert mentions in lines[0].lower()
    assert "listening" not in done.stdout
