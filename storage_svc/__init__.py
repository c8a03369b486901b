"""storage_svc: object bytes on a local filesystem or an S3-compatible store."""
