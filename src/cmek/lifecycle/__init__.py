"""The key state machine: detect revocation, lock the tenant, restore by the rules."""
