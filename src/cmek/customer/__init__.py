"""The customer's onboarding tools: key policy render and lint, key create and verify."""
