"""The DIMSE edge with dcmtk against the launched server: echoscu, dcmsend of a
multi-study corpus, findscu at every level, movescu to a storescp, getscu;
objects that come back equal the ones sent."""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from testbed.processes import dcmtk_env, free_port
from tests.support import Archive, corpus_paths

DCMTK_ENV = dcmtk_env()
PEER = "STORESCP"


@dataclass
class Dimse:
    archive: Archive
    # Sent objects by SOP Instance UID.
    sent: dict[str, Path]
    datasets: dict[str, pydicom.Dataset]
    destination: Path


def content(ds: pydicom.Dataset) -> dict[int, object]:
    """Values by tag, without what dcmtk rewrites when it sends: VRs, group
    lengths and trailing padding."""
    return {int(e.tag): e.value for e in ds if e.tag.element != 0 and e.tag != 0xFFFCFFFC}


def assert_same(returned: pydicom.Dataset, original: pydicom.Dataset) -> None:
    """dcmsend may send uncompressed data in another uncompressed syntax it
    negotiated; compressed data travels as it is, and so does the content."""
    ts = returned.file_meta.TransferSyntaxUID
    if original.file_meta.TransferSyntaxUID.is_compressed:
        assert ts == original.file_meta.TransferSyntaxUID, original.SOPInstanceUID
    else:
        assert not ts.is_compressed, original.SOPInstanceUID
    assert content(returned) == content(original), original.SOPInstanceUID


def run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=DCMTK_ENV, timeout=timeout)


def make_corpus(folder: Path) -> dict[str, pydicom.Dataset]:
    """The corpus in three studies of two patients, with fresh UIDs: the CT,
    JPEG-LS and JPEG 2000 objects in one study (two series), the rest in two
    others."""
    tag = str(uuid.uuid4().int)[:18]
    plan = {
        "CT_small.dcm": ("1", "1", "PAT1", "Doe^Jane", "20200105", "CT"),
        "MR_small_jpeg_ls_lossless.dcm": ("1", "2", "PAT1", "Doe^Jane", "20200105", "MR"),
        "693_J2KI.dcm": ("1", "2", "PAT1", "Doe^Jane", "20200105", "MR"),
        "rtplan.dcm": ("2", "3", "PAT2", "Roe^Richard", "20210310", "RTPLAN"),
        "ExplVR_BigEnd.dcm": ("2", "4", "PAT2", "Roe^Richard", "20210310", "MR"),
        "image_dfl.dcm": ("2", "4", "PAT2", "Roe^Richard", "20210310", "MR"),
        "SC_rgb_rle.dcm": ("3", "5", "PAT1", "Doe^Jane", "20221201", "OT"),
        "SC_rgb_jpeg_dcmtk.dcm": ("3", "6", "PAT1", "Doe^Jane", "20221201", "OT"),
        "test-SR.dcm": ("3", "7", "PAT1", "Doe^Jane", "20221201", "SR"),
    }
    out = {}
    for i, path in enumerate(corpus_paths()):
        study, series, pid, name, date, modality = plan[path.name]
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID = f"2.25.1{tag}{study}"
        ds.SeriesInstanceUID = f"2.25.2{tag}{series}"
        ds.SOPInstanceUID = f"2.25.3{tag}{i}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientID, ds.PatientName, ds.StudyDate, ds.Modality = f"{pid}-{tag}", name, date, modality
        ds.InstanceNumber = i + 1
        target = folder / path.name
        ds.save_as(target, enforce_file_format=True)
        out[ds.SOPInstanceUID] = pydicom.dcmread(target)
    return out


@pytest.fixture(scope="module")
def dimse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dimse]:
    root = tmp_path_factory.mktemp("dimse")
    destination = root / "storescp"
    destination.mkdir()
    port = free_port()
    storescp = subprocess.Popen(
        ["storescp", "-aet", PEER, "+xa", "-od", str(destination), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    archive = Archive(
        root / "archive",
        extra_env={
            "DICOMSERVER_DIMSE_PEERS": json.dumps({PEER: {"host": "127.0.0.1", "port": port}}),
            # One match per Query call, so that a C-CANCEL lands mid-stream.
            "DICOMSERVER_FIND_PAGE_SIZE": "1",
        },
    )
    archive.start()
    corpus = root / "corpus"
    corpus.mkdir()
    datasets = make_corpus(corpus)
    proc = run(
        [
            "dcmsend",
            "-v",
            "--decompress-never",
            "-aec",
            archive.ae_title,
            "+sd",
            "127.0.0.1",
            str(archive.dimse_port),
            str(corpus),
        ]
    )
    try:
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log
        assert re.search(rf"with status SUCCESS +: {len(datasets)}\b", log), log
        sent = {uid: corpus / Path(str(ds.filename)).name for uid, ds in datasets.items()}
        yield Dimse(archive, sent, datasets, destination)
    finally:
        storescp.terminate()
        storescp.wait(10)
        assert archive.stop() == 0, "".join(archive.output)


def find(dimse: Dimse, tmp_path: Path, model: str, keys: list[str]) -> list[pydicom.Dataset]:
    out = tmp_path / f"find-{uuid.uuid4().hex[:8]}"
    out.mkdir()
    args = ["findscu", model, "-X", "-od", str(out), "-aec", dimse.archive.ae_title]
    for key in keys:
        args += ["-k", key]
    proc = run([*args, "127.0.0.1", str(dimse.archive.dimse_port)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [pydicom.dcmread(p) for p in sorted(out.iterdir())]


def of_corpus(dimse: Dimse, keyword: str) -> set[str]:
    return {str(ds.get(keyword)) for ds in dimse.datasets.values()}


def test_echoscu(dimse: Dimse) -> None:
    proc = run(["echoscu", "-aec", dimse.archive.ae_title, "127.0.0.1", str(dimse.archive.dimse_port)])
    assert proc.returncode == 0, proc.stderr


def test_findscu_patient_level_with_wildcard(dimse: Dimse, tmp_path: Path) -> None:
    tag = next(iter(dimse.datasets.values())).PatientID.split("-")[1]
    found = find(
        dimse,
        tmp_path,
        "-P",
        [
            "QueryRetrieveLevel=PATIENT",
            f"PatientID=*-{tag}",
            "PatientName=Doe*",
            "PatientBirthDate=",
            "NumberOfPatientRelatedStudies=",
        ],
    )
    assert [str(ds.PatientName) for ds in found] == ["Doe^Jane"]
    (ds,) = found
    assert ds.PatientID == f"PAT1-{tag}"
    assert ds.NumberOfPatientRelatedStudies == 2
    assert "PatientBirthDate" in ds and ds.PatientBirthDate == ""  # empty keys come back empty
    assert ds.SpecificCharacterSet == "ISO_IR 192"


def test_findscu_study_level_with_date_range_and_uid_list(dimse: Dimse, tmp_path: Path) -> None:
    studies = sorted(of_corpus(dimse, "StudyInstanceUID"))
    found = find(
        dimse,
        tmp_path,
        "-S",
        [
            "QueryRetrieveLevel=STUDY",
            "StudyInstanceUID=" + "\\".join(studies),
            "StudyDate=20200101-20211231",
            "PatientName=",
            "ModalitiesInStudy=",
            "NumberOfStudyRelatedInstances=",
            "AccessionNumber=",
        ],
    )
    by_study = {ds.StudyInstanceUID: ds for ds in found}
    assert set(by_study) == set(studies[:2])
    first = by_study[studies[0]]
    assert sorted(first.ModalitiesInStudy) == ["CT", "MR"]
    assert first.NumberOfStudyRelatedInstances == 3
    assert str(first.PatientName) == "Doe^Jane"
    assert "AccessionNumber" in first


def test_findscu_series_level_in_study_root(dimse: Dimse, tmp_path: Path) -> None:
    study = sorted(of_corpus(dimse, "StudyInstanceUID"))[1]
    found = find(
        dimse,
        tmp_path,
        "-S",
        [
            "QueryRetrieveLevel=SERIES",
            f"StudyInstanceUID={study}",
            "Modality=MR",
            "SeriesInstanceUID=",
            "NumberOfSeriesRelatedInstances=",
        ],
    )
    expected = {
        ds.SeriesInstanceUID for ds in dimse.datasets.values() if ds.StudyInstanceUID == study and ds.Modality == "MR"
    }
    assert {ds.SeriesInstanceUID for ds in found} == expected
    assert [ds.NumberOfSeriesRelatedInstances for ds in found] == [2]


def test_findscu_image_level_in_patient_root(dimse: Dimse, tmp_path: Path) -> None:
    ds0 = next(
        ds
        for ds in dimse.datasets.values()
        if ds.Modality == "MR" and "JPEG" not in ds.file_meta.TransferSyntaxUID.name
    )
    found = find(
        dimse,
        tmp_path,
        "-P",
        [
            "QueryRetrieveLevel=IMAGE",
            f"PatientID={ds0.PatientID}",
            f"StudyInstanceUID={ds0.StudyInstanceUID}",
            f"SeriesInstanceUID={ds0.SeriesInstanceUID}",
            "SOPInstanceUID=",
            "SOPClassUID=",
            "InstanceNumber=",
        ],
    )
    expected = {uid for uid, ds in dimse.datasets.items() if ds.SeriesInstanceUID == ds0.SeriesInstanceUID}
    assert {ds.SOPInstanceUID for ds in found} == expected
    for ds in found:
        assert ds.SOPClassUID == dimse.datasets[ds.SOPInstanceUID].SOPClassUID
        assert ds.InstanceNumber == dimse.datasets[ds.SOPInstanceUID].InstanceNumber


def test_findscu_with_a_bad_level_fails(dimse: Dimse) -> None:
    # Study Root has no PATIENT level.
    proc = run(
        [
            "findscu",
            "-v",
            "-S",
            "-aec",
            dimse.archive.ae_title,
            "-k",
            "QueryRetrieveLevel=PATIENT",
            "-k",
            "PatientName=",
            "127.0.0.1",
            str(dimse.archive.dimse_port),
        ]
    )
    assert "Final Find Response (Error: DataSetDoesNotMatchSOPClass)" in proc.stdout + proc.stderr


def moved(dimse: Dimse, uids: set[str], timeout: float = 30) -> dict[str, pydicom.Dataset]:
    """The objects storescp received among `uids`."""
    deadline = time.monotonic() + timeout
    while True:
        got = {}
        for path in dimse.destination.iterdir():
            ds = pydicom.dcmread(path)
            if ds.SOPInstanceUID in uids:
                got[ds.SOPInstanceUID] = ds
        if set(got) == uids or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_movescu_to_storescp_sends_what_was_stored(dimse: Dimse, level: str) -> None:
    ds0 = next(ds for ds in dimse.datasets.values() if ds.Modality == "MR" and ds.PatientID.startswith("PAT2"))
    key = {"STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
    wanted = {uid for uid, ds in dimse.datasets.items() if ds.get(key) == ds0.get(key)}
    keys = [f"QueryRetrieveLevel={level}", f"StudyInstanceUID={ds0.StudyInstanceUID}"]
    if level != "STUDY":
        keys.append(f"SeriesInstanceUID={ds0.SeriesInstanceUID}")
    if level == "IMAGE":
        keys.append(f"SOPInstanceUID={ds0.SOPInstanceUID}")
    for old in dimse.destination.iterdir():
        old.unlink()
    args = ["movescu", "-v", "-S", "-aec", dimse.archive.ae_title, "-aem", PEER]
    for k in keys:
        args += ["-k", k]
    proc = run([*args, "127.0.0.1", str(dimse.archive.dimse_port)])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    assert "Received Final Move Response (Success)" in log, log
    if len(wanted) > 1:
        assert "Received Move Response 1 (Pending)" in log, log
    got = moved(dimse, wanted)
    assert set(got) == wanted
    for uid, ds in got.items():
        assert_same(ds, pydicom.dcmread(dimse.sent[uid]))


def test_movescu_of_every_transfer_syntax(dimse: Dimse) -> None:
    for old in dimse.destination.iterdir():
        old.unlink()
    studies = sorted(of_corpus(dimse, "StudyInstanceUID"))
    args = [
        "movescu",
        "-S",
        "-aec",
        dimse.archive.ae_title,
        "-aem",
        PEER,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "StudyInstanceUID=" + "\\".join(studies),
    ]
    proc = run([*args, "127.0.0.1", str(dimse.archive.dimse_port)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = moved(dimse, set(dimse.datasets))
    assert set(got) == set(dimse.datasets)
    for uid, ds in got.items():
        assert_same(ds, pydicom.dcmread(dimse.sent[uid]))


def test_movescu_to_an_unknown_destination_fails(dimse: Dimse) -> None:
    ds0 = next(iter(dimse.datasets.values()))
    proc = run(
        [
            "movescu",
            "-S",
            "-aec",
            dimse.archive.ae_title,
            "-aem",
            "NOWHERE",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={ds0.StudyInstanceUID}",
            "127.0.0.1",
            str(dimse.archive.dimse_port),
        ]
    )
    log = proc.stdout + proc.stderr
    assert "(Refused: MoveDestinationUnknown)" in log, log


@pytest.mark.parametrize(
    "option,syntax_name", [("+xe", "Explicit VR Little Endian"), ("+xt", "JPEG-LS Lossless Image Compression")]
)
def test_getscu_stores_back_on_the_same_association(
    dimse: Dimse, tmp_path: Path, option: str, syntax_name: str
) -> None:
    ds0 = next(ds for ds in dimse.datasets.values() if ds.file_meta.TransferSyntaxUID.name == syntax_name)
    proc = run(
        [
            "getscu",
            "-v",
            option,
            "-S",
            "-aec",
            dimse.archive.ae_title,
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"SeriesInstanceUID={ds0.SeriesInstanceUID}",
            "127.0.0.1",
            str(dimse.archive.dimse_port),
        ]
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    got = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(p) for p in tmp_path.iterdir())}
    assert ds0.SOPInstanceUID in got, log
    assert_same(got[ds0.SOPInstanceUID], pydicom.dcmread(dimse.sent[ds0.SOPInstanceUID]))
