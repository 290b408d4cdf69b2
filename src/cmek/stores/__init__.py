"""One encrypted store per data category of a tenant, and its backups."""
