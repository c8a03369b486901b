"""The data layer behind MetadataService. Each job has its module and runs
here in a transaction of its own:

- indexing: IndexInstances, a batch of records with set-based statements;
- locations: locations of instances and which object keys rows point to;
- headers: /metadata, and the precomputed series form RefreshMetadata keeps;
- deletion: DeleteInstances and pruning what it leaves empty;
- outbox: appending index changes and audit records, pruning old audit records;
- change_feed: reading the outbox and a tenant's change feed;
- query (QueryEngine): QIDO-RS and C-FIND."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from common import audit
from common.gen.dicomserver.v1 import dicom_pb2, events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from metadata_svc import change_feed, conversion, deletion, headers, indexing, locations, outbox
from metadata_svc.db import Database
from metadata_svc.errors import NotFoundError
from metadata_svc.query import QueryEngine, QueryResult

__all__ = ["MetadataIndex", "NotFoundError"]

log = logging.getLogger(__name__)
T = TypeVar("T")
# A write that collides with a concurrent one on a unique key is tried again
# and then finds the rows. Index writers take the outbox lock before they
# read, so this is a safety net rather than a path.
_WRITE_ATTEMPTS = 3


class MetadataIndex:
    def __init__(self, db: Database, max_query_limit: int = 1000) -> None:
        self.db = db
        self.max_limit = max(1, max_query_limit)
        self._query = QueryEngine(self.max_limit)

    def _write(self, work: Callable[[Connection], T]) -> T:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self.db.write() as conn:
                    return work(conn)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS:
                    raise
                log.info("index write conflicted with a concurrent one; retrying (%d)", attempt)
        raise AssertionError("unreachable")

    # --- writes -------------------------------------------------------------

    def index(self, records: Sequence[md_pb.InstanceRecord], policy: int) -> list[md_pb.IndexResult]:
        """One transaction for the whole batch: any invalid record (or a
        series named under another study) fails the call and writes nothing."""
        policy = indexing.check_batch(records, policy)
        if not records:
            return []
        return self._write(lambda conn: indexing.index_records(conn, records, policy))

    def replace_object(self, request: md_pb.ReplaceObjectRequest) -> md_pb.ReplaceObjectResponse:
        """Points an instance at a converted object if it still points at
        the expected one (metadata_svc.conversion)."""
        conversion.check(request)
        return self._write(lambda conn: conversion.replace_object(conn, request))

    def delete(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[dicom_pb2.InstanceLocation]:
        conds = locations.scope(tenant, study, series, sop)
        return self._write(lambda conn: deletion.delete_instances(conn, tenant, conds))

    def record_audit(self, records: Sequence[events_pb2.AuditRecord]) -> None:
        """Appends audit records to the outbox in one transaction."""
        audit.check_batch(records)
        if records:
            now = datetime.now(UTC)
            self._write(lambda conn: outbox.append_audit(conn, records, now))

    def prune_audit(self, older_than: datetime) -> int:
        """Deletes audit records written to the outbox before `older_than`;
        returns how many. The audit consumer keeps its own copy; a relay
        further behind than the retention would miss the pruned records."""
        return self._write(lambda conn: outbox.prune_audit(conn, older_than))

    def refresh_metadata(self, tenant: str, study: str, series: str = "") -> int:
        """Precomputes /metadata of a series, or of every series of a study,
        from the index; returns how many were written. Idempotent: a series
        that no longer exists is skipped, and a newer precomputed revision
        is never overwritten."""
        with self.db.read() as conn:
            rows = headers.refresh(conn, tenant, study, series)
        if rows:
            self._write(lambda conn: headers.upsert(conn, rows))
        return len(rows)

    # --- reads --------------------------------------------------------------

    def query(self, request: md_pb.QueryRequest) -> QueryResult:
        with self.db.reader() as session, session.begin():
            return self._query.run(session, request)

    def locate(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[dicom_pb2.InstanceLocation]:
        with self.db.read() as conn:
            return locations.locate(conn, tenant, study, series, sop)

    def locate_each(self, tenant: str, sop_uids: Sequence[str]) -> list[dicom_pb2.InstanceLocation]:
        """The instances among `sop_uids` that exist, in any study."""
        with self.db.read() as conn:
            return locations.locate_each(conn, tenant, sop_uids)

    def referenced_objects(self, keys: Sequence[str]) -> list[str]:
        """The keys among `keys` that an instance row points to."""
        with self.db.read() as conn:
            return locations.referenced_objects(conn, keys)

    def get_metadata(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[bytes]:
        """Headers of a study, series or instance in /metadata order."""
        conds = locations.scope(tenant, study, series, sop)
        with self.db.read() as conn:
            return headers.get_metadata(conn, conds, tenant, study, series, sop)

    def read_outbox(self, after_sequence: int, limit: int) -> tuple[list[events_pb2.Event], int]:
        """Events of every tenant after a sequence, in order: what the relay
        publishes and what embedded-log consumers read."""
        with self.db.read() as conn:
            return change_feed.read_outbox(conn, after_sequence, change_feed.page_limit(limit, self.max_limit))

    def read_change_feed(self, tenant: str, after_sequence: int, limit: int) -> tuple[list[events_pb2.Event], int]:
        """A tenant's index changes after a position (its own count of them)."""
        with self.db.read() as conn:
            return change_feed.read_change_feed(
                conn, tenant, after_sequence, change_feed.page_limit(limit, self.max_limit)
            )
