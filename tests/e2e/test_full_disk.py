"""A full objects volume: a real small filesystem (tmpfs, mounted for the
test; it needs root, as CI has) holds the objects folder, the index lives
elsewhere, as in a deployment with a data volume. Stores that do not fit get
failure statuses (STOW-RS 507, or 409 with 0xA700 for the instance; C-STORE
0xA700),
leave no partial file, and lose nothing acknowledged before; once space
returns the same objects go in."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom.filebase import DicomBytesIO

from tests.support import WADO_AS_STORED, Archive, c_store_ct, small_ct, split_part10

DISK_MB = 24


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "objects-volume"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def one_mb_ct(study: str) -> tuple[str, bytes]:
    ds, _ = small_ct(study)
    ds.Rows, ds.Columns = 512, 1024
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng().integers(0, 4096, 512 * 1024, dtype=np.uint16).tobytes()
    buf = DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds.SOPInstanceUID, buf.getvalue()


def c_store(archive: Archive, data: bytes) -> int:
    return c_store_ct(archive, data, "FULLDISK")


def test_a_full_disk_refuses_what_does_not_fit_and_recovers(disk: Path, tmp_path: Path) -> None:
    archive = Archive(tmp_path / "data", extra_env={"DICOMSERVER_STORAGE_DIR": str(disk / "objects")})
    archive.start()
    try:
        study = small_ct()[0].StudyInstanceUID
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (free - 4 * 1024 * 1024))  # about four objects' room left
        acknowledged: dict[str, bytes] = {}
        refused: list[bytes] = []
        for _ in range(10):
            sop, data = one_mb_ct(study)
            r = archive.stow(data)
            if r.status_code == 200:
                acknowledged[sop] = data
                continue
            # 507 when the body could not be written at all; 409 with 0xA700
            # for the instance when it failed later (at commit).
            if r.status_code == 507:
                assert r.json() == {"error": "storage is full: the object could not be written"}
            else:
                assert r.status_code == 409, r.text
                (failed,) = r.json()["00081198"]["Value"]
                assert failed["00081155"]["Value"] == [sop] and failed["00081197"]["Value"] == [0xA700]
            refused.append(data)
        assert acknowledged and len(refused) >= 3, (len(acknowledged), len(refused))
        late_sop, late = one_mb_ct(study)
        assert c_store(archive, late) == 0xA700
        boundary = "full-disk"
        body = (
            b"".join(
                b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + d + b"\r\n"
                for d in refused[:2]
            )
            + b"--"
            + boundary.encode()
            + b"--\r\n"
        )
        r = httpx.post(
            f"{archive.dicomweb}/studies",
            content=body,
            timeout=60,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
        assert r.status_code == 507, r.text

        # Nothing of the refused is left; everything acknowledged is served as sent.
        objects = disk / "objects"
        files = sorted(str(p.relative_to(objects)) for p in objects.rglob("*") if p.is_file())
        assert not [f for f in files if f.startswith((".staging", ".tmp"))], files
        assert len([f for f in files if f.endswith(".dcm")]) == len(acknowledged)
        r = httpx.get(f"{archive.dicomweb}/studies/{study}", headers={"Accept": WADO_AS_STORED}, timeout=60)
        boundary = r.headers["content-type"].split("boundary=")[1].split(";")[0].strip('"').encode()
        served = {
            split_part10(p.partition(b"\r\n\r\n")[2].removesuffix(b"\r\n"))[1]
            for p in r.content.split(b"--" + boundary)[1:-1]
        }
        assert served == {split_part10(d)[1] for d in acknowledged.values()}

        # Space returns: the same objects go in.
        filler.unlink()
        for data in refused:
            assert archive.stow(data).status_code == 200
        assert c_store(archive, late) == 0x0000
        listed = httpx.get(f"{archive.dicomweb}/studies/{study}/instances", params={"limit": "100"}).json()
        assert len(listed) == len(acknowledged) + len(refused) + 1
    finally:
        assert archive.stop() == 0, "".join(archive.output[-20:])
