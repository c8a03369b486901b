"""Real components started on demand for the test suite and the benchmarks:
PostgreSQL, Redis and Kafka (servers), SeaweedFS (seaweed), process helpers
(processes) and index records made by the real ingest code (records).
Not shipped: the runtime image leaves it out."""
