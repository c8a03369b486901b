"""The consumers' work, one function per consumer. Each is idempotent: an
event handled twice has the effect of one handling."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import grpc

from common.gen.dicomserver.v1 import events_pb2, metadata_service_pb2 as md_pb, \
    metadata_service_pb2_grpc as md_grpc
from eventbus.store import Store

Handler = Callable[[events_pb2.Event], None]


def metadata_precompute(channel: grpc.Channel) -> Handler:
    """Recomputes /metadata of the event's series from the index (so a
    replayed or reordered event can only refresh to the current state)."""
    stub = md_grpc.MetadataServiceStub(channel)

    def handle(event: events_pb2.Event) -> None:
        kind = event.WhichOneof("kind")
        if kind not in ("instance_stored", "instance_deleted"):
            return
        ref = getattr(event, kind).location.ref
        stub.RefreshMetadata(md_pb.RefreshMetadataRequest(
            tenant=event.tenant, study_instance_uid=ref.study_instance_uid,
            series_instance_uid=ref.series_instance_uid), timeout=30)

    def series_of(event: events_pb2.Event) -> Hashable:
        kind = event.WhichOneof("kind")
        ref = getattr(event, kind).location.ref if kind else None
        return (event.tenant, ref.study_instance_uid, ref.series_instance_uid) if ref else event.sequence

    # A refresh reads the series as it is now, so within a batch only the
    # last event of each series needs one: a 500-image series costs one
    # refresh per batch instead of one per image.
    handle.coalesce = series_of  # type: ignore[attr-defined]
    return handle


def audit_sink(store: Store) -> Handler:
    """One audit entry per event sequence, whatever the deliveries."""
    return store.audit
