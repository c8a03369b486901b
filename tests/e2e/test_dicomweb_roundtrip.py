"""Round trip over every readable object in pydicom.data, against the running
server: STOW-RS, WADO-RS with transfer-syntax=* gives the same bytes, /metadata
equals pydicom's DICOM JSON for the object (bulk data values aside), DELETE
leaves nothing behind.

Many of pydicom's files share SOP Instance UIDs, so each object is deleted
before the next is stored; that runs on a server of its own so the shared
archive's content is not disturbed."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files

from common.validation import is_uid
from dicomweb_gateway.media import parse_media_type
from dicomweb_gateway.multipart import MultipartParser
from tests.support import Archive

_UID_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


def readable_objects() -> list[Path]:
    """Part 10 files pydicom reads without force, with the four UIDs an archive needs."""
    found = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(get_testdata_files("*")):
            path = Path(name)
            if not path.is_file():
                continue
            try:
                ds = dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if not ds.file_meta.get("TransferSyntaxUID"):
                continue
            if all(is_uid(str(ds.get(k, ""))) for k in _UID_KEYWORDS):
                found.append(path)
    return found


OBJECTS = readable_objects()
# Objects the server refuses (0xC000) on purpose: truncated (MR: in the pixel
# data; RT plan: in a header element).
REFUSED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}
# Left out of the comparison: Data Set Trailing Padding (after the pixel data,
# which the header read stops before; it carries no information).
_IGNORED = {"FFFCFFFC"}


def multipart(content: bytes, content_type: str) -> list[tuple[dict[str, str], bytes]]:
    media = parse_media_type(content_type)
    parser = MultipartParser(media.params["boundary"].encode(), 1 << 26)
    parts = parser.feed(content)
    parser.close()
    return [(p.headers, p.file.read()) for p in parts]


def without_bulk(attrs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, attr in attrs.items():
        if tag in _IGNORED:
            continue
        if tag == "7FE00010":
            # Bulk, and its VR as well: the index records OB/OW from the
            # transfer syntax and Bits Allocated (the header read stops before
            # the pixel data element), which may differ from the VR encoded.
            out[tag] = {"bulk": True}
        elif "BulkDataURI" in attr or "InlineBinary" in attr:
            out[tag] = {"vr": attr["vr"], "bulk": True}
        elif attr.get("vr") == "SQ":
            out[tag] = {"vr": "SQ", "Value": [without_bulk(i) for i in attr.get("Value", [])]}
        else:
            out[tag] = attr
    return out


def pydicom_json(data: bytes) -> tuple[dict[str, Any], set[str]]:
    """pydicom's DICOM JSON of the object, and the top-level elements it
    leaves out because it calls a value invalid (the archive keeps those)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(data))
        attrs = ds.to_json_dict(
            bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "x", suppress_invalid_tags=True
        )
    return without_bulk(attrs), {f"{tag:08X}" for tag in ds.keys()} - set(attrs)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = Archive(tmp_path_factory.mktemp("roundtrip"))
    archive.start()
    yield archive
    assert archive.stop() == 0


def test_corpus_is_large() -> None:
    assert len(OBJECTS) > 60


@pytest.mark.parametrize("path", OBJECTS, ids=[p.name for p in OBJECTS])
def test_round_trip(server: Archive, path: Path) -> None:
    data = path.read_bytes()
    with httpx.Client(base_url=server.dicomweb, timeout=60) as http:
        r = http.post("/studies", content=data, headers={"Content-Type": "application/dicom"})
        if path.name in REFUSED:
            assert r.status_code == 409
            assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
            assert http.get("/studies").json() == []
            assert server.stored_files() == []  # nor in storage, staged parts included
            return
        assert r.status_code in (200, 202), r.text
        url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        try:
            got = http.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
            assert got.status_code == 200
            ((_, body),) = multipart(got.content, got.headers["content-type"])
            assert body == data

            meta = http.get(f"{url}/metadata")
            assert meta.status_code == 200
            (ours,) = meta.json()
            ours = without_bulk(ours)
            theirs, refused = pydicom_json(data)
            # Values as they are: what pydicom refuses is kept, everything else is equal.
            assert set(ours) - set(theirs) <= refused
            assert {tag: ours[tag] for tag in theirs} == theirs
        finally:
            assert http.delete(url).status_code == 204
        assert http.get(url).status_code == 404
        assert http.get("/studies").json() == []
    assert server.stored_files() == []
