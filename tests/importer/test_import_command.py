"""python -m importer import, run as a user runs it, against a launched
archive: a mixed folder (good, duplicate, corrupt, non-DICOM and unreadable
files, a zip, a DICOMDIR) and a DICOMDIR medium go in through IngestService;
what went in is byte-identical; what did not is reported with its reason
and sets the exit status; running it again skips what is stored and
finishes what was missing."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from common.clients import MetadataClient, channel
from importer.meta import NotDicom, read_meta
from importer.run import batches
from importer.sources import Item
from tests.support import ROOT, Archive, small_ct

TENANT = "default"  # DICOMweb reads it back without credentials (authentication is off)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    archive = Archive(tmp_path_factory.mktemp("import"))
    archive.start()
    yield archive
    assert archive.stop() == 0, "".join(archive.output)


def run_import(server: Archive, *paths: Path, report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "importer",
            "import",
            *map(str, paths),
            "--workers",
            "2",
            "--tenant",
            TENANT,
            "--ingest",
            server.grpc_addrs["ingest"],
            "--metadata",
            server.grpc_addrs["metadata"],
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    lines = [json.loads(line) for line in report.read_text().splitlines()]

    def short(name: str) -> str:  # "…/bundle.zip!inner/z0.dcm" -> "bundle.zip!inner/z0.dcm"
        outer, bang, member = name.partition("!")
        return Path(outer).name + bang + member

    return {short(r["file"]): (r["outcome"], r["reason"]) for r in lines}


def truncated_ct() -> bytes:
    """A CT whose pixel data ends early: DICM and a file meta, then too little."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Rows, ds.Columns = "CT", 64, 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.arange(64 * 64, dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()[:-3000]


def stored_uids(server: Archive, uids: list[str]) -> set[str]:
    with channel(server.grpc_addrs["metadata"]) as ch:
        return {loc.ref.sop_instance_uid for loc in MetadataClient(ch).locate_each(TENANT, uids)}


def test_a_mixed_folder_a_zip_and_a_medium(server: Archive, tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    good: dict[str, bytes] = {}
    for name in ("a.dcm", "sub/b.dcm", "no-extension"):
        good[name] = small_ct(PatientName="Import^Test", PatientID="IMP-1")[1]
        (folder / name).write_bytes(good[name])
    shutil.copy(get_testdata_file("CT_small.dcm", download=False), folder / "ct_small.dcm")
    good["ct_small.dcm"] = (folder / "ct_small.dcm").read_bytes()
    (folder / "copy-of-a.dcm").write_bytes(good["a.dcm"])  # a duplicate
    (folder / "corrupt.dcm").write_bytes(truncated_ct())
    (folder / "readme.txt").write_text("not an image\n")
    (folder / "DICOMDIR").write_bytes(Path(get_testdata_file("DICOMDIR", download=False)).read_bytes())
    (folder / "dangling.dcm").symlink_to(tmp_path / "nowhere.dcm")  # listed, cannot be read
    zipped = {f"z{i}.dcm": small_ct(PatientName="Zip^Member")[1] for i in range(2)}
    with zipfile.ZipFile(folder / "bundle.zip", "w") as zf:
        for name, data in zipped.items():
            zf.writestr(f"inner/{name}", data)
        zf.writestr("inner/notes.txt", "hello")
    # A medium: pydicom's DICOMDIR test set, one referenced file gone.
    medium = tmp_path / "medium"
    shutil.copytree(Path(get_testdata_file("DICOMDIR", download=False)).parent, medium)
    referenced = [Path(i.path) for i in FileSet(medium / "DICOMDIR")]
    lost = referenced[5]
    lost_bytes = lost.read_bytes()
    lost.unlink()
    report = tmp_path / "report.jsonl"

    first = run_import(server, folder, medium / "DICOMDIR", report=report)
    assert first.returncode == 1, first.stdout + first.stderr  # not everything went in
    got = outcomes(report)
    for name in (
        "a.dcm",
        "b.dcm",
        "no-extension",
        "ct_small.dcm",
        "bundle.zip!inner/z0.dcm",
        "bundle.zip!inner/z1.dcm",
    ):
        assert got[name][0] == "stored", (name, got[name])
    assert got["copy-of-a.dcm"][0] == "duplicate in this import"
    assert got["corrupt.dcm"][0] == "failed" and got["corrupt.dcm"][1]
    assert got["readme.txt"] == ("not DICOM", "not a DICOM file (no DICM prefix)")
    assert got["bundle.zip!inner/notes.txt"][0] == "not DICOM"
    assert got["DICOMDIR"][0] == "DICOMDIR"
    assert got["dangling.dcm"][0] == "unreadable"
    assert got[lost.name] == ("unreadable", "referenced by the DICOMDIR but missing from the medium")
    counts = Counter(o for o, _ in got.values())
    assert counts["stored"] == 6 + len(referenced) - 1
    # The summary table and the progress line, as a person sees them.
    for text in (
        "stored",
        "duplicate in this import",
        "failed",
        "unreadable",
        "not DICOM",
        "files/s",
        "ETA",
        "3 DICOM file(s) did not go in",
    ):
        assert text in first.stdout, text

    # What went in is what was sent, byte for byte (a zip download brings it back).
    study = pydicom.dcmread(io.BytesIO(zipped["z0.dcm"])).StudyInstanceUID
    r = httpx.get(f"{server.dicomweb}/studies/{study}", headers={"Accept": "application/zip"})
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert [zf.read(n) for n in zf.namelist()] == [zipped["z0.dcm"]]
    uids = [pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True).SOPInstanceUID for d in good.values()]
    assert stored_uids(server, uids) == set(uids)

    # Again: nothing is sent twice; the same files are still missing.
    second = run_import(server, folder, medium / "DICOMDIR", report=report)
    assert second.returncode == 1
    again = outcomes(report)
    assert {n for n, (o, _) in again.items() if o == "stored"} == set()
    assert again["a.dcm"][0] == again["copy-of-a.dcm"][0] == "already in the archive"

    # Mended: the lost file is back, the bad ones are gone; everything is in.
    lost.write_bytes(lost_bytes)
    (folder / "corrupt.dcm").unlink()
    (folder / "dangling.dcm").unlink()
    third = run_import(server, folder, medium / "DICOMDIR", report=report)
    assert third.returncode == 0, third.stdout
    final = outcomes(report)
    assert {n for n, (o, _) in final.items() if o == "stored"} == {lost.name}
    assert "every DICOM file is in the archive" in third.stdout


def test_an_archive_that_does_not_answer(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(small_ct()[1])
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "importer",
            "import",
            str(tmp_path),
            "--ingest",
            "127.0.0.1:1",
            "--metadata",
            "127.0.0.1:1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 3 and "does not answer" in res.stdout


def test_file_meta() -> None:
    data = small_ct()[1]
    meta = read_meta(data)
    ds = pydicom.dcmread(io.BytesIO(data))
    assert (meta.sop_class_uid, meta.sop_instance_uid) == (CTImageStorage, ds.SOPInstanceUID)
    assert meta.transfer_syntax_uid == ExplicitVRLittleEndian
    for junk in (b"", b"x" * 200, bytes(128) + b"DICM" + b"\x02\x00\x10\x00\x01\x02\x00\x00"):  # a VR of junk
        with pytest.raises(NotDicom):
            read_meta(junk)


def test_batches_hold_few_files_and_few_bytes() -> None:
    items = [Item(str(i), size, lambda: io.BytesIO()) for i, size in enumerate([10, 10, 10, 100, 10])]
    assert [[i.name for i in b] for b in batches(items, max_files=2, max_bytes=50)] == [["0", "1"], ["2"], ["3"], ["4"]]


class NothingStored:
    def locate_each(self, tenant: str, uids: list[str]) -> list[object]:
        return []


class FlakyIngest:
    """Unavailable for the first `failures` calls, then stores: records the
    bytes of every object as gRPC would read them."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.received = failures, 0, []  # type: ignore[var-annotated]

    def store_chunked(self, options: object, instances: Iterator[Iterator[bytes]]) -> list[object]:
        from common import errors
        from common.gen.dicomserver.v1 import ingest_service_pb2 as pb

        self.calls += 1
        objects = [b"".join(pieces) for pieces in instances]
        if self.calls <= self.failures:
            raise errors.Unavailable("ingest is restarting")
        self.received.extend(objects)
        return [pb.InstanceOutcome(status=pb.STORE_STATUS_STORED) for _ in objects]


def test_an_unavailable_archive_is_tried_again_with_the_whole_files(tmp_path: Path) -> None:
    from importer.run import Importer, Outcome
    from importer.sources import Sources

    big = truncated_ct() + bytes(64 * 1024)  # longer than the head read before the lookup
    (tmp_path / "big.dcm").write_bytes(big)
    (tmp_path / "small.dcm").write_bytes(small_ct()[1])
    with Sources() as sources:
        items = list(sources.items([tmp_path]))
        ingest = FlakyIngest(failures=2)
        results = Importer(
            ingest,
            NothingStored(),
            TENANT,
            workers=1,  # type: ignore[arg-type]
            retry_pauses=(0, 0),
        ).run(items)
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.STORED]
    assert ingest.calls == 3 and sorted(ingest.received) == sorted([big, (tmp_path / "small.dcm").read_bytes()])

    with Sources() as sources:
        items = list(sources.items([tmp_path]))
        results = Importer(
            FlakyIngest(failures=5),
            NothingStored(),
            TENANT,
            workers=1,  # type: ignore[arg-type]
            retry_pauses=(0, 0),
        ).run(items)
    assert {(r.outcome, r.reason) for r in results} == {
        (Outcome.FAILED, "the archive did not answer: ingest is restarting")
    }
