"""Audit events end to end: requests at both edges of a launched archive with
authentication on become AuditRecords on the event bus, and the audit
consumer's table holds who, what, when, from where and the outcome."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from tests.support import Archive, small_ct

SECRET = "audit-trail-test-secret-0123456789abcdef"
MODALITY = "AUDITMOD"
DICOM = "application/dicom"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    server = Archive(
        tmp_path_factory.mktemp("audit"),
        extra_env={
            "DICOMSERVER_AUTH_ENABLED": "true",
            "DICOMSERVER_JWT_HS256_SECRET": SECRET,
            "DICOMSERVER_DIMSE_RULES": json.dumps(
                [
                    {
                        "calling_ae_title": MODALITY,
                        "networks": ["127.0.0.0/8"],
                        "tenant": "alpha",
                        "scopes": ["read", "write"],
                    },
                ]
            ),
        },
    )
    server.start()
    yield server
    assert server.stop() == 0, "".join(server.output)


def bearer(tenants: list[str], subject: str = "dr-who") -> dict[str, str]:
    claims = {
        "sub": subject,
        "tenants": tenants,
        "scope": "dicom.read dicom.write dicom.delete",
        "exp": int(time.time()) + 300,
    }
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


def part10(study: str) -> tuple[Dataset, bytes]:
    return small_ct(study, PatientName="Audit^Patient", PatientID="AUD-1")


def audit_rows(data_dir: Path, want: int, timeout: float = 60) -> list[dict[str, object]]:
    """The audit consumer's rows of kind 'audit', once there are `want` of
    them besides the launcher's readiness probes (C-ECHO from LAUNCHER, refused
    associations too)."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        db = data_dir / "eventbus.sqlite3"
        if db.exists():
            with sqlite3.connect(db) as conn:
                conn.row_factory = sqlite3.Row
                try:
                    rows = [
                        dict(r)
                        for r in conn.execute(
                            "SELECT * FROM audit_log WHERE kind = 'audit' AND subject <> 'ae:LAUNCHER' ORDER BY sequence"
                        )
                    ]
                except sqlite3.OperationalError:
                    rows = []
            if len(rows) >= want:
                return rows
        time.sleep(0.3)
    raise AssertionError(f"{len(rows)} audit rows after {timeout} s, wanted {want}: {rows}")


def test_both_edges_leave_an_audit_trail(secured: Archive) -> None:
    base = secured.dicomweb
    study = generate_uid()
    _, data = part10(study)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n--b--\r\n"
    r = httpx.post(
        f"{base}/studies",
        content=body,
        headers={**bearer(["alpha"]), "Content-Type": f'multipart/related; type="{DICOM}"; boundary=b'},
    )
    assert r.status_code == 200, r.text
    assert httpx.get(f"{base}/studies/{study}/metadata", headers=bearer(["alpha"])).status_code == 200
    assert (
        httpx.get(f"{base}/studies?PatientName=Audit*", headers={"Authorization": "Bearer forged"}).status_code == 401
    )
    assert httpx.get(f"{base}/studies", headers={**bearer(["beta"]), "X-Tenant": "alpha"}).status_code == 403

    ae = AE(ae_title=MODALITY)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", secured.dimse_port, ae_title=secured.ae_title)
    assert assoc.is_established
    ds, _ = part10(study)
    assert assoc.send_c_store(ds).Status == 0
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    assert [s.Status for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)][-1] == 0
    assoc.release()
    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context(Verification)
    assert stranger.associate("127.0.0.1", secured.dimse_port, ae_title=secured.ae_title).is_rejected
    assert httpx.delete(f"{base}/studies/{study}", headers=bearer(["alpha"])).status_code == 204

    rows = audit_rows(secured.data_dir, 8)
    got = sorted(
        (r["edge"], r["operation"], r["action"], r["outcome"], r["status"], r["tenant"], r["subject"]) for r in rows
    )
    assert got == sorted(
        [
            ("dicomweb", "POST /studies", "write", "success", 200, "alpha", "dr-who"),
            ("dicomweb", "GET /studies/{study}/metadata", "read", "success", 200, "alpha", "dr-who"),
            ("dicomweb", "GET /dicomweb/studies", "authenticate", "denied", 401, "", ""),
            ("dicomweb", "GET /dicomweb/studies", "read", "denied", 403, "", ""),
            ("dimse", "C-STORE", "write", "success", 0, "alpha", f"ae:{MODALITY}"),
            ("dimse", "C-FIND", "read", "success", 0, "alpha", f"ae:{MODALITY}"),
            ("dimse", "A-ASSOCIATE", "authenticate", "denied", 0, "", "ae:STRANGER"),
            ("dicomweb", "DELETE /studies/{study}", "delete", "success", 204, "alpha", "dr-who"),
        ]
    )
    by_op = {r["operation"]: r for r in rows}
    assert by_op["GET /studies/{study}/metadata"]["study_instance_uid"] == study
    assert by_op["C-FIND"]["study_instance_uid"] == study
    assert by_op["C-STORE"]["sop_instance_uid"] == ds.SOPInstanceUID
    assert all(str(r["source_address"]).startswith("127.0.0.1:") for r in rows)
    assert all(r["request_id"] for r in rows if r["edge"] == "dicomweb")
    # Who asked is recorded; what they asked about patients is not.
    assert "Audit" not in json.dumps(rows, default=str)
