"""The zip writer of WADO-RS zip downloads, in process: ZIP64 past 4 GiB, an
exact size announced up front, constant memory, and which Accept asks for it.
(tests/e2e/test_zip_retrieve.py runs it against a launched archive.)"""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import pytest

from common.gen.dicomserver.v1 import dicom_pb2
from dicomweb_gateway import reading, zip_download
from dicomweb_gateway.errors import ApiError

GIB = 1024**3
ZEROS = bytes(reading.READ_BLOCK)


class ZeroReader:
    """Stored objects of zeros, of given sizes, read as BlobReader reads."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes

    def read(self, key: str, offset: int = 0, length: int = 0) -> bytes:
        end = self.sizes[key] if length <= 0 else min(self.sizes[key], offset + length)
        return ZEROS[: max(0, end - offset)] if end - offset <= len(ZEROS) else bytes(end - offset)


def loc(key: str, size: int) -> dicom_pb2.InstanceLocation:
    return dicom_pb2.InstanceLocation(object_key=key, size=size, transfer_syntax_uid="1.2.840.10008.1.2.1")


def write_sparse(chunks: object, path: Path) -> int:
    """Writes the stream, skipping runs of zeros (a sparse file), so that a
    zip of several GiB of zeros costs no disk."""
    n = 0
    with path.open("wb") as f:
        for chunk in chunks:  # type: ignore[attr-defined]
            if len(chunk) >= 4096 and chunk == ZEROS[: len(chunk)]:
                f.seek(len(chunk), 1)
            else:
                f.write(chunk)
            n += len(chunk)
        f.truncate(n)
    return n


def test_zip64_past_4_gib_at_constant_memory(tmp_path: Path) -> None:
    sizes = {"small-a": 3 * 1024 * 1024 + 17, "big": 4 * GIB + 5 * 1024 * 1024, "small-b": 123}
    members = [
        ("P (1)/S/1 CT/0001.dcm", loc("small-a", sizes["small-a"])),
        ("P (1)/S/1 CT/0002.dcm", loc("big", sizes["big"])),
        ("P (1)/S/1 CT/0003.dcm", loc("small-b", sizes["small-b"])),
    ]
    out = tmp_path / "big.zip"
    tracemalloc.start()
    try:
        zs = zip_download.build(ZeroReader(sizes), members, "*")  # type: ignore[arg-type]
        announced = len(zs)
        written = write_sparse(zip_download.coalesce(zs), out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert written == announced > 4 * GIB
    # Some blocks of READ_BLOCK (4 MiB) at a time, not the 4 GiB member.
    assert peak < 4 * reading.READ_BLOCK, f"peak {peak / 1e6:.1f} MB while zipping {written / 1e9:.1f} GB"
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == [name for name, _ in members]
        assert [i.file_size for i in infos] == [sizes["small-a"], sizes["big"], sizes["small-b"]]
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        assert zf.read(infos[2]) == bytes(123)  # past 4 GiB: found through the ZIP64 records
        assert zf.testzip() is None  # every CRC, the 4 GiB member's too


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("application/zip", "*"),
        ("application/zip; transfer-syntax=*", "*"),
        ('multipart/related; type="application/dicom", application/zip; q=0.5', None),
        ('application/zip, multipart/related; type="application/dicom"; q=0.5', "*"),
        ("*/*", None),
        (None, None),
        ("application/zip; transfer-syntax=1.2.840.10008.1.2.1", "*"),  # what is stored
    ],
)
def test_which_accept_asks_for_a_zip(accept: str | None, expected: str | None) -> None:
    assert zip_download.zip_target(accept, {"1.2.840.10008.1.2.1"}) == expected


def test_a_transfer_syntax_that_cannot_be_made_is_refused() -> None:
    with pytest.raises(ApiError) as err:
        zip_download.zip_target("application/zip; transfer-syntax=1.2.3.4", {"1.2.840.10008.1.2.1"})
    assert err.value.status == 406


def test_small_pieces_are_sent_together() -> None:
    chunks = [b"h" * 30, b"x" * 10, b"B" * 300, b"d" * 16, b"t", b"L" * 2000, b"e"]
    pieces = list(zip_download.coalesce(chunks, at_least=100, join_below=1000))
    assert pieces == [b"h" * 30 + b"x" * 10 + b"B" * 300, b"d" * 16 + b"t", b"L" * 2000, b"e"]


def test_the_api_description_names_the_link_form() -> None:
    from dicomweb_gateway.app import routes
    from dicomweb_gateway.openapi import build

    doc = build(routes(), "/dicomweb")
    for path in (
        "/studies/{study}",
        "/studies/{study}/series/{series}",
        "/studies/{study}/series/{series}/instances/{sop}",
    ):
        get = doc["paths"][path]["get"]
        assert "application/zip" in get["summary"]
        (param,) = [p for p in get["parameters"] if p["in"] == "query"]
        assert param["name"] == zip_download.ACCEPT_PARAM and "application/zip" in param["description"]
