"""Code every service shares: settings base, validation, DICOM JSON, gRPC
serving and clients, the query parser and the ingest pipeline. Generated
protobuf code lives apart in common.gen."""
