"""STS's state and rules: who the holder of a verified access key is.

kmslocal's principals are IAM users and roles (see ``config``); each is reported as AWS
STS GetCallerIdentity reports the same kind of caller. Protocol concerns (form
parameters, XML) live in ``responses``. GetCallerIdentity needs no permission and no
key policy can deny it, so nothing here is ever refused.

Reference: GetCallerIdentity in the AWS STS API Reference
(https://docs.aws.amazon.com/STS/latest/APIReference/API_GetCallerIdentity.html):
``UserId`` is the ``aws:userid`` value of the Principal table in the IAM User Guide
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_policies_variables.html#principaltable):
an IAM user's unique id, or ``role-id:session-name`` for a role's session.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

from kmslocal.config import account_of

# The session name of every role principal: AWS credentials of a role always belong to
# one session of it, named by whoever called AssumeRole.
SESSION_NAME = "kmslocal"

# Unique-id prefixes AWS gives users and roles ("Unique identifiers" in the IAM User
# Guide, https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_identifiers.html).
_USER_PREFIX = "AIDA"
_ROLE_PREFIX = "AROA"


def unique_id(prefix: str, principal_arn: str) -> str:
    """An AWS-shaped unique id (prefix and 17 base32 characters, 21 in all).

    AWS draws it at random when the user or role is created; kmslocal has no IAM to
    create them, so it is derived from the ARN and stays the same across restarts.
    """
    digest = hashlib.sha256(principal_arn.encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:17]


def get_caller_identity(principal_arn: str) -> dict[str, str]:
    """GetCallerIdentity's result members, in the order AWS writes them.

    A user is itself; a role's access key is a session's, so a role is reported as its
    session: ``arn:aws:sts::ACCOUNT:assumed-role/NAME/kmslocal`` (the role's path is
    not part of it, as in AWS) with ``UserId`` ``AROA...:kmslocal``.
    """
    account = account_of(principal_arn)
    kind, _, path_and_name = principal_arn.split(":", 5)[5].partition("/")
    if kind == "user":
        return {
            "Arn": principal_arn, "UserId": unique_id(_USER_PREFIX, principal_arn),
            "Account": account,
        }
    role_name = path_and_name.rsplit("/", 1)[-1]
    return {
        "Arn": f"arn:aws:sts::{account}:assumed-role/{role_name}/{SESSION_NAME}",
        "UserId": f"{unique_id(_ROLE_PREFIX, principal_arn)}:{SESSION_NAME}",
        "Account": account,
    }


# Actions by name; each takes the verified caller's principal ARN.
ACTIONS: dict[str, Callable[[str], dict[str, str]]] = {
    "GetCallerIdentity": get_caller_identity,
}
