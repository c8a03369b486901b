"""dicomweb-client (a third-party DICOMweb client from PyPI) against the running
server: store, search, retrieve instances, frames, metadata, bulk data and
rendered images, delete; and bad input that must change nothing."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import generate_uid
from requests.exceptions import HTTPError

from tests.support import Archive


def fresh(name: str) -> Dataset:
    """A pydicom test object under new UIDs, so nothing else in the archive collides."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(Path(str(get_testdata_file(name, download=False))))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    return ds


@pytest.fixture
def client(archive: Archive) -> DICOMwebClient:
    return DICOMwebClient(url=archive.dicomweb)


def test_store_search_retrieve_delete(client: DICOMwebClient, archive: Archive) -> None:
    ct, rle = fresh("CT_small.dcm"), fresh("SC_rgb_rle_2frame.dcm")
    rle.StudyInstanceUID = ct.StudyInstanceUID
    result = client.store_instances([ct, rle])
    assert len(result.ReferencedSOPSequence) == 2 and "FailedSOPSequence" not in result
    study = ct.StudyInstanceUID

    (found,) = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    assert found["00201208"]["Value"] == [2]
    assert {s["0020000E"]["Value"][0] for s in client.search_for_series(study)} == {
        ct.SeriesInstanceUID,
        rle.SeriesInstanceUID,
    }
    assert [
        i["00080018"]["Value"][0]
        for i in client.search_for_instances(study, search_filters={"SOPInstanceUID": ct.SOPInstanceUID})
    ] == [ct.SOPInstanceUID]

    got = client.retrieve_instance(study, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert got.PixelData == ct.PixelData and got.PatientName == ct.PatientName
    assert {d.SOPInstanceUID for d in client.retrieve_study(study)} == {ct.SOPInstanceUID, rle.SOPInstanceUID}

    # Transcoded on request: the RLE object decompressed to Explicit VR Little Endian.
    native = client.retrieve_instance(
        study, rle.SeriesInstanceUID, rle.SOPInstanceUID, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),)
    )
    assert native.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert np.array_equal(native.pixel_array, rle.pixel_array)

    # Frames: compressed as stored, and decoded to native.
    stored_frames = list(generate_frames(rle.PixelData, number_of_frames=2))
    frames = client.retrieve_instance_frames(
        study,
        rle.SeriesInstanceUID,
        rle.SOPInstanceUID,
        frame_numbers=[2, 1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert frames == [stored_frames[1], stored_frames[0]]
    (decoded,) = client.retrieve_instance_frames(
        study,
        rle.SeriesInstanceUID,
        rle.SOPInstanceUID,
        frame_numbers=[2],
        media_types=(("application/octet-stream", "1.2.840.10008.1.2.1"),),
    )
    assert decoded == np.ascontiguousarray(rle.pixel_array[1]).tobytes()
    (ct_frame,) = client.retrieve_instance_frames(study, ct.SeriesInstanceUID, ct.SOPInstanceUID, frame_numbers=[1])
    assert ct_frame == ct.PixelData

    # Metadata and the bulk data it points to.
    meta = client.retrieve_instance_metadata(study, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    assert meta["00100010"]["Value"][0]["Alphabetic"] == str(ct.PatientName)
    uri = meta["7FE00010"]["BulkDataURI"]
    # dicomweb-client sends "Host: 127.0.0.1" without the port, and URIs are
    # built from Host (or DICOMSERVER_PUBLIC_URL): put the port back.
    uri = archive.dicomweb + uri.split("/dicomweb", 1)[1]
    assert client.retrieve_bulkdata(uri) == [ct.PixelData]
    series_meta = client.retrieve_series_metadata(study, rle.SeriesInstanceUID)
    assert [m["00080018"]["Value"][0] for m in series_meta] == [rle.SOPInstanceUID]
    assert len(client.retrieve_study_metadata(study)) == 2

    # Rendered.
    png = client.retrieve_instance_rendered(study, ct.SeriesInstanceUID, ct.SOPInstanceUID, media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (ct.Columns, ct.Rows)

    client.delete_instance(study, rle.SeriesInstanceUID, rle.SOPInstanceUID)
    assert [i["00080018"]["Value"][0] for i in client.search_for_instances(study)] == [ct.SOPInstanceUID]
    client.delete_study(study)
    assert client.search_for_studies(search_filters={"StudyInstanceUID": study}) == []
    with pytest.raises(HTTPError) as err:
        client.retrieve_study_metadata(study)
    assert err.value.response.status_code == 404


def boundary_body(parts: list[bytes], boundary: str = "b0undary") -> bytes:
    out = b""
    for data in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


BAD_CASES = [
    # name: (content type, body builder(data) -> bytes, expected status)
    (
        "malformed multipart",
        'multipart/related; type="application/dicom"; boundary=b0undary',
        lambda d: b"--b0undary\r\nContent-Type: application/dicom\r\n" + d[:100],
        400,
    ),
    (
        "wrong boundary",
        'multipart/related; type="application/dicom"; boundary=other',
        lambda d: boundary_body([d]),
        400,
    ),
    ("no boundary", 'multipart/related; type="application/dicom"', lambda d: boundary_body([d]), 400),
    (
        "non-DICOM part",
        'multipart/related; type="application/dicom"; boundary=b0undary',
        lambda d: boundary_body([b"this is not DICOM" * 20]),
        409,
    ),
    ("truncated object", "application/dicom", lambda d: d[: len(d) - 1000], 409),
    ("wrong media type", "text/plain", lambda d: d, 415),
    (
        "wrong multipart type",
        'multipart/related; type="image/jpeg"; boundary=b0undary',
        lambda d: boundary_body([d]),
        415,
    ),
    ("empty body", "application/dicom", lambda d: b"", 400),
]


@pytest.mark.parametrize("name, content_type, build, status", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_stow_input_stores_nothing(
    archive: Archive, name: str, content_type: str, build: object, status: int
) -> None:
    ds = fresh("CT_small.dcm")
    body = build(_bytes(ds))  # type: ignore[operator]
    r = httpx.post(f"{archive.dicomweb}/studies", content=body, headers={"Content-Type": content_type})
    assert r.status_code == status, r.text
    assert r.content  # every answer has a readable body
    assert httpx.get(f"{archive.dicomweb}/studies?StudyInstanceUID={ds.StudyInstanceUID}").json() == []


def test_wrong_study_in_url_stores_nothing(archive: Archive) -> None:
    ds = fresh("CT_small.dcm")
    other = generate_uid()
    r = httpx.post(
        f"{archive.dicomweb}/studies/{other}", content=_bytes(ds), headers={"Content-Type": "application/dicom"}
    )
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    for uid in (ds.StudyInstanceUID, other):
        assert httpx.get(f"{archive.dicomweb}/studies?StudyInstanceUID={uid}").json() == []


@pytest.mark.parametrize(
    "path, status",
    [
        ("/studies?limit=1e9", 400),
        ("/studies?StudyDate=" + "9" * 5000, 400),
        ("/studies/" + "1" * 200, 400),
        ("/studies/1.2.3/series/4.5.6/instances/7.8.9/frames/1,2,x", 400),
        ("/studies/1.2.3/series/4.5.6/instances/7.8.9/frames/1", 404),
        ("/studies/1.2.3/series/4.5.6/instances/7.8.9/rendered?viewport=99999,1", 400),
        ("/wado?requestType=WADO&studyUID=1&seriesUID=2", 400),
    ],
)
def test_absurd_parameters(archive: Archive, path: str, status: int) -> None:
    r = httpx.get(archive.dicomweb + path)
    assert r.status_code == status
    assert r.json()["error"]
