"""The lean storage path in a launched archive with authentication on: a
calling AE no rule admits is rejected, one that may only read is refused
each C-STORE, and a peer that aborts or vanishes in the middle of an object
leaves nothing in the objects folder's staging area and nothing indexed."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from common.clients import MetadataClient, channel
from tests.ingest_svc.dimse_support import ABORT_RQ, read_pdu, request, store_messages
from tests.support import Archive, small_ct

SECRET = "storage-acceptor-test-secret-0123456789"
WRITER, READER = "MODALITY", "VIEWER"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    server = Archive(
        tmp_path_factory.mktemp("lean"),
        extra_env={
            "DICOMSERVER_AUTH_ENABLED": "true",
            "DICOMSERVER_JWT_HS256_SECRET": SECRET,
            "DICOMSERVER_DIMSE_RULES": json.dumps(
                [
                    {
                        "calling_ae_title": WRITER,
                        "networks": ["127.0.0.0/8"],
                        "tenant": "alpha",
                        "scopes": ["read", "write"],
                    },
                    {"calling_ae_title": READER, "networks": ["127.0.0.0/8"], "tenant": "alpha", "scopes": ["read"]},
                ]
            ),
        },
    )
    server.start()
    yield server
    assert server.stop() == 0, "".join(server.output)


def staging(archive: Archive) -> list[Path]:
    folder = archive.data_dir / "objects" / ".staging"
    return list(folder.iterdir()) if folder.exists() else []


def located(archive: Archive, uid: str) -> list[object]:
    return MetadataClient(channel(archive.grpc_addrs["metadata"])).locate_each("alpha", [uid])


def test_a_calling_ae_no_rule_admits_is_rejected(secured: Archive) -> None:
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", secured.dimse_port, ae_title=secured.ae_title)
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)


def test_an_ae_that_may_only_read_cannot_store(secured: Archive) -> None:
    ds, _ = small_ct()
    statuses = []
    for calling in (READER, WRITER):
        ae = AE(ae_title=calling)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", secured.dimse_port, ae_title=secured.ae_title)
        assert assoc.is_established
        try:
            statuses.append(assoc.send_c_store(ds).Status)
        finally:
            assoc.release()
    assert statuses == [0x0124, 0x0000]


@pytest.mark.parametrize("how", ["abort", "vanish"])
def test_a_peer_leaving_mid_object_leaves_nothing_staged_or_indexed(secured: Archive, tmp_path: Path, how: str) -> None:
    ds, data = small_ct(PatientName="Left^Midway")
    ds.PixelData = bytes(512 * 1024)  # an object of several PDUs
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.SamplesPerPixel = 512, 512, 16, 1
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    whole = store_messages(path, fragment=64 * 1024)
    sock = socket.create_connection(("127.0.0.1", secured.dimse_port), timeout=10)
    sock.sendall(request([(1, CTImageStorage, [ExplicitVRLittleEndian])], calling=WRITER, called=secured.ae_title))
    assert read_pdu(sock)[:1] == b"\x02"
    sock.sendall(whole[: len(whole) // 2])
    deadline = time.monotonic() + 10
    while not staging(secured):  # written as it arrives, into a staging file of the objects folder
        assert time.monotonic() < deadline, "nothing was staged"
        time.sleep(0.05)
    if how == "abort":
        sock.sendall(ABORT_RQ)
    sock.close()
    deadline = time.monotonic() + 10
    while staging(secured):
        assert time.monotonic() < deadline, f"left staged: {staging(secured)}"
        time.sleep(0.05)
    assert located(secured, ds.SOPInstanceUID) == []
