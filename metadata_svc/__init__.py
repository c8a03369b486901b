"""metadata_svc: the relational index of patients, studies, series and
instances, the query engine behind QIDO-RS and C-FIND, stored metadata and
the transactional outbox that feeds the change feed."""
