"""De-identified copies: the instances of studies (named, or a study-level
query's matches) read where storage grants, de-identified
(deidentify.dataset), then stored into a target tenant through the ingest
pipeline, or written into a zip stream. Objects with Burned In Annotation
YES are refused unless the request allows them (then they are copied and
listed as flagged). The copy is audited by the caller."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pydicom import dcmread

from common.blobs import BlobReader
from common.clients import MetadataClient
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.ingest import IngestPipeline
from common.validation import check_tenant, check_uid
from deidentify.dataset import Deidentifier, Request

log = logging.getLogger(__name__)
MAX_STUDIES = 1000


@dataclass
class Report:
    studies: dict[str, str] = field(default_factory=dict)  # original Study Instance UID -> copy's
    copied: int = 0
    failed: int = 0
    refused_burned_in: list[str] = field(default_factory=list)  # original SOP Instance UIDs
    flagged_burned_in: list[str] = field(default_factory=list)


def studies_of(
    metadata: MetadataClient, tenant: str, study_uids: Sequence[str], filters: Sequence[md_pb.Filter]
) -> list[str]:
    """The studies asked for: named ones, or those a study-level query matches."""
    if study_uids:
        return [check_uid(u, "Study Instance UID") for u in dict.fromkeys(study_uids)]
    if not filters:
        raise ValueError("name studies or give a query")
    resp = metadata.query(
        md_pb.QueryRequest(tenant=tenant, level=dicom_pb2.QUERY_LEVEL_STUDY, filters=filters, limit=MAX_STUDIES)
    )
    out = []
    for match in resp.matches:
        value = json.loads(match).get("0020000D", {}).get("Value", [""])[0]
        if value:
            out.append(value)
    return out


def deidentified_objects(
    metadata: MetadataClient,
    reader: BlobReader,
    tenant: str,
    studies: Sequence[str],
    request: Request,
    allow_burned_in: bool,
    report: Report,
) -> Iterator[tuple[str, str, bytes]]:
    """(study copy UID, SOP copy UID, Part 10 bytes) of every instance to copy."""
    deid = Deidentifier(request)
    for study in studies:
        locations = metadata.locate(tenant, study)
        reader.prepare([loc.object_key for loc in locations])
        for loc in locations:
            ds = dcmread(io.BytesIO(reader.read(loc.object_key)))
            result = deid.apply(ds)
            sop = loc.ref.sop_instance_uid
            if result.burned_in:
                if not allow_burned_in:
                    report.refused_burned_in.append(sop)
                    continue
                report.flagged_burned_in.append(sop)
            out = io.BytesIO()
            ds.save_as(out, enforce_file_format=True)
            report.studies[study] = deid.uid(study)
            yield deid.uid(study), deid.uid(sop), out.getvalue()


def copy_into(
    pipeline: IngestPipeline, target_tenant: str, objects: Iterator[tuple[str, str, bytes]], report: Report
) -> Report:
    """Stores the de-identified objects into the target tenant."""
    check_tenant(target_tenant)
    for _study, _sop, data in objects:
        staged = pipeline.stage()
        staged.write(data)
        outcome = pipeline.store(staged, target_tenant)
        if outcome.status == ingest_pb.STORE_STATUS_FAILED:
            report.failed += 1
            log.warning("de-identified copy: an instance was not stored: %s", outcome.reason)
        else:
            report.copied += 1
    return report


class _Sink(io.RawIOBase):
    """What zipfile writes, handed on in pieces (a stream, not a seekable file)."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.pieces.append(bytes(b))
        return len(b)

    def take(self) -> bytes:
        out, self.pieces = b"".join(self.pieces), []
        return out


def zip_stream(objects: Iterator[tuple[str, str, bytes]], report: Report) -> Iterator[bytes]:
    """The objects as a zip (stored, not deflated: DICOM pixel data rarely
    shrink), streamed: each member goes out as soon as it is written."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as zf:
        for study, sop, data in objects:
            zf.writestr(f"{study}/{sop}.dcm", data)
            report.copied += 1
            piece = sink.take()
            if piece:
                yield piece
    yield sink.take()
