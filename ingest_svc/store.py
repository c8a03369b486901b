"""C-STORE: the received bytes, as the peer encoded them, through the pipeline."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

from pynetdicom import evt

from common import errors
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb, ingest_service_pb2 as ingest_pb
from common.ingest import OUT_OF_RESOURCES, IngestPipeline
from ingest_svc.find import NOT_AUTHORIZED

if TYPE_CHECKING:
    from ingest_svc.scp import Principals

log = logging.getLogger(__name__)



def handle_store(event: evt.Event, pipeline: IngestPipeline, principals: Principals) -> int:
    try:
        tenant = principals.tenant(event.assoc, auth_pb.ACTION_WRITE)
    except errors.ServiceError as exc:
        log.warning("auth_svc unavailable: %s", exc)
        return OUT_OF_RESOURCES
    if tenant is None:
        return NOT_AUTHORIZED
    # The dataset as the peer encoded it, behind file meta built from the
    # request: no decoding, pixel data untouched.
    data = event.encoded_dataset(include_meta=True)
    outcome = pipeline.store(
        io.BytesIO(data),
        len(data),
        tenant,
        expected_sop_class=str(event.request.AffectedSOPClassUID or ""),
        expected_sop_instance=str(event.request.AffectedSOPInstanceUID or ""),
    )
    if outcome.status == ingest_pb.STORE_STATUS_FAILED:
        log.info("C-STORE failed with 0x%04X: %s", outcome.dicom_status, outcome.reason)
    return int(outcome.dicom_status)
