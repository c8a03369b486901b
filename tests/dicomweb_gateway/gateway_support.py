"""Helpers for the gateway tests: the real MetadataService with its queries
recorded, Part 10 test objects, multipart bodies."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import grpc
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from starlette.testclient import TestClient

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from dicomweb_gateway.media import parse_media_type
from dicomweb_gateway.multipart import MultipartParser
from dicomweb_gateway.settings import GatewaySettings
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService


class RecordingMetadata(MetadataService):
    """The real MetadataService on SQLite, remembering the queries it was asked."""

    def __init__(self, index: MetadataIndex) -> None:
        super().__init__(index)
        self.queries: list[md_pb.QueryRequest] = []

    def Query(self, request: md_pb.QueryRequest, context: grpc.ServicerContext) -> md_pb.QueryResponse:
        self.queries.append(request)
        return super().Query(request, context)


@dataclass
class Backend:
    storage_addr: str
    metadata: RecordingMetadata
    objects: Path


def make_settings(backend: Backend, **overrides: object) -> GatewaySettings:
    values: dict[str, object] = {
        "storage_addr": backend.storage_addr,
        "metadata_addr": backend.storage_addr,
        "auth_addr": backend.storage_addr,
        "spool_max_memory": 4096,
    }
    values.update(overrides)
    return GatewaySettings(**values)  # type: ignore[arg-type]


def make_instance(
    study: str | None = None, series: str | None = None, sop: str | None = None, name: str = "Müller^Jürgen"
) -> tuple[Dataset, bytes]:
    """A small CT Part 10 object whose pixel data is large enough to be bulk data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = name
    ds.PatientID = "P1"
    ds.Modality = "CT"
    ds.StudyDate = "20240102"
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    # Large binary values before the pixel data, one nested: these become
    # BulkDataURIs in the stored metadata (the header is read without pixels).
    ds.RedPaletteColorLookupTableData = bytes(range(256)) * 8
    icon = Dataset()
    icon.PixelData = bytes(2048)
    icon["PixelData"].VR = "OW"
    ds.IconImageSequence = [icon]
    ds.PixelData = bytes(range(256)) * 8  # 2048 bytes
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds, buf.getvalue()


def multipart_body(parts: list[tuple[str | None, bytes]], boundary: str) -> bytes:
    out = b""
    for ctype, data in parts:
        head = f"--{boundary}\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "") + "\r\n"
        out += head.encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def multipart_parts(
    content: bytes, content_type: str, part_type: str | None = None
) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a multipart/related answer (headers, bytes); `part_type`: the type= it must name."""
    media = parse_media_type(content_type)
    assert media.essence == "multipart/related"
    if part_type is not None:
        assert media.params["type"] == part_type
    parser = MultipartParser(media.params["boundary"].encode(), 1 << 24)
    parts = parser.feed(content)
    parser.close()
    return [(p.headers, p.file.read()) for p in parts]


def path_of(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    assert found is not None, name
    return Path(found)


def store_file(client: TestClient, name: str) -> tuple[str, bytes]:
    data = path_of(name).read_bytes()
    r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code in (200, 202), r.text  # 202: stored with a warning (coerced values)
    return r.json()["00081199"]["Value"][0]["00081190"]["Value"][0], data
