"""The hash-chained audit trail of every key use and lifecycle event."""
