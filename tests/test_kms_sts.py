"""STS GetCallerIdentity on kmslocal's endpoint, and the ``kmslocal`` command's own texts.

A tool learns which principal its credentials are with ``sts.get_caller_identity()``.
The conformance tests (fixture ``kms``) run against kmslocal and, when configured,
against AWS STS itself; raw requests are signed with botocore's own SigV4 signer so only
the thing under test is wrong.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import get_current_datetime
from botocore.config import Config as BotoConfig
from botocore.credentials import ReadOnlyCredentials
from botocore.exceptions import ClientError

import kmslocal
from kmslocal.sts import get_caller_identity
from tests.conftest import Target
from tests.kmslocal_harness import CUSTOMER, PROVIDER, PROVIDER_OTHER, KmsLocal

FORM = "application/x-www-form-urlencoded; charset=utf-8"
CALL = b"Action=GetCallerIdentity&Version=2011-06-15"
NS = "https://sts.amazonaws.com/doc/2011-06-15/"
ACCOUNT = re.compile(r"^\d{12}$")
USER_ID = re.compile(r"^AIDA[A-Z0-9]{17}$")
ROLE_ID = re.compile(r"^AROA[A-Z0-9]{17}$")


# --- helpers ------------------------------------------------------------------------


def _credentials(client: Any) -> ReadOnlyCredentials:
    creds: ReadOnlyCredentials = client._request_signer._credentials.get_frozen_credentials()
    return creds


def _sts(
    kms: Target, access_key: str | None, secret: str | None, token: str | None = None
) -> Any:
    """An STS client at kmslocal's URL, or at AWS's own STS endpoint for the region."""
    return boto3.client(
        "sts", endpoint_url=kms.local.url if kms.local is not None else None,
        region_name=kms.region, aws_access_key_id=access_key, aws_secret_access_key=secret,
        aws_session_token=token,
        config=BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}),
    )


def _sts_as(kms: Target, kms_client: Any) -> Any:
    """An STS client with the credentials of one of the target's KMS clients."""
    creds = _credentials(kms_client)
    return _sts(kms, creds.access_key, creds.secret_key, creds.token)


def _refusal(call: Callable[[], Any]) -> tuple[str, int, str]:
    """Run ``call``; it must raise a ClientError: its code, HTTP status and message."""
    with pytest.raises(ClientError) as info:
        call()
    response = info.value.response
    return (str(response["Error"]["Code"]), int(response["ResponseMetadata"]["HTTPStatusCode"]),
            str(response["Error"]["Message"]))


def _raw(kms: Target, body: bytes, *, sign: bool = True, service: str = "sts") -> httpx.Response:
    """POST ``body`` as the query protocol does, signed as the customer (or not at all)."""
    url = str(_sts_as(kms, kms.customer).meta.endpoint_url).rstrip("/") + "/"
    request = AWSRequest(method="POST", url=url, data=body, headers={"Content-Type": FORM})
    if sign:
        SigV4Auth(_credentials(kms.customer), service, kms.region).add_auth(request)
    prepared = request.prepare()
    with httpx.Client(trust_env=kms.local is None, timeout=30) as http:
        return http.post(url, content=body, headers=dict(prepared.headers.items()))


def _xml(response: httpx.Response, root_tag: str) -> ET.Element:
    """The body as STS writes it: text/xml in STS's namespace, the request id twice."""
    assert response.headers["content-type"] == "text/xml", response.headers
    request_id = response.headers["x-amzn-RequestId"]
    assert request_id
    root = ET.fromstring(response.text)  # noqa: S314 - the answer of the server under test
    assert root.tag == f"{{{NS}}}{root_tag}", response.text
    found = root.findtext(f"{{{NS}}}RequestId") or root.findtext(
        f"{{{NS}}}ResponseMetadata/{{{NS}}}RequestId"
    )
    assert found == request_id, response.text
    return root


def _xml_error(response: httpx.Response) -> tuple[str, str]:
    """STS's ``<ErrorResponse>``: checks its shape, returns (code, message)."""
    error = _xml(response, "ErrorResponse").find(f"{{{NS}}}Error")
    assert error is not None, response.text
    assert error.findtext(f"{{{NS}}}Type") == "Sender", response.text
    return error.findtext(f"{{{NS}}}Code") or "", error.findtext(f"{{{NS}}}Message") or ""


def _check_identity(identity: dict[str, Any], account: str) -> None:
    """What AWS returns for each kind of caller (GetCallerIdentity, STS API Reference)."""
    arn, user_id = identity["Arn"], identity["UserId"]
    assert identity["Account"] == account
    assert ACCOUNT.match(account)
    assert arn.split(":")[4] == account, arn
    if arn.startswith(f"arn:aws:iam::{account}:user/"):
        assert USER_ID.match(user_id), user_id
    elif arn.startswith(f"arn:aws:sts::{account}:assumed-role/"):
        role_id, _, session = user_id.partition(":")
        assert ROLE_ID.match(role_id), user_id
        assert arn.split("/")[-1] == session, (arn, user_id)
    else:
        assert arn == f"arn:aws:iam::{account}:root", identity
        assert user_id == account, identity


# --- identity -----------------------------------------------------------------------


def test_provider_and_customer_each_get_their_own_identity(kms: Target) -> None:
    provider = _sts_as(kms, kms.provider).get_caller_identity()
    customer = _sts_as(kms, kms.customer).get_caller_identity()
    _check_identity(provider, kms.provider_account)
    _check_identity(customer, kms.customer_account)
    assert provider["Arn"] != customer["Arn"]
    assert provider["UserId"] != customer["UserId"]
    assert provider["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert provider["ResponseMetadata"]["RequestId"]


def test_kmslocal_reports_a_role_as_its_session_and_a_user_as_itself(
    kmslocal: KmsLocal,
) -> None:
    provider = kmslocal.client(PROVIDER, "sts").get_caller_identity()
    customer = kmslocal.client(CUSTOMER, "sts").get_caller_identity()
    # The ids are derived from the principal ARN: they never change, across restarts too.
    assert {k: provider[k] for k in ("Arn", "UserId", "Account")} == {
        "Arn": "arn:aws:sts::111111111111:assumed-role/cmek-platform/kmslocal",
        "UserId": "AROAFAXT2TYRUQF6AJZ7E:kmslocal",
        "Account": "111111111111",
    }
    assert {k: customer[k] for k in ("Arn", "UserId", "Account")} == {
        "Arn": "arn:aws:iam::222222222222:user/key-admin",
        "UserId": "AIDADEMYY76Z2UCEYHOAV",
        "Account": "222222222222",
    }
    other = kmslocal.client(PROVIDER_OTHER, "sts").get_caller_identity()
    assert other["Account"] == provider["Account"]
    assert other["UserId"].split(":")[0] != provider["UserId"].split(":")[0]


def test_paths_are_kept_for_users_and_left_out_of_role_sessions() -> None:
    """AWS's assumed-role ARN names the role without its path; a user's ARN keeps it."""
    role = get_caller_identity("arn:aws:iam::123456789012:role/service-role/deployer")
    assert role["Arn"] == "arn:aws:sts::123456789012:assumed-role/deployer/kmslocal"
    user = get_caller_identity("arn:aws:iam::123456789012:user/ops/alice")
    assert user["Arn"] == "arn:aws:iam::123456789012:user/ops/alice"
    assert USER_ID.match(user["UserId"])


def test_response_is_the_xml_sts_writes(kms: Target) -> None:
    response = _raw(kms, CALL)
    assert response.status_code == 200, response.text
    result = _xml(response, "GetCallerIdentityResponse").find(f"{{{NS}}}GetCallerIdentityResult")
    assert result is not None, response.text
    members = {child.tag.removeprefix(f"{{{NS}}}"): child.text for child in result}
    assert set(members) == {"Arn", "UserId", "Account"}
    expected = _sts_as(kms, kms.customer).get_caller_identity()
    assert members == {k: expected[k] for k in members}


# --- refusals -------------------------------------------------------------------------


def test_wrong_secret_is_signature_does_not_match(kms: Target) -> None:
    creds = _credentials(kms.customer)
    secret = str(creds.secret_key)
    client = _sts(kms, creds.access_key, secret + "x", creds.token)
    code, status, message = _refusal(client.get_caller_identity)
    assert (code, status) == ("SignatureDoesNotMatch", 403)
    assert "signature" in message.lower()
    assert secret not in message


def test_unknown_access_key_is_invalid_client_token_id(kms: Target) -> None:
    client = _sts(kms, "AKIAUNKNOWNKMSLOCAL0", "whatever-secret")
    code, status, _ = _refusal(client.get_caller_identity)
    assert (code, status) == ("InvalidClientTokenId", 403)


def test_unsigned_request_is_missing_authentication_token(kms: Target) -> None:
    response = _raw(kms, CALL, sign=False)
    assert response.status_code == 403
    assert _xml_error(response)[0] == "MissingAuthenticationToken"


def test_signature_for_another_service_is_refused(kms: Target) -> None:
    response = _raw(kms, CALL, service="iam")
    assert response.status_code == 403
    code, message = _xml_error(response)
    assert code == "SignatureDoesNotMatch"
    assert "'sts'" in message


ACTIONS: dict[str, tuple[bytes, str, str]] = {
    # name: (body, code, message)
    "unknown-action": (b"Action=Nope&Version=2011-06-15", "InvalidAction",
                       "Could not find operation Nope for version 2011-06-15"),
    "no-version": (b"Action=GetCallerIdentity", "InvalidAction",
                   "Could not find operation GetCallerIdentity for version NO_VERSION_SPECIFIED"),
    "other-version": (b"Action=GetCallerIdentity&Version=2010-01-01", "InvalidAction",
                      "Could not find operation GetCallerIdentity for version 2010-01-01"),
    "no-action": (b"Version=2011-06-15", "MissingAction", ""),
}


@pytest.mark.parametrize("case", list(ACTIONS))
def test_action_and_version_must_name_an_sts_operation(kms: Target, case: str) -> None:
    body, expected_code, expected_message = ACTIONS[case]
    response = _raw(kms, body)
    assert response.status_code == 400, response.text
    code, message = _xml_error(response)
    assert code == expected_code
    assert expected_message in message


def _signing_offset(monkeypatch: pytest.MonkeyPatch, offset: dt.timedelta) -> None:
    """botocore signs as if its clock were ``offset`` away from the real one."""
    monkeypatch.setattr("botocore.auth.get_current_datetime",
                        lambda *args, **kwargs: get_current_datetime(*args, **kwargs) + offset)


@pytest.mark.parametrize("minutes", [-10, 10])
def test_signing_clock_within_fifteen_minutes_is_accepted(
    kms: Target, monkeypatch: pytest.MonkeyPatch, minutes: int
) -> None:
    """STS allows 15 minutes of clock skew (KMS allows 5)."""
    _signing_offset(monkeypatch, dt.timedelta(minutes=minutes))
    identity = _sts_as(kms, kms.customer).get_caller_identity()
    assert identity["Account"] == kms.customer_account


@pytest.mark.parametrize(("minutes", "words"), [
    (-16, "Signature expired"), (16, "Signature not yet current"),
])
def test_signing_clock_beyond_fifteen_minutes_is_refused(
    kms: Target, monkeypatch: pytest.MonkeyPatch, minutes: int, words: str
) -> None:
    _signing_offset(monkeypatch, dt.timedelta(minutes=minutes))
    code, status, message = _refusal(_sts_as(kms, kms.customer).get_caller_identity)
    assert (code, status) == ("SignatureDoesNotMatch", 403)
    assert message.startswith(words), message
    assert "15 min." in message


# --- what kmslocal leaves out -----------------------------------------------------------


def test_get_caller_identity_is_not_in_the_usage_log(kmslocal: KmsLocal) -> None:
    """The usage log holds KMS events; AWS logs this call as an STS event instead."""
    kmslocal.client(PROVIDER, "sts").get_caller_identity()
    trail = kmslocal.client(PROVIDER, "cloudtrail")
    events = trail.lookup_events(
        LookupAttributes=[{"AttributeKey": "EventName", "AttributeValue": "GetCallerIdentity"}]
    )["Events"]
    assert events == []


def test_injected_faults_leave_sts_alone(kmslocal: KmsLocal) -> None:
    """Faults stand in for KMS's failures; STS keeps answering who the caller is."""
    kmslocal.dev_call("POST", "/_kmslocal/faults", {"error": "ThrottlingException"})
    try:
        identity = kmslocal.client(CUSTOMER, "sts").get_caller_identity()
    finally:
        kmslocal.dev_call("DELETE", "/_kmslocal/faults")
    assert identity["Account"] == "222222222222"


# --- the command ------------------------------------------------------------------------


def _kmslocal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kmslocal.cli", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def _options_without_help(text: str) -> list[str]:
    """Option lines of an argparse help text that have no help after them (argparse puts
    a long option's help on the next, further indented line)."""
    lines = text.splitlines()
    missing = []
    for i, line in enumerate(lines):
        if not line.startswith("  -"):
            continue
        invocation, _, rest = line.strip().partition("  ")
        following = lines[i + 1] if i + 1 < len(lines) else ""
        continued = following.startswith(" " * 6) and not following.lstrip().startswith("-")
        if not rest.strip() and not continued:
            missing.append(invocation)
    return missing


@pytest.mark.parametrize("args", [["--help"], ["serve", "--help"]])
def test_help_is_plain_text_with_help_for_every_option(args: list[str]) -> None:
    done = _kmslocal(*args)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith("usage: kmslocal")
    for markup in ("``", "`", "::", ":class:", ":func:", ".. "):
        assert markup not in text, (markup, text)
    assert _options_without_help(text) == [], text
    options = re.findall(r"^  (-[^ ,]+)", text, flags=re.MULTILINE)
    assert "-h" in options
    if args == ["--help"]:
        assert "--version" in text
        assert re.search(r"^\s+serve\s+\S", text, flags=re.MULTILINE), text
    else:
        for option in ("--host", "--port", "--data-dir", "--config", "--dev"):
            assert option in text


def test_options_without_help_are_found() -> None:
    """The check above would catch an option that lost its help."""
    text = "options:\n  -h, --help   show help\n  --host HOST\n  --data-dir DIR  folder for\n"
    assert _options_without_help(text) == ["--host HOST"]


def test_version_prints_the_package_version() -> None:
    done = _kmslocal("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"kmslocal {kmslocal.__version__}\n"
