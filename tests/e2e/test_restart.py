"""The whole server across stops and crashes, as `python -m launcher` runs it:
a restart on the same data folder keeps objects, index, change-feed
positions and API keys; a SIGKILL of the launcher mid-ingest loses nothing
acknowledged and leaves a consistent archive; a service that dies takes the
launcher down with a message naming it (the launcher does not restart
services: a supervisor such as systemd or Kubernetes does, see
docs/deployment.md); and a stop during an open C-STORE finishes or refuses
that object, never half-stores it; and a write cut by a SIGKILL leaves a
staged part that is never served and is swept."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from common.clients import StorageClient, channel
from tests.support import ROOT, Archive, small_ct, split_part10


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(what: str, check, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def ports_of(archive: Archive) -> list[int]:
    return [archive.http_port, archive.dimse_port] + [int(a.rsplit(":", 1)[1]) for a in archive.grpc_addrs.values()]


def sweep(archive: Archive) -> None:
    """Storage's sweep, for anything older than a second."""
    time.sleep(1.1)
    StorageClient(channel(archive.grpc_addrs["storage"])).sweep(min_age_seconds=1)


def test_a_restart_keeps_objects_index_feed_positions_and_api_keys(tmp_path: Path) -> None:
    env = {**os.environ, "DICOMSERVER_DATA_DIR": str(tmp_path), "DICOMSERVER_LOG_LEVEL": "WARNING"}
    made = subprocess.run(
        [sys.executable, "-m", "auth_svc.keys", "create", "--tenant", "default", "--subject", "restart-test"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    key = {"X-API-Key": made.stdout.strip()}
    archive = Archive(tmp_path, extra_env={"DICOMSERVER_AUTH_ENABLED": "true"})
    archive.start()
    try:
        study = small_ct()[0].StudyInstanceUID
        sent = [small_ct(study, PatientName=f"Restart^{n}", PatientID="RST")[1] for n in range(4)]
        for data in sent:
            assert archive.stow(data, key).status_code == 200
        before = (
            archive.listed(key),
            archive.served(study, key),
            httpx.get(f"{archive.dicomweb}/changefeed", params={"limit": "100"}, headers=key).json(),
        )
        assert len(before[0]) == 4 and len(before[2]) == 4
    finally:
        assert archive.stop() == 0, "".join(archive.output[-30:])

    again = Archive(tmp_path, extra_env={"DICOMSERVER_AUTH_ENABLED": "true"})
    again.start()
    try:
        assert httpx.get(f"{again.dicomweb}/studies").status_code == 401  # still closed to anonymous callers
        after = (
            again.listed(key),
            again.served(study, key),
            httpx.get(f"{again.dicomweb}/changefeed", params={"limit": "100"}, headers=key).json(),
        )
        assert after == before
        assert sorted(split_part10(d)[1] for d in sent) == after[1]  # the very bytes sent
        # The feed goes on from where it was: no position is given twice.
        assert again.stow(small_ct(study, PatientID="RST")[1], key).status_code == 200
        feed = httpx.get(f"{again.dicomweb}/changefeed", params={"limit": "100"}, headers=key).json()
        assert feed[:4] == before[2] and len(feed) == 5
        assert feed[4]["Sequence"] == feed[3]["Sequence"] + 1
        latest = httpx.get(f"{again.dicomweb}/changefeed/latest", headers=key).json()
        assert latest == {"Sequence": feed[4]["Sequence"]}
    finally:
        assert again.stop() == 0


def test_a_sigkill_of_the_launcher_mid_ingest_loses_nothing_acknowledged(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.start()
    assert archive.proc is not None
    kids = children(archive.proc.pid)
    assert len(kids) >= 5, kids
    acknowledged: dict[str, bytes] = {}
    study = small_ct()[0].StudyInstanceUID
    stop = threading.Event()

    def ingest() -> None:
        while not stop.is_set():
            ds, data = small_ct(study)
            try:
                r = archive.stow(data)
            except httpx.HTTPError:
                return  # the archive went away mid-request: not acknowledged
            if r.status_code == 200:
                acknowledged[ds.SOPInstanceUID] = split_part10(data)[1]

    writers = [threading.Thread(target=ingest) for _ in range(3)]
    for w in writers:
        w.start()
    wait_for("40 acknowledged objects", lambda: len(acknowledged) >= 40)
    archive.proc.kill()  # the launcher, not its services: they get SIGTERM as their parent dies
    archive.proc.wait()
    wait_for("the services to end", lambda: not any(Path(f"/proc/{k}").exists() for k in kids), timeout=60)
    stop.set()
    for w in writers:
        w.join()
    assert not any(listening(p) for p in ports_of(archive))

    again = Archive(tmp_path)
    again.start()
    try:
        sweep(again)
        listed = again.listed()
        assert set(acknowledged) <= set(listed)
        # Consistent: each listed instance is served, each object file is listed, nothing staged is left.
        assert len(again.served(study)) == len(listed)
        assert set(acknowledged.values()) <= set(again.served(study))
        files = again.stored_files()
        assert not [f for f in files if f.startswith((".staging", ".tmp"))], files
        assert len([f for f in files if f.endswith(".dcm")]) == len(listed)
    finally:
        assert again.stop() == 0


def test_a_service_that_dies_stops_the_launcher_with_its_name(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.start()
    assert archive.proc is not None
    kids = children(archive.proc.pid)
    (metadata,) = [k for k in kids if "metadata_svc" in Path(f"/proc/{k}/cmdline").read_bytes().decode()]
    os.kill(metadata, signal.SIGKILL)
    assert archive.proc.wait(60) == 1
    wait_for("the other services to end", lambda: not any(Path(f"/proc/{k}").exists() for k in kids))
    archive.stop()
    assert "metadata_svc exited with status -9; stopping" in "".join(archive.output)
    assert not any(listening(p) for p in ports_of(archive))
    # Nothing is lost by it: the same folder starts again.
    again = Archive(tmp_path)
    again.start()
    assert again.stop() == 0


def big_ct(study: str, megabytes: int) -> tuple[str, bytes]:
    ds, _ = small_ct(study)
    ds.Rows, ds.Columns, ds.NumberOfFrames = 1024, 1024, megabytes // 2
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng(7).integers(0, 4096, 1024 * 1024 * (megabytes // 2), dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds.SOPInstanceUID, buf.getvalue()


def test_a_stop_during_an_open_c_store_finishes_or_refuses_that_object(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.start()
    assert archive.proc is not None
    study = small_ct()[0].StudyInstanceUID
    small = [small_ct(study) for _ in range(3)]
    big_sop, big = big_ct(study, 96)
    ae = AE(ae_title="STOPTEST")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    for _, data in small:
        assert assoc.send_c_store(dcmread(DicomBytesIO(data))).Status == 0x0000
    outcome: dict[str, int | None] = {}

    def send_big() -> None:
        status = assoc.send_c_store(dcmread(DicomBytesIO(big)))
        outcome["status"] = status.Status if "Status" in status else None

    sender = threading.Thread(target=send_big)
    sender.start()
    staging = tmp_path / "objects" / ".staging"
    wait_for(
        "the big object being received",
        lambda: staging.exists() and any(p.stat().st_size > 0 for p in staging.iterdir()),
        timeout=60,
    )
    archive.proc.send_signal(signal.SIGTERM)
    sender.join(120)
    assert not sender.is_alive()
    if assoc.is_established:
        assoc.release()
    assert archive.proc.wait(60) == 0
    archive.stop()

    again = Archive(tmp_path)
    again.start()
    try:
        sweep(again)
        listed = again.listed()
        assert {ds.SOPInstanceUID for ds, _ in small} <= set(listed)
        if outcome.get("status") == 0x0000:  # acknowledged: it must be whole
            assert big_sop in listed
            assert split_part10(big)[1] in again.served(study)
        else:  # refused or cut off: nothing of it stays
            assert big_sop not in listed
        assert not [f for f in again.stored_files() if f.startswith((".staging", ".tmp"))]
        assert len([f for f in again.stored_files() if f.endswith(".dcm")]) == len(listed)
    finally:
        assert again.stop() == 0


def test_a_part_left_by_a_sigkill_mid_write_is_never_served_and_is_swept(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.start()
    assert archive.proc is not None
    (gateway,) = [
        k for k in children(archive.proc.pid) if "dicomweb_gateway" in Path(f"/proc/{k}/cmdline").read_bytes().decode()
    ]
    sop, data = big_ct(small_ct()[0].StudyInstanceUID, 8)
    half = threading.Event()

    def body() -> Iterator[bytes]:
        yield data[: len(data) // 2]
        half.set()
        time.sleep(30)  # the rest never comes: the gateway dies first
        yield data[len(data) // 2 :]

    def post() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{archive.dicomweb}/studies", content=body(), timeout=60, headers={"Content-Type": "application/dicom"}
            )

    sender = threading.Thread(target=post, daemon=True)
    sender.start()
    staging = tmp_path / "objects" / ".staging"
    wait_for(
        "half the object staged",
        lambda: half.is_set() and staging.exists() and any(p.stat().st_size > 0 for p in staging.iterdir()),
    )
    os.kill(gateway, signal.SIGKILL)
    assert archive.proc.wait(60) == 1
    archive.stop()
    left = [f for f in archive.stored_files() if f.startswith(".staging")]
    assert left, "the killed write left no staged part: nothing was tested"

    again = Archive(tmp_path)
    again.start()
    try:
        assert sop not in again.listed()
        assert httpx.get(f"{again.dicomweb}/instances", params={"SOPInstanceUID": sop}).json() == []
        sweep(again)
        assert again.stored_files() == []
    finally:
        assert again.stop() == 0
