"""Named points inside multi-step operations (writes, backups, restores, rewraps, shreds)
where a development process can be made to die at once, as a power cut or ``kill -9``
would, so tests can show that each operation is completed or cleanly absent after a
restart.

Disarmed (the default, and always without ``--dev``) ``reached`` costs one global read.
``cmek serve --dev`` arms one point from ``CMEK_DEV_CRASH_AT=<name>[:<nth>]``: the
process SIGKILLs itself the ``nth`` time (default 1) any thread reaches that point. No
``finally``, ``atexit`` or flush runs: what is on disk is what a crash leaves.
"""

from __future__ import annotations

import os
import signal
import threading

ENV_VAR = "CMEK_DEV_CRASH_AT"

POINTS: frozenset[str] = frozenset({
    # provisioning: the tenant is recorded and its key registered; no admin user yet
    "provision.registered",
    # a metadata write: the object row is committed; its log entry and index entry are not
    "write.object_committed",
    # any object-store write: the bytes are staged, not yet published under their key
    "objects.staged",
    # a backup: some of the tenant's objects are in the backup stream; the backup's own
    # object is not published
    "backup.object_streamed",
    # a backup: its object is published; the activity log does not say so yet
    "backup.published",
    # a restore: the backup's rows replaced the live rows; the objects are not replaced yet
    "restore.rows_replaced",
    # a restore: one more live object was replaced by the backup's
    "restore.object_replaced",
    # a rewrap: one more data key is wrapped under the new key
    "rewrap.key_rewrapped",
    # a rewrap: the keyring finished; the control plane still names the old key
    "rewrap.finished",
    # a crypto-shred: the wrapped data keys are deleted; the objects are not
    "shred.data_keys_deleted",
    # a crypto-shred: the objects are deleted too; nothing is recorded yet
    "shred.objects_deleted",
})

_armed: tuple[str, int] | None = None
_seen = 0
_lock = threading.Lock()


def parse(spec: str) -> tuple[str, int]:
    """``name`` or ``name:nth``; ValueError with a one-line reason otherwise."""
    name, _, nth = spec.strip().partition(":")
    if name not in POINTS:
        raise ValueError(f"unknown crash point {name[:80]!r}; known: "
                         + ", ".join(sorted(POINTS)))
    if not nth:
        return name, 1
    if not nth.isdigit() or int(nth) < 1:
        raise ValueError(f"the count after ':' must be a whole number >= 1, got {nth[:20]!r}")
    return name, int(nth)


def arm(spec: str) -> None:
    global _armed, _seen
    point = parse(spec)
    with _lock:
        _armed, _seen = point, 0


def disarm() -> None:
    global _armed, _seen
    with _lock:
        _armed, _seen = None, 0


def reached(name: str) -> None:
    """Die here if this is the armed point's ``nth`` arrival; otherwise do nothing."""
    global _seen
    armed = _armed
    if armed is None or armed[0] != name:
        return
    with _lock:
        _seen += 1
        fire = _seen == armed[1]
    if fire:
        os.kill(os.getpid(), signal.SIGKILL)
