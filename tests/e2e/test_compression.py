"""The compression policy against a launched archive: the bench CT series
sent by dcmsend as calling AE CTSCAN (rule: HTJ2K), pydicom's test images by
STOW-RS (tenant rule: JPEG-LS), one object from AE KEEPER (rule: keep).

The compression consumer runs as its own `python -m eventbus` and is
SIGKILLed twice mid-way and restarted. Then every instance is retrieved as
stored (transfer-syntax=*) and decoded: its pixels equal the original
file's; converted ones are in their rule's syntax with the original syntax
and size in their location; after storage's sweep every object file is one
an index row points to (nothing lost, nothing half-replaced)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from common.clients import MetadataClient, StorageClient, channel
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from testbed.processes import dcmtk_env
from tests.support import ROOT, Archive, bench_ct

# Native ones of several kinds (8/16-bit, grey, RGB, palette, big endian), and
# ones the policy leaves: 1-bit and 32-bit pixels (no JPEG-LS for them),
# no pixels, deflated, compressed, too small to shrink (SC_rgb_small_odd, 3x3).
STOWED = [
    "MR_small.dcm",
    "ExplVR_BigEnd.dcm",
    "SC_rgb_small_odd.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
    "liver_1frame.dcm",
    "rtdose.dcm",
    "rtplan.dcm",
    "image_dfl.dcm",
    "JPEG2000.dcm",
]
CONVERTED = {
    "MR_small.dcm",
    "ExplVR_BigEnd.dcm",
    "examples_overlay.dcm",
    "examples_palette.dcm",
    "examples_rgb_color.dcm",
}
HTJ2K, JPEG_LS = "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.80"
RULES = [
    {"tenant": "default", "calling_ae_title": "CTSCAN", "compress": "htj2k"},
    {"tenant": "default", "calling_ae_title": "KEEPER", "compress": "keep"},
    {"tenant": "default", "compress": "jpeg-ls"},
]


def _ct_series() -> list[Path]:
    return sorted(bench_ct().glob("00_0_*.dcm"))


def _pixels(data: bytes) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(data))
        return ds.pixel_array if "PixelData" in ds else None


class Bus:
    """The compression consumer alone, as its own process."""

    def __init__(self, data_dir: Path, archive: Archive) -> None:
        data_dir.mkdir(exist_ok=True)
        self.log = data_dir / "eventbus.log"
        self.env = {
            **os.environ,
            "DICOMSERVER_DATA_DIR": str(data_dir),
            "DICOMSERVER_LOG_LEVEL": "INFO",
            "DICOMSERVER_METADATA_ADDR": archive.grpc_addrs["metadata"],
            "DICOMSERVER_STORAGE_ADDR": archive.grpc_addrs["storage"],
            "DICOMSERVER_CONSUMERS": "compression",
            "DICOMSERVER_CONSUMER_BATCH": "10",
            "DICOMSERVER_COMPRESSION_RULES": json.dumps(RULES),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eventbus"],
            cwd=ROOT,
            env=self.env,
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    # The launched event bus keeps its default consumers: the policy runs in the test's own bus.
    server = Archive(tmp_path / "archive", extra_env={"DICOMSERVER_CONSUMERS": "metadata,audit"})
    server.start()
    yield server
    assert server.stop() == 0, "".join(server.output)


def _locations(md: MetadataClient, studies: set[str]) -> dict[str, object]:
    out = {}
    for study in studies:
        for loc in md.locate("default", study):
            out[loc.ref.sop_instance_uid] = loc
    return out


def test_compression_policy_survives_kills_and_keeps_pixels(archive: Archive, tmp_path: Path) -> None:
    ct_files = _ct_series()
    originals: dict[str, bytes] = {}
    # The CT series from AE CTSCAN, one object from AE KEEPER.
    keeper = Path(get_testdata_file("CT_small.dcm", download=False))
    for aet, files in (("CTSCAN", ct_files), ("KEEPER", [keeper])):
        proc = subprocess.run(
            ["dcmsend", "-aet", aet, "-aec", archive.ae_title, "127.0.0.1", str(archive.dimse_port), *map(str, files)],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    for f in [*ct_files, keeper]:
        data = f.read_bytes()
        originals[dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID] = data
    keeper_sop = dcmread(keeper, stop_before_pixels=True).SOPInstanceUID
    # pydicom's test images by STOW-RS (no calling AE: the tenant's rule).
    stowed = [Path(p) for n in STOWED if (p := get_testdata_file(n, download=False))]
    expected = set(ct_sops := {dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in ct_files})
    for f in stowed:
        data = f.read_bytes()
        if f.name in CONVERTED:
            expected.add(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        r = httpx.post(
            f"{archive.dicomweb}/studies", content=data, headers={"Content-Type": "application/dicom"}, timeout=60
        )
        assert r.status_code == 200, r.text
        originals[dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID] = data
    studies = {dcmread(io.BytesIO(d), stop_before_pixels=True).StudyInstanceUID for d in originals.values()}

    md_channel = channel(archive.grpc_addrs["metadata"])
    md = MetadataClient(md_channel)
    outbox = md_grpc.MetadataServiceStub(md_channel)

    def converted() -> int:
        return sum(1 for loc in _locations(md, studies).values() if loc.HasField("conversion"))

    def wait_for(what: str, check, timeout: float = 240) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n" + bus.log.read_text(errors="replace")[-3000:])

    bus = Bus(tmp_path / "bus", archive)
    bus.start()
    wait_for("5 conversions", lambda: converted() >= 5)
    bus.kill()  # mid-way: most likely inside a conversion
    bus.start()
    wait_for("20 conversions", lambda: converted() >= 20)
    bus.kill()
    bus.start()
    wait_for(
        "the CT series converted",
        lambda: all(loc.HasField("conversion") for sop, loc in _locations(md, studies).items() if sop in ct_sops),
    )

    def done() -> bool:
        latest = outbox.ReadOutbox(md_pb.ReadOutboxRequest(after_sequence=0, limit=1)).latest_sequence
        import sqlite3

        with sqlite3.connect(tmp_path / "bus" / "eventbus.sqlite3") as db:
            row = db.execute("SELECT sequence FROM offsets WHERE name = 'consumer:compression'").fetchone()
        return row is not None and row[0] >= latest

    wait_for("the consumer to reach the end of the outbox", done)
    bus.proc.send_signal(signal.SIGTERM)
    assert bus.proc.wait(60) == 0

    locations = _locations(md, studies)
    assert set(locations) == set(originals)
    saved = {"CTSCAN": [0, 0], "STOW": [0, 0]}
    for sop, loc in locations.items():
        r = httpx.get(
            f"{archive.dicomweb}/studies/{loc.ref.study_instance_uid}/series/"
            f"{loc.ref.series_instance_uid}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            timeout=60,
        )
        assert r.status_code == 200
        boundary = r.headers["content-type"].split("boundary=")[1].strip('"').encode()
        body = r.content.split(b"--" + boundary)[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
        original = originals[sop]
        received_ts = dcmread(io.BytesIO(original), stop_before_pixels=True).file_meta.TransferSyntaxUID
        want, got = _pixels(original), _pixels(body)
        assert (want is None) == (got is None), sop
        if want is not None:
            assert np.array_equal(want, got), f"{sop}: pixels differ after conversion"
        if sop not in expected:  # the policy keeps it, or the codec cannot take it
            assert not loc.HasField("conversion"), sop
            if sop not in ct_sops and sop != keeper_sop:  # STOW-RS: stored byte for byte
                assert body == original, f"{sop}: a kept object is served as received"
            continue
        assert loc.HasField("conversion"), sop
        assert loc.transfer_syntax_uid == (HTJ2K if sop in ct_sops else JPEG_LS)
        assert dcmread(io.BytesIO(body), stop_before_pixels=True).file_meta.TransferSyntaxUID == loc.transfer_syntax_uid
        # dcmsend may send in another native syntax than the file's.
        assert loc.conversion.original_transfer_syntax_uid == (
            received_ts if sop not in ct_sops else loc.conversion.original_transfer_syntax_uid
        )
        assert loc.conversion.original_transfer_syntax_uid in (
            "1.2.840.10008.1.2",
            "1.2.840.10008.1.2.1",
            "1.2.840.10008.1.2.2",
        )
        # The received object's size (its file meta aside, the file's).
        assert abs(loc.conversion.original_size - len(original)) < 512 and loc.size == len(body) < len(original)
        bucket = saved["CTSCAN" if sop in ct_sops else "STOW"]
        bucket[0] += len(original)
        bucket[1] += len(body)

    # Nothing half-replaced: after the sweep, each object file is one a row points to.
    time.sleep(1.5)
    StorageClient(channel(archive.grpc_addrs["storage"])).sweep(min_age_seconds=1)
    objects = archive.data_dir / "objects"
    files = [p for p in objects.rglob("*.dcm") if ".staging" not in p.parts]
    keys = {str(p.relative_to(objects)) for p in files}
    assert keys == {loc.object_key for loc in locations.values()}
    assert not list((objects / ".staging").glob("*.part"))
    print(
        f"\nstorage saved: bench CT series (HTJ2K) {saved['CTSCAN'][0]} -> {saved['CTSCAN'][1]} bytes; "
        f"pydicom images (JPEG-LS) {saved['STOW'][0]} -> {saved['STOW'][1]} bytes"
    )
    md_channel.close()
