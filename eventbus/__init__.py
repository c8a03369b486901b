"""eventbus: the outbox relay to Kafka and the event consumers (series
metadata precompute, audit log), on Kafka consumer groups or, without
Kafka, on the embedded event log (the outbox read through MetadataService)."""
