"""The consumers' work, one function per consumer. Each is idempotent: an
event handled twice has the effect of one handling.

A handler's `wants_audit` says whether it needs audit records: on Kafka,
only those consumers also read the audit topic; on the embedded log every
consumer reads the whole outbox and the others skip them."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import grpc

from common.clients import MetadataClient
from common.gen.dicomserver.v1 import events_pb2
from eventbus.store import Store

Handler = Callable[[events_pb2.Event], None]
INSTANCE_KINDS = ("instance_stored", "instance_deleted", "instance_converted")


def wants_audit(handler: Handler) -> bool:
    return bool(getattr(handler, "wants_audit", False))


def metadata_precompute(channel: grpc.Channel) -> Handler:
    """Recomputes /metadata of the event's series from the index (so a
    replayed or reordered event can only refresh to the current state)."""
    metadata = MetadataClient(channel)

    def handle(event: events_pb2.Event) -> None:
        kind = event.WhichOneof("kind")
        if kind not in INSTANCE_KINDS:  # audit records change no metadata
            return
        ref = getattr(event, kind).location.ref
        metadata.refresh_metadata(event.tenant, ref.study_instance_uid, ref.series_instance_uid)

    def series_of(event: events_pb2.Event) -> Hashable:
        kind = event.WhichOneof("kind")
        if kind not in INSTANCE_KINDS:
            return event.sequence
        ref = getattr(event, kind).location.ref
        return (event.tenant, ref.study_instance_uid, ref.series_instance_uid)

    # A refresh reads the series as it is now, so within a batch only the
    # last event of each series needs one: a 500-image series costs one
    # refresh per batch instead of one per image.
    handle.coalesce = series_of  # type: ignore[attr-defined]
    return handle


def audit_sink(store: Store) -> Handler:
    """One audit entry per event sequence, whatever the deliveries: index
    changes and audit records (who did what, when, from where)."""

    def handle(event: events_pb2.Event) -> None:
        store.audit(event)

    handle.wants_audit = True  # type: ignore[attr-defined]
    # A batch in one transaction; the consumer falls back to one by one
    # to single out an event that fails.
    handle.handle_many = store.audit_many  # type: ignore[attr-defined]
    return handle
