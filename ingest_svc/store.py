"""C-STORE: the received bytes, as the peer encoded them, behind a file meta
group built from the request, through the pipeline.

The steps are shared by both receive paths: pynetdicom's EVT_C_STORE handler
(`handle_store`, with the whole data set in memory) and the lean acceptor
(ingest_svc.lean_acceptor), which writes the fragments into the staged
object as they arrive."""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, evt
from pynetdicom.dimse_primitives import C_STORE

from common import errors
from common.blobs import StagedObject
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.ingest import IngestPipeline
from dicomcore.status import NOT_AUTHORIZED, OUT_OF_RESOURCES

if TYPE_CHECKING:
    from ingest_svc.principals import Principals

log = logging.getLogger(__name__)

PREAMBLE = b"\x00" * 128 + b"DICM"


def _short(tag: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian element of group 0002 with a 2-byte length."""
    if len(value) > 0xFFFF:
        raise ValueError(f"(0002,{tag:04X}) is too long for file meta information")
    return struct.pack("<HH2sH", 0x0002, tag, vr, len(value)) + value


def _text(value: str, pad: bytes) -> bytes:
    raw = value.encode("latin-1")  # pydicom's default encoding for UI and SH
    return raw + pad if len(raw) % 2 else raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """The preamble, prefix and File Meta Information of a C-STORE request's
    data set: the bytes pynetdicom's Event.encoded_dataset() puts before it
    (create_file_meta + pydicom's write_file_meta_info), without building a
    pydicom dataset. Raises ValueError where pydicom would (a required
    value is empty)."""
    if not (sop_class and sop_instance and transfer_syntax):
        raise ValueError("Media Storage SOP Class/Instance UID and Transfer Syntax UID are required")
    body = b"".join(
        (
            struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01",
            _short(0x0002, b"UI", _text(sop_class, b"\x00")),
            _short(0x0003, b"UI", _text(sop_instance, b"\x00")),
            _short(0x0010, b"UI", _text(transfer_syntax, b"\x00")),
            _short(0x0012, b"UI", _text(PYNETDICOM_IMPLEMENTATION_UID, b"\x00")),
            _short(0x0013, b"SH", _text(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
        )
    )
    return PREAMBLE + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body


def write_access(principals: Principals, assoc: Any) -> tuple[str | None, int]:
    """The tenant the association may store into, or None and the status
    that refuses the C-STORE."""
    try:
        tenant = principals.tenant(assoc, auth_pb.ACTION_WRITE)
    except errors.ServiceError as exc:
        log.warning("auth_svc unavailable: %s", exc)
        return None, OUT_OF_RESOURCES
    return (tenant, 0x0000) if tenant is not None else (None, NOT_AUTHORIZED)


def begin(pipeline: IngestPipeline, head: bytes) -> StagedObject | None:
    """A staged object with `head` (preamble and file meta) written, or None:
    the C-STORE is out of resources."""
    try:
        staged = pipeline.stage()
    except (errors.ServiceError, OSError) as exc:
        log.warning("C-STORE: the object cannot be staged: %s", exc)
        return None
    if not write(staged, head):
        return None
    return staged


def write(staged: StagedObject, data: bytes | bytearray | memoryview) -> bool:
    """Appends to the object; False (and the object discarded) when it fails."""
    try:
        staged.write(data)
    except OSError as exc:
        staged.discard()
        log.warning("C-STORE: the object cannot be written: %s", exc.strerror or exc)
        return False
    return True


def finish(
    pipeline: IngestPipeline,
    staged: StagedObject,
    tenant: str,
    sop_class: str,
    sop_instance: str,
    calling_ae_title: str = "",
) -> int:
    """Stores the written object; its C-STORE status."""
    outcome = pipeline.store(
        staged,
        tenant,
        expected_sop_class=sop_class,
        expected_sop_instance=sop_instance,
        calling_ae_title=calling_ae_title,
    )
    if outcome.status == ingest_pb.STORE_STATUS_FAILED:
        log.info("C-STORE failed with 0x%04X: %s", outcome.dicom_status, outcome.reason)
    return int(outcome.dicom_status)


def handle_store(event: evt.Event, pipeline: IngestPipeline, principals: Principals) -> int:
    """EVT_C_STORE of the pynetdicom path."""
    tenant, status = write_access(principals, event.assoc)
    if tenant is None:
        return status
    request = cast(C_STORE, event.request)  # EVT_C_STORE's
    sop_class = str(request.AffectedSOPClassUID or "")
    sop_instance = str(request.AffectedSOPInstanceUID or "")
    # The data set as the peer encoded it: no decoding, pixel data untouched.
    staged = begin(pipeline, file_meta(sop_class, sop_instance, str(event.context.transfer_syntax)))
    if staged is None or not write(staged, event.encoded_dataset(include_meta=False)):
        return OUT_OF_RESOURCES
    return finish(pipeline, staged, tenant, sop_class, sop_instance, str(event.assoc.requestor.ae_title).strip())
