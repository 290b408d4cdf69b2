"""The envelope and streaming formats: AES-256-GCM records bound to tenant and category."""
