"""The provider's HTTP service: tenants, sessions, jobs and connectors."""
