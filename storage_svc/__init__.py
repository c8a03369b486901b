"""storage_svc: object bytes on a local filesystem (S3 comes with its issue)."""
