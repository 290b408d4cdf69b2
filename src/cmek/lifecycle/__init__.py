"""The key state machine: detect revocation, lock the tenant, restore by the rules."""

from cmek.lifecycle.engine import Durations, Enforcer, Lifecycle
from cmek.lifecycle.state import KeyState, TenantKeyState

__all__ = ["Durations", "Enforcer", "KeyState", "Lifecycle", "TenantKeyState"]
