"""ReplaceObject: an instance's stored object swapped for a converted one
(the compression policy), in one transaction and only if the instance still
points at the object that was converted. The original transfer syntax and
size stay on the row; the series' revision goes up (its /metadata is
recomputed) and an InstanceConverted event goes to the outbox."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, select, update

from common.gen.dicomserver.v1 import events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue
from metadata_svc import indexing, outbox
from metadata_svc.headers import bump_revisions
from metadata_svc.schema import Instance


def check(request: md_pb.ReplaceObjectRequest) -> None:
    indexing.check_batch([request.record], md_pb.DUPLICATE_POLICY_OVERWRITE)
    if not request.expected_object_key:
        raise InvalidValue("expected_object_key is required")
    if request.expected_object_key == request.record.location.object_key:
        raise InvalidValue("the converted object must have a key of its own")


def replace_object(conn: Connection, request: md_pb.ReplaceObjectRequest) -> md_pb.ReplaceObjectResponse:
    """In the open write transaction (checked by check())."""
    outbox.lock(conn)
    rec, loc = request.record, request.record.location
    row = conn.execute(
        select(
            Instance.id,
            Instance.series_pk,
            Instance.object_key,
            Instance.transfer_syntax_uid,
            Instance.size,
            Instance.original_transfer_syntax_uid,
            Instance.original_size,
        ).where(Instance.tenant == loc.ref.tenant, Instance.sop_instance_uid == loc.ref.sop_instance_uid)
    ).first()
    if row is None or row.object_key != request.expected_object_key:
        # Deleted or stored anew meanwhile: the conversion is of an object the index no longer holds.
        return md_pb.ReplaceObjectResponse(replaced=False, unreferenced_object_key=loc.object_key)
    original_ts = row.original_transfer_syntax_uid or row.transfer_syntax_uid
    original_size = row.original_size or row.size
    revisions, newest_feed = bump_revisions(conn, [row.series_pk])
    now = datetime.now(UTC)
    conn.execute(
        update(Instance)
        .where(Instance.id == row.id)
        .values(
            object_key=loc.object_key,
            transfer_syntax_uid=loc.transfer_syntax_uid,
            size=loc.size,
            number_of_frames=loc.number_of_frames,
            dicom_json=rec.dicom_json,
            pixel_layout=loc.pixel_layout.SerializeToString() if loc.HasField("pixel_layout") else None,
            original_transfer_syntax_uid=original_ts,
            original_size=original_size,
            revision=revisions[row.series_pk],
            updated=now,
        )
    )
    converted = events_pb2.InstanceConverted(location=loc)
    converted.location.conversion.original_transfer_syntax_uid = original_ts
    converted.location.conversion.original_size = original_size
    outbox.append_changes(
        conn,
        [(events_pb2.Event(tenant=loc.ref.tenant, instance_converted=converted), loc.ref.study_instance_uid)],
        now,
        newest_feed,
    )
    return md_pb.ReplaceObjectResponse(replaced=True, unreferenced_object_key=row.object_key)
