"""Frames, bulk data and transcoded retrieve through the app, against objects
from pydicom's test data in native, big endian, deflated and compressed syntaxes."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from starlette.testclient import TestClient

from tests.dicomweb_gateway.gateway_support import make_instance, multipart_parts, store_file

EXPLICIT_LE = "1.2.840.10008.1.2.1"

# name: (frames, encapsulated)
OBJECTS = {
    "MR_small.dcm": (1, False),
    "rtdose.dcm": (15, False),  # implicit VR, 32-bit, multi-frame
    "MR_small_bigendian.dcm": (1, False),
    "liver_1frame.dcm": (1, False),  # 1 bit allocated
    "image_dfl.dcm": (1, False),  # deflated
    "rtdose_rle.dcm": (15, True),
    "SC_rgb_rle_2frame.dcm": (2, True),
    "SC_rgb_jpeg_dcmtk.dcm": (1, True),
    "JPEG2000.dcm": (1, True),
    "MR_small_jpeg_ls_lossless.dcm": (1, True),
}


def expected_stored_frames(data: bytes) -> list[bytes]:
    ds = dcmread(io.BytesIO(data))
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(ds.PixelData, number_of_frames=n))
    arr = ds.pixel_array if n > 1 else ds.pixel_array[np.newaxis]
    if int(ds.BitsAllocated) == 1:
        bits = np.packbits(arr.reshape(n, -1), axis=1, bitorder="little")
        return [bytes(b) for b in bits]
    return [np.ascontiguousarray(f).astype(f.dtype.newbyteorder("<")).tobytes() for f in arr]


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_frames_as_stored(client: TestClient, name: str) -> None:
    url, data = store_file(client, name)
    frames, encapsulated = OBJECTS[name]
    expected = expected_stored_frames(data)
    assert len(expected) == frames
    numbers = list(range(1, frames + 1))[::-1]  # any order the client asks for
    accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    r = client.get(f"{url}/frames/{','.join(map(str, numbers))}", headers={"Accept": accept})
    assert r.status_code == 200, r.text
    parts = multipart_parts(r.content, r.headers["content-type"])
    assert [body for _, body in parts] == [expected[n - 1] for n in numbers]
    ts = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID
    for headers, _ in parts:
        want_ts = ts if encapsulated else EXPLICIT_LE
        assert headers["content-type"] == f"application/octet-stream; transfer-syntax={want_ts}"


@pytest.mark.parametrize("name", [n for n, (_, enc) in sorted(OBJECTS.items()) if enc] + ["image_dfl.dcm"])
def test_frames_decoded_to_native(client: TestClient, name: str) -> None:
    url, data = store_file(client, name)
    r = client.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 200, r.text
    ((headers, body),) = multipart_parts(r.content, r.headers["content-type"])
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = pixel_array(dcmread(io.BytesIO(data)), index=0)
    assert body == np.ascontiguousarray(want).astype(want.dtype.newbyteorder("<")).tobytes()


def test_compressed_frame_in_its_own_media_type(client: TestClient) -> None:
    url, data = store_file(client, "SC_rgb_jpeg_dcmtk.dcm")
    r = client.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert r.status_code == 200
    ((headers, body),) = multipart_parts(r.content, r.headers["content-type"])
    assert headers["content-type"].startswith("image/jpeg")
    assert body == expected_stored_frames(data)[0]
    # Another compressed type is made from the decoded frame (JPEG 2000
    # lossless of the JPEG's pixels); one no encoder here makes is refused.
    r = client.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert r.status_code == 200
    ((headers, body),) = multipart_parts(r.content, r.headers["content-type"])
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    import openjpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(openjpeg.decode(body), pixel_array(dcmread(io.BytesIO(data)), index=0))
    assert client.get(f"{url}/frames/1", headers={"Accept": 'multipart/related; type="image/jpx"'}).status_code == 406


def test_frame_errors(client: TestClient) -> None:
    url, _ = store_file(client, "SC_rgb_rle_2frame.dcm")
    assert client.get(f"{url}/frames/3").status_code == 404
    assert client.get(f"{url}/frames/0").status_code == 404
    r = client.get(f"{url}/frames/1;2")
    assert r.status_code == 400 and "frame list" in r.json()["error"]
    nopix, _ = store_file(client, "rtplan.dcm")
    assert client.get(f"{nopix}/frames/1").status_code == 404


def test_bulkdata_uris_from_metadata_resolve(client: TestClient) -> None:
    ds, data = make_instance()
    r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200
    url = r.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    (meta,) = client.get(f"{url}/metadata").json()
    uris = {
        "lut": meta["00281201"]["BulkDataURI"],
        "icon": meta["00880200"]["Value"][0]["7FE00010"]["BulkDataURI"],
        "pixels": meta["7FE00010"]["BulkDataURI"],
    }
    assert len(set(uris.values())) == 3  # nested bulk data has a URI of its own
    want = {"lut": ds.RedPaletteColorLookupTableData, "icon": ds.IconImageSequence[0].PixelData, "pixels": ds.PixelData}
    for key, uri in uris.items():
        r = client.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert r.status_code == 200, (key, r.text)
        ((_, body),) = multipart_parts(r.content, r.headers["content-type"])
        assert body == want[key], key
        single = client.get(uri, headers={"Accept": "application/octet-stream"})
        assert single.content == want[key]
    assert client.get(f"{url}/bulkdata/00100010").status_code == 404
    assert client.get(f"{url}/bulkdata/00880200/5/7FE00010").status_code == 404
    assert client.get(f"{url}/bulkdata/..%2F..%2Fx").status_code == 404


def test_bulkdata_of_encapsulated_pixels_is_one_part_per_frame(client: TestClient) -> None:
    url, data = store_file(client, "SC_rgb_rle_2frame.dcm")
    r = client.get(f"{url}/bulkdata/7FE00010")
    assert r.status_code == 200
    assert [b for _, b in multipart_parts(r.content, r.headers["content-type"])] == expected_stored_frames(data)


@pytest.mark.parametrize(
    "name, target",
    [
        ("SC_rgb_jpeg_dcmtk.dcm", EXPLICIT_LE),
        ("JPEG2000.dcm", EXPLICIT_LE),
        ("MR_small.dcm", "1.2.840.10008.1.2.4.90"),  # to JPEG 2000 lossless
        ("MR_small.dcm", "1.2.840.10008.1.2.5"),  # to RLE
        ("MR_small_bigendian.dcm", "1.2.840.10008.1.2"),
        ("rtdose_rle.dcm", EXPLICIT_LE),
    ],
)
def test_retrieve_transcoded(client: TestClient, name: str, target: str) -> None:
    url, data = store_file(client, name)
    accept = f'multipart/related; type="application/dicom"; transfer-syntax={target}'
    r = client.get(url, headers={"Accept": accept})
    assert r.status_code == 200, r.text
    ((headers, body),) = multipart_parts(r.content, r.headers["content-type"], "application/dicom")
    assert headers["content-type"] == f"application/dicom; transfer-syntax={target}"
    got = dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        original = dcmread(io.BytesIO(data))
        assert got.SOPInstanceUID == original.SOPInstanceUID
        if (
            not original.file_meta.TransferSyntaxUID.is_compressed
            or "Lossless" in original.file_meta.TransferSyntaxUID.name
        ):
            assert np.array_equal(got.pixel_array, original.pixel_array)
        else:
            assert got.pixel_array.shape == original.pixel_array.shape


def test_transfer_syntax_star_is_untouched_and_unknown_syntax_is_406(client: TestClient) -> None:
    url, data = store_file(client, "SC_rgb_jpeg_dcmtk.dcm")
    r = client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert [b for _, b in multipart_parts(r.content, r.headers["content-type"], "application/dicom")] == [data]
    # A syntax no installed encoder makes (JPEG Extended) is refused.
    r = client.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.51'}
    )
    assert r.status_code == 406
    assert "transcoding" in r.json()["error"]
