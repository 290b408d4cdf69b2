"""The customer's and the provider's onboarding commands: ``cmek policy``, ``cmek key`` and
``cmek usage``, each a function of its parsed arguments that prints text or JSON and
returns the exit status (docs/onboarding.md). Failures are raised as CmekError; cmek.cli
turns them into the one line and the exit status every command shares.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from cmek.errors import CmekError, InvalidInput

EXIT_FAILED = 1
ENDPOINT_VAR = "CMEK_KMS_ENDPOINT_URL"


class FileUnreadable(InvalidInput):
    code = "file_unreadable"


class NotJson(InvalidInput):
    code = "not_json"


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=False))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


# --- AWS options ------------------------------------------------------------------------
def _region(args: argparse.Namespace) -> str:
    region = (args.region or os.environ.get("CMEK_KMS_REGION") or os.environ.get("AWS_REGION")
              or os.environ.get("AWS_DEFAULT_REGION"))
    if not region:
        raise InvalidInput("no AWS Region: pass --region or set AWS_REGION")
    return str(region)


def _endpoint(args: argparse.Namespace) -> str | None:
    url = args.endpoint_url or os.environ.get(ENDPOINT_VAR) or None
    if url is not None and not url.startswith(("http://", "https://")):
        where = "--endpoint-url" if args.endpoint_url else ENDPOINT_VAR
        raise InvalidInput(f"{where} must be an http:// or https:// URL, e.g. "
                           f"http://127.0.0.1:4599, not {url[:80]!r}")
    return url


def _where(args: argparse.Namespace) -> str:
    """The KMS a command talks to, for messages."""
    return _endpoint(args) or f"AWS KMS in {_region(args)}"


def _session(args: argparse.Namespace) -> Any:
    import boto3

    return boto3.Session(profile_name=args.profile, region_name=_region(args))


def _boto_client(args: argparse.Namespace, service: str) -> Any:
    from botocore.config import Config

    make: Any = _session(args).client  # one function for the kms, sts and cloudtrail clients
    return make(service, endpoint_url=_endpoint(args), config=Config(
        connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 2, "mode": "standard"}))


def _caller_account(args: argparse.Namespace) -> str:
    """Whose credentials these are (STS GetCallerIdentity), or a one-line error saying how
    to give working ones."""
    from cmek.customer.aws_errors import aws_error
    from cmek.customer.create import KeyCreateFailed

    try:
        return str(_boto_client(args, "sts").get_caller_identity()["Account"])
    except Exception as e:
        mapped = aws_error(e, step="GetCallerIdentity",
                           failed=lambda m, s, c: KeyCreateFailed(m, step=s, aws_code=c))
        if mapped is None:
            raise
        raise _explain(mapped, args) from None


def _explain(error: CmekError, args: argparse.Namespace) -> CmekError:
    """An AWS failure with what to do about it: where the endpoint is, which Region the
    credentials were signed for, how to give credentials."""
    from cmek.customer.aws_errors import CredentialsInvalid, EndpointUnreachable

    if isinstance(error, EndpointUnreachable):
        error.message = (f"{error.message}: nothing answers at {_where(args)}; check "
                         f"--endpoint-url or {ENDPOINT_VAR}, and the network")
    elif isinstance(error, CredentialsInvalid):
        if "region" in error.message.lower():
            error.message = (f"{error.message}: the endpoint does not serve Region "
                             f"{_region(args)}; check --region or AWS_REGION")
        else:
            error.message = f"{error.message}; {error.hint}"
    return error


# --- input files ----------------------------------------------------------------------
def _read_text(path: str) -> str:
    """A file's text, or standard input for ``-``."""
    if path == "-":
        return sys.stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FileUnreadable(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise FileUnreadable(f"cannot read {path}: not UTF-8 text") from None


def _read_json_file(path: str) -> Any:
    text = _read_text(path)
    try:
        return json.loads(text)
    except ValueError as e:
        raise NotJson(f"{path} is not JSON: {e}") from None


# --- policy ---------------------------------------------------------------------------
def policy_render(args: argparse.Namespace) -> int:
    from cmek.customer.policy import render, validate_account

    owner = validate_account(args.owner_account) if args.owner_account else None
    print_json(render(validate_account(args.provider_account), owner, args.tenant))
    return 0


def policy_merge(args: argparse.Namespace) -> int:
    from cmek.customer.policy import merge, validate_account

    existing = _read_json_file(args.file)
    print_json(merge(existing, validate_account(args.provider_account), args.tenant))
    return 0


def policy_lint(args: argparse.Namespace) -> int:
    from cmek.customer.lint import lint
    from cmek.customer.policy import validate_account

    provider = validate_account(args.provider_account)
    text = _read_text(args.file)
    owner = validate_account(args.owner_account) if args.owner_account else None
    result = lint(text, provider, owner, args.tenant)
    if args.json:
        print_json({"exit_code": result.exit_code, "is_policy": result.is_policy,
                     "findings": [f.to_json() for f in result.findings]})
        return result.exit_code
    for f in result.findings:
        print(f"{f.severity.upper():7} {f.code} [{f.statement}]: {f.message}")
        print(f"        fix: {f.fix}")
    errors = sum(f.severity == "error" for f in result.findings)
    warnings = len(result.findings) - errors
    verdict = "not a policy" if not result.is_policy else (
        "has errors" if errors else "correct and least-privilege")
    name = "standard input" if args.file == "-" else args.file
    print(f"{name}: {verdict} ({errors} errors, {warnings} warnings)")
    return result.exit_code


# --- keys -----------------------------------------------------------------------------
def key_create(args: argparse.Namespace) -> int:
    from cmek.customer.aws_errors import CustomerKeyError
    from cmek.customer.create import create_key
    from cmek.customer.policy import validate_account
    from cmek.ids import validate_tenant_id

    provider = validate_account(args.provider_account)
    if args.tenant is not None:
        validate_tenant_id(args.tenant)
    if _caller_account(args) == provider:
        raise InvalidInput(f"the provider account {provider} is the account of these "
                           "credentials: create the key with your own (the customer's) "
                           "credentials, and give the provider's account id")
    try:
        created = create_key(_boto_client(args, "kms"), provider, alias=args.alias,
                             tenant=args.tenant)
    except CustomerKeyError as e:
        raise _explain(e, args) from None
    if args.json:
        print_json(created.to_json())
    else:
        print(created.key_arn)
        print(f"share this key ARN with the provider; alias: {created.alias or '-'}",
              file=sys.stderr)
    return 0


def _provider_account(args: argparse.Namespace) -> str:
    from cmek.customer.policy import validate_account

    account = args.provider_account or os.environ.get("CMEK_PROVIDER_ACCOUNT")
    if not account:
        raise InvalidInput("pass --provider-account (the 12-digit account the platform calls "
                           "KMS as) or set CMEK_PROVIDER_ACCOUNT")
    return validate_account(account)


def key_verify(args: argparse.Namespace) -> int:
    from cmek.customer.keys import verify_key
    from cmek.kms import BotoKms, KeyArn, KmsMisconfigured, KmsSettings

    provider = _provider_account(args)
    try:
        KeyArn.parse(args.key_arn)
    except KmsMisconfigured as e:
        raise InvalidInput(e.message) from None
    if args.tenant is not None:
        from cmek.ids import validate_tenant_id

        validate_tenant_id(args.tenant)
    region = _region(args)
    _caller_account(args)  # credentials and endpoint that do not work: one line, no report
    kms = BotoKms(KmsSettings(region=region, endpoint_url=_endpoint(args), profile=args.profile,
                              max_attempts=2))
    report = verify_key(kms, args.key_arn, region=region, tenant=args.tenant,
                        provider_account=provider)
    if args.json:
        print_json(report.to_json())
        return 0 if report.ok else EXIT_FAILED
    for check in report.checks:
        status = "ok  " if check.ok else "SKIP" if check.skipped else "FAIL"
        print(f"{status} {check.name}: {check.detail}")
        if not check.ok and not check.skipped and check.fix:
            print(f"     fix: {check.fix}")
    if args.tenant is None:
        print("note: no --tenant: the checks ran with the encryption context of tenant "
              "\"verify\"; a key policy restricted to a tenant refuses them (pass --tenant)")
    print("key verified" if report.ok else "key NOT usable by the provider")
    return 0 if report.ok else EXIT_FAILED


def usage(args: argparse.Namespace) -> int:
    from cmek.customer.usage import parse_since, usage_report
    from cmek.kms import KeyArn, KmsMisconfigured

    try:
        KeyArn.parse(args.key_arn)
    except KmsMisconfigured as e:
        raise InvalidInput(e.message) from None
    since = parse_since(args.since)
    _known_key(args)
    report = usage_report(_boto_client(args, "cloudtrail"), args.key_arn,
                          since_seconds=since, now=time.time())
    if args.json:
        print_json({**report.to_json(), "since": _iso(report.since),
                     "until": _iso(report.until), "first_use": _iso(report.first_use),
                     "last_use": _iso(report.last_use)})
        return 0
    print(f"usage of {report.key_arn}: {report.total} calls "
          f"from {_iso(report.since)} to {_iso(report.until)}")
    if report.first_use is not None and report.last_use is not None:
        print(f"first use {_iso(report.first_use)}, last use {_iso(report.last_use)}")
    if report.calls:
        print(f"\n{'operation':<34}{'category':<24}{'tenant':<24}{'calls':>7}")
        for row in report.calls:
            print(f"{row['operation']:<34}{row['category']:<24}{row['tenant']:<24}"
                  f"{row['count']:>7}")
    if report.refusals:
        print(f"\n{'refused operation':<34}{'error':<34}{'count':>7}")
        for row in report.refusals:
            print(f"{row['operation']:<34}{row['error_code']:<34}{row['count']:>7}")
    if report.principals:
        print("\ncallers:")
        for p in report.principals:
            print(f"  {p['arn']} (account {p['account']}): {p['count']}")
    return 0


def _known_key(args: argparse.Namespace) -> None:
    """The key exists for these credentials (DescribeKey): a typo in the ARN is said, not
    reported as a key nobody used."""
    from cmek.customer.aws_errors import CustomerKeyError, aws_error
    from cmek.customer.usage import UsageLookupFailed

    try:
        _boto_client(args, "kms").describe_key(KeyId=args.key_arn)
    except Exception as e:
        mapped: CustomerKeyError | None = aws_error(
            e, step="DescribeKey", failed=lambda m, s, c: UsageLookupFailed(
                f"{m} (is the key ARN right, and is it the key of these credentials' "
                "account?)" if c == "NotFoundException" else m, step=s, aws_code=c))
        if mapped is None:
            raise
        raise _explain(mapped, args) from None
