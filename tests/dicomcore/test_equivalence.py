"""dicomcore.read_header against the pydicom path it replaces (common.ingest
+ dicomcore.dataset_json), object by object: the same DICOM JSON, the same index
texts and ints, the same frame count, the same refusals. Every difference is
listed below with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dicomcore
from dicomcore import dataset_json as reference_json
from tests.dicomcore.dicomcore_support import (
    INT_KEYWORDS,
    KEYWORDS,
    pydicom_data_files,
    pydicom_files,
    pynetdicom_files,
    reference,
)

_UID_0123 = (
    "a Referenced SOP Instance UID inside it has a '0123' component, which pydicom's strict reading "
    "refuses, so the reference leaves out the whole top-level sequence; kept as sent"
)

# Top-level elements the reference leaves out and dicomcore keeps, with why.
KEPT: dict[str, dict[str, str]] = {
    **{
        f"test_files/{name}": {"300C0002": _UID_0123}
        for name in (
            "rtdose.dcm",
            "rtdose_1frame.dcm",
            "rtdose_expb.dcm",
            "rtdose_expb_1frame.dcm",
            "rtdose_rle.dcm",
            "rtdose_rle_1frame.dcm",
        )
    },
    "test_files/badVR.dcm": {
        "300C0002": _UID_0123,
        "00280008": "Number of Frames is '1A', not an integer string: kept as the JSON string \"1A\"",
    },
}

# Objects only dicomcore refuses, and objects only the reference refuses.
REFUSED_HERE_ONLY = {
    "test_files/dicomdirtests/DICOMDIR-nooffset": (
        "its last directory record item says 248 bytes where 224 remain in the file: truncated inside a "
        "sequence, which pydicom reads as far as it goes"
    ),
}
REFUSED_THERE_ONLY = {
    "test_files/SC_rgb_jpeg.dcm": (
        "its Pixel Data element header carries no VR (an implicit VR element in an explicit VR dataset, which "
        "pydicom reads); common.ingest's pixel check reads a VR there and a length from the first item's tag, "
        "and calls the object truncated"
    ),
}

# Values dicomcore writes that the reference (which left those elements out)
# did not: checked here so that the listed differences are exactly these.
KEPT_VALUES = {
    ("test_files/badVR.dcm", "00280008"): {"vr": "IS", "Value": ["1A"]},
}


def _compare(name: str, data: bytes, header: dicomcore.Header | None, refusal: dicomcore.Rejected | None) -> None:
    ref = reference(data)
    if ref.rejected is not None or refusal is not None:
        if ref.rejected is not None and refusal is not None:
            assert refusal.status == ref.rejected.status, (refusal.reason, ref.rejected.reason)
            return
        if refusal is not None:
            assert name in REFUSED_HERE_ONLY, f"refused here only: {refusal.reason}"
            return
        assert name in REFUSED_THERE_ONLY, f"refused by the reference only: {ref.rejected.reason}"
        return
    assert name not in REFUSED_HERE_ONLY and name not in REFUSED_THERE_ONLY
    assert header is not None and ref.json is not None and ref.texts is not None and ref.ints is not None
    mine = json.loads(header.json_bytes())
    theirs = json.loads(reference_json.dumps(ref.json))
    kept = KEPT.get(name, {})
    assert set(theirs) - set(mine) == set(), "elements only the reference has"
    assert set(mine) - set(theirs) == set(kept), "elements only dicomcore has, beyond those listed"
    for key in theirs:
        assert mine[key] == theirs[key], key
    for (file, key), value in KEPT_VALUES.items():
        if file == name:
            assert mine[key] == value
    assert header.frames == ref.frames
    for kw in KEYWORDS:
        assert header.text(kw) == ref.texts[kw], kw
    for kw in INT_KEYWORDS:
        assert header.int(kw) == ref.ints[kw], kw


def _check(name: str, path: str) -> None:
    data = Path(path).read_bytes()
    header = refusal = None
    try:
        with open(path, "rb") as f:
            header = dicomcore.read_header(f, len(data))
    except dicomcore.Rejected as exc:
        refusal = exc
    try:
        from_bytes = dicomcore.read_header(data)
    except dicomcore.Rejected as exc:
        assert refusal is not None and exc.status == refusal.status and exc.reason == refusal.reason
    else:
        assert header is not None and from_bytes.json == header.json and from_bytes.pixel == header.pixel
    _compare(name, data, header, refusal)


PYDICOM = pydicom_files()
PYNETDICOM = pynetdicom_files()


@pytest.mark.parametrize("name", sorted(PYDICOM))
def test_pydicom_test_data(name: str) -> None:
    _check(name, PYDICOM[name])


@pytest.mark.parametrize("name", sorted(PYNETDICOM))
def test_pynetdicom_test_data(name: str) -> None:
    _check(name, PYNETDICOM[name])


def test_pydicom_data_package() -> None:
    files = pydicom_data_files()
    if not files:
        pytest.skip("the pydicom-data package is not installed")
    for name, path in sorted(files.items()):
        _check(name, path)


def test_the_lists_name_files_that_exist() -> None:
    names = set(PYDICOM) | set(PYNETDICOM)
    assert set(KEPT) | set(REFUSED_HERE_ONLY) | set(REFUSED_THERE_ONLY) <= names


@pytest.fixture(scope="module")
def bench_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from bench import corpus

    root, _ = corpus.ensure(tmp_path_factory.mktemp("corpus"), corpus.QUICK, log=lambda *_: None)
    return sorted(root.rglob("*.dcm"))


def test_bench_corpus(bench_corpus: list[Path]) -> None:
    assert len(bench_corpus) > 100
    for path in bench_corpus:
        _check(path.name, str(path))
