"""De-identification against a launched archive: pydicom's CT_small and
MR_small, CT_small dressed with attributes of every action class of PS3.15
Table E.1-1 (as the table, with the request's options, says: D, Z, X, K, C,
U), private attributes (one creator safe-listed), and an object with Burned
In Annotation YES. A copy into another tenant (gRPC DeidentifyService), a
second copy with the same project key, and a zip (POST /deidentify).

Checked on every copied object and on its /metadata (GetMetadata, what
/metadata serves): each attribute's action class as the table says; no
original value of a removed or replaced attribute anywhere in the object
or its metadata; private attributes gone unless safe-listed; dates shifted
by one offset per patient; UIDs remapped the same way in both copies and
in the zip; the burned-in object refused; both tenants audited."""

from __future__ import annotations

import io
import json
import sqlite3
import time
import zipfile
from datetime import date

import grpc
import httpx
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from common.clients import MetadataClient, StorageClient, channel
from common.gen.dicomserver.v1 import deidentify_service_pb2 as pb
from common.gen.dicomserver.v1 import deidentify_service_pb2_grpc as pb_grpc
from deidentify import profile
from deidentify.profile import Option
from tests.support import Archive

OPTIONS = frozenset(Option)
PB_OPTIONS = [
    pb.DEIDENTIFY_OPTION_RETAIN_PATIENT_CHARACTERISTICS,
    pb.DEIDENTIFY_OPTION_RETAIN_LONGITUDINAL_MODIFIED_DATES,
    pb.DEIDENTIFY_OPTION_CLEAN_DESCRIPTORS,
]
# VRs whose values are easy to make recognisable.
_TEXT = {"LO", "SH", "LT", "ST", "UT", "PN", "UC"}
_SKIP = {0x00100010, 0x00100020, 0x0020000D, 0x0020000E, 0x00080018, 0x00080016}  # identity, set apart


def _value(tag: int, vr: str) -> object:
    if vr in _TEXT:
        return f"Secret{tag:08X}"
    if vr == "DA":
        return "20200315"
    if vr == "DT":
        return "20200315101500"
    if vr == "TM":
        return "101500"
    if vr == "UI":
        return generate_uid()
    if vr == "AS":
        return "042Y"
    if vr == "CS":
        return "SECRETCS"
    return None


def _by_class() -> dict[str, list[int]]:
    """Up to 12 public, non-retired attributes of each action class (with all options)."""
    out: dict[str, list[int]] = {c: [] for c in "DZXKCU"}
    for tag in profile.listed_tags():
        act = profile.action(tag, OPTIONS)
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            continue
        if tag in _SKIP or tag >> 16 in (0x0002, 0x0000) or _value(tag, vr) is None or len(out[act]) >= 12:
            continue
        if not keyword_for_tag(tag):
            continue
        out[act].append(tag)
    return out


CLASSES = _by_class()


def _dressed(study: str) -> tuple[bytes, Dataset]:
    ds = dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Johnathan", "PID-77123", "19600704"
    for tags in CLASSES.values():
        for tag in tags:
            vr = str(dictionary_VR(tag))
            ds.add_new(tag, vr, _value(tag, vr))
    ds.PatientAge, ds.PatientSex = "060Y", "M"
    ds.StudyDescription = "CT of Johnathan Doe, PID-77123, head"  # C (Clean Descriptors)
    ds.StudyDate = "20200315"
    ds.AcquisitionDate = "20200316"
    block = ds.private_block(0x0029, "ACME SAFE", create=True)
    block.add_new(0x10, "LO", "kept private value")
    block = ds.private_block(0x0031, "ACME SECRET", create=True)
    block.add_new(0x10, "LO", "SecretPrivate")
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue(), ds


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    server = Archive(tmp_path_factory.mktemp("deid"))
    server.start()
    yield server
    assert server.stop() == 0, "".join(server.output)


def _stow(archive: Archive, data: bytes) -> None:
    r = httpx.post(
        f"{archive.dicomweb}/studies", content=data, headers={"Content-Type": "application/dicom"}, timeout=60
    )
    assert r.status_code == 200, r.text


def test_deidentified_copy_follows_the_table(archive: Archive) -> None:
    study = generate_uid()
    dressed, original = _dressed(study)
    _stow(archive, dressed)
    mr = dcmread(get_testdata_file("MR_small.dcm", download=False))
    mr.StudyInstanceUID = study
    mr.PatientID, mr.PatientName = "PID-77123", "Doe^Johnathan"
    mr.StudyDate = "20200315"
    buf = io.BytesIO()
    mr.save_as(buf, enforce_file_format=True)
    _stow(archive, buf.getvalue())
    burned = dcmread(get_testdata_file("CT_small.dcm", download=False))
    burned.StudyInstanceUID, burned.SOPInstanceUID = study, generate_uid()
    burned.file_meta.MediaStorageSOPInstanceUID = burned.SOPInstanceUID
    burned.BurnedInAnnotation = "YES"
    burned.PatientID, burned.PatientName = "PID-77123", "Doe^Johnathan"
    buf = io.BytesIO()
    burned.save_as(buf, enforce_file_format=True)
    _stow(archive, buf.getvalue())

    stub = pb_grpc.DeidentifyServiceStub(grpc.insecure_channel(archive.grpc_addrs["ingest"]))
    request = pb.DeidentifyRequest(
        tenant="default",
        study_instance_uids=[study],
        target_tenant="research",
        project_key="project-alpha",
        options=PB_OPTIONS,
        subject="test",
        safe_private_tags=[pb.SafePrivateTag(creator="ACME SAFE", group=0x0029, element_offset=0x10)],
    )
    first = stub.Deidentify(request, timeout=120)
    assert first.copied == 2 and first.failed == 0
    assert list(first.refused_burned_in) == [burned.SOPInstanceUID]
    (copy_study,) = [s.copy_study_instance_uid for s in first.studies]
    assert copy_study != study and copy_study.startswith("2.25.")
    second = stub.Deidentify(request, timeout=120)  # same project key: the same copy UIDs
    assert [s.copy_study_instance_uid for s in second.studies] == [copy_study]
    with pytest.raises(grpc.RpcError) as refused:
        stub.Deidentify(pb.DeidentifyRequest(tenant="default", study_instance_uids=[study], target_tenant="research"))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # no project key

    md = MetadataClient(channel(archive.grpc_addrs["metadata"]))
    storage = StorageClient(channel(archive.grpc_addrs["storage"]))
    locations = md.locate("research", copy_study)
    assert len(locations) == 2  # the second copy replaced the first: same UIDs
    copies = {}
    for loc in locations:
        data = storage.get_bytes(loc.object_key)
        ds = dcmread(io.BytesIO(data))
        meta = md.get_metadata("research", copy_study, loc.ref.series_instance_uid, loc.ref.sop_instance_uid)[0]
        copies[str(ds.Modality)] = (data, ds, json.loads(meta))
    data, ds, meta = copies["CT"]

    # Every action class, attribute by attribute, in the object and in /metadata.
    shift = (date(2020, 3, 15) - date.fromisoformat(_iso(ds.StudyDate))).days
    assert 30 <= shift <= 3650
    for act, tags in CLASSES.items():
        assert tags, f"no attribute of class {act} to test"
        for tag in tags:
            key, vr, sent = f"{tag:08X}", str(dictionary_VR(tag)), original[tag].value
            present = tag in ds
            got = ds[tag].value if present else None
            if act == "X":
                assert not present and key not in meta, f"X {keyword_for_tag(tag)} survives"
            elif act == "Z":
                assert present and got in (None, "", b""), f"Z {keyword_for_tag(tag)}: {got!r}"
                assert "Value" not in meta.get(key, {}), key
            elif act == "D":
                assert present and got not in (None, "") and str(got) != str(sent), f"D {keyword_for_tag(tag)}"
            elif act == "K":
                assert str(got) == str(sent), f"K {keyword_for_tag(tag)}"
            elif act == "U":
                assert str(got) == _mapped(first, str(sent)) or (str(got).startswith("2.25.") and got != sent)
            elif act == "C":
                if vr in ("DA", "DT"):
                    assert (date.fromisoformat(_iso(str(sent))) - date.fromisoformat(_iso(str(got)))).days == shift
                elif vr == "TM":
                    assert str(got) == str(sent)
                else:
                    assert f"{tag:08X}" not in str(got), f"C {keyword_for_tag(tag)}"
    # No original value of a removed or replaced attribute anywhere.
    blob, meta_text = data, json.dumps(meta)
    for act in "XZDU":
        for tag in CLASSES[act]:
            sent = str(original[tag].value)
            assert sent.encode() not in blob and sent not in meta_text, f"{act} {keyword_for_tag(tag)} leaks"
    for secret in ("Johnathan", "PID-77123", "19600704", "SecretPrivate", original.SOPInstanceUID, study):
        assert secret.encode() not in blob and secret not in meta_text, secret
    # Clean Descriptors: the description stays, its identifying words do not.
    assert "CT" in str(ds.StudyDescription) and "head" in str(ds.StudyDescription)
    # Retain Patient Characteristics: kept.
    assert ds.PatientAge == "060Y" and ds.PatientSex == "M"
    # Private attributes: only the safe-listed one.
    assert ds.get_private_item(0x0029, 0x10, "ACME SAFE").value == "kept private value"
    assert not any(e.tag.group == 0x0031 for e in ds)
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "MODIFIED"
    codes = {item.CodeValue for item in ds.DeidentificationMethodCodeSequence}
    assert codes == {"113100", "113107", "113108", "113105"}
    # One patient, one pseudonym and one date shift across the study.
    _, mr_copy, _ = copies["MR"]
    assert mr_copy.PatientID == ds.PatientID == ds.PatientName and mr_copy.StudyInstanceUID == copy_study
    assert (date(2020, 3, 15) - date.fromisoformat(_iso(mr_copy.StudyDate))).days == shift
    assert ds.PixelData == original.PixelData  # pixels are not touched

    # The zip over HTTP: the same UIDs (same project key), the burned-in object left out.
    r = httpx.post(
        f"{archive.dicomweb}/deidentify",
        headers={"Accept": "application/zip"},
        timeout=120,
        json={
            "studies": [study],
            "project_key": "project-alpha",
            "options": ["retain_patient_characteristics", "retain_longitudinal_modified_dates", "clean_descriptors"],
        },
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        names = sorted(zf.namelist())
        assert names == sorted(f"{copy_study}/{loc.ref.sop_instance_uid}.dcm" for loc in locations)
        for name in names:
            member = dcmread(io.BytesIO(zf.read(name)))
            assert member.PatientID == ds.PatientID and b"Johnathan" not in zf.read(name)
    # A query's result: the studies of a patient.
    r = httpx.post(
        f"{archive.dicomweb}/deidentify",
        headers={"Accept": "application/zip"},
        timeout=120,
        json={"query": {"PatientID": "PID-77123"}, "project_key": "project-alpha"},
    )
    assert r.status_code == 200, r.text
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert len(zf.namelist()) == 2

    # Audited in both tenants (the event bus's audit log).
    db = archive.data_dir / "eventbus.sqlite3"
    deadline = time.monotonic() + 30
    rows: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                rows = conn.execute("SELECT tenant, action FROM audit_log WHERE operation = 'DEIDENTIFY'").fetchall()
        except sqlite3.OperationalError:  # not created yet
            rows = []
        if {("default", "read"), ("research", "write")} <= set(rows):
            break
        time.sleep(0.2)
    assert {("default", "read"), ("research", "write")} <= set(rows)


def _iso(da: str) -> str:
    da = str(da)
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}"


def _mapped(response: pb.DeidentifyResponse, uid: str) -> str:
    return {s.study_instance_uid: s.copy_study_instance_uid for s in response.studies}.get(uid, "")
