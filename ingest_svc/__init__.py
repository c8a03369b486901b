"""ingest_svc: the DIMSE edge (pynetdicom SCP) and the IngestService gRPC API."""
