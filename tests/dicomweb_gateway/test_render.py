"""Rendered images, thumbnails and WADO-URI through the app."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import generate_uid
from starlette.testclient import TestClient

from tests.dicomweb_gateway.gateway_support import (
    make_instance,
    multipart_parts,
    path_of,
    store_file,
)


def grey_instance(study: str | None = None, series: str | None = None) -> tuple[str, bytes]:
    """A 32x32 CT whose left half is -1000 HU and right half +1000 HU."""
    ds, _ = make_instance(study, series)
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    pixels = np.zeros((32, 32), np.uint16)
    pixels[:, :16] = 24  # -1000 HU
    pixels[:, 16:] = 2024  # +1000 HU
    ds.PixelData = pixels.tobytes()
    ds.WindowCenter, ds.WindowWidth = 0, 400
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return ds.SOPInstanceUID, buf.getvalue()


def store_bytes(client: TestClient, data: bytes) -> str:
    r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    return str(r.json()["00081199"]["Value"][0]["00081190"]["Value"][0])


def image_of(content: bytes) -> Image.Image:
    return Image.open(io.BytesIO(content))


def test_rendered_grey_with_windowing(client: TestClient) -> None:
    _, data = grey_instance()
    url = store_bytes(client, data)
    r = client.get(f"{url}/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = np.asarray(image_of(r.content))
    assert img.shape == (32, 32)
    # The object's window (0/400): -1000 HU is black, +1000 HU white.
    assert img[:, :16].max() == 0 and img[:, 16:].min() == 255
    # A wide window puts both halves in between.
    r = client.get(f"{url}/rendered?window=0,4000", headers={"Accept": "image/png"})
    wide = np.asarray(image_of(r.content))
    assert 0 < wide[0, 0] < 128 < wide[0, 31] < 255
    r = client.get(f"{url}/rendered?viewport=64,16&quality=50")
    assert r.headers["content-type"] == "image/jpeg"
    assert image_of(r.content).size == (16, 16)


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_rle_2frame.dcm",
        "JPEG2000.dcm",
        "image_dfl.dcm",
        "MR_small_bigendian.dcm",
        "ExplVR_BigEnd.dcm",
    ],
)
def test_rendered_decodes_every_stored_syntax(client: TestClient, name: str) -> None:
    url, data = store_file(client, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(data))
    r = client.get(f"{url}/frames/1/rendered", headers={"Accept": "image/png"})
    assert r.status_code == 200, r.text
    img = image_of(r.content)
    assert img.size == (ds.Columns, ds.Rows)
    assert img.mode == ("RGB" if ds.SamplesPerPixel == 3 else "L")
    if ds.SamplesPerPixel == 3 and ds.BitsAllocated == 8:
        # Colour comes out as the decoded RGB values (lossless PNG).
        want = ds.pixel_array if int(ds.get("NumberOfFrames", 1) or 1) == 1 else ds.pixel_array[0]
        got = np.asarray(img).astype(int)
        assert np.abs(got - want.astype(int)).max() <= 1


def test_thumbnails_and_multi_frame_rendered(client: TestClient) -> None:
    study, series = generate_uid(), generate_uid()
    for _ in range(3):
        store_bytes(client, grey_instance(study, series)[1])
    base = f"/dicomweb/studies/{study}"
    for path in [f"{base}/thumbnail", f"{base}/series/{series}/thumbnail"]:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", path
        assert max(image_of(r.content).size) == 128
    r = client.get(f"{base}/series/{series}/rendered", headers={"Accept": "image/png"})
    assert len(multipart_parts(r.content, r.headers["content-type"])) == 3
    url, _ = store_file(client, "SC_rgb_rle_2frame.dcm")
    r = client.get(f"{url}/frames/1,2/rendered", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert [h["content-type"] for h, _ in multipart_parts(r.content, r.headers["content-type"])] == ["image/jpeg"] * 2


def three_frames() -> bytes:
    """A 16x16 three-frame CT whose frames are dark, mid-grey and bright."""
    ds, _ = make_instance()
    ds.Rows = ds.Columns = 16
    ds.NumberOfFrames = 3
    ds.PixelData = np.stack([np.full((16, 16), v, np.uint16) for v in (100, 2000, 3900)]).tobytes()
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    ds.FrameTime = 40
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def grey_levels(content: bytes) -> list[int]:
    """The grey level of each frame of a (possibly animated) image."""
    img = image_of(content)
    levels = []
    for k in range(getattr(img, "n_frames", 1)):
        img.seek(k)
        levels.append(int(np.asarray(img.convert("L")).mean()))
    return levels


def test_a_multi_frame_instance_renders_as_all_its_frames(client: TestClient) -> None:
    url = store_bytes(client, three_frames())
    # The default for a multi-frame image: an animated GIF of every frame, in order.
    for accept in (None, "*/*", "image/gif", "image/*"):
        r = client.get(f"{url}/rendered", headers={"Accept": accept} if accept else {})
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif", accept
        levels = grey_levels(r.content)
        assert len(levels) == 3 and levels[0] < 40 < levels[1] < 200 < levels[2], (accept, levels)
        assert image_of(r.content).info["duration"] == 40
    # One part per frame when multipart is asked for.
    r = client.get(f"{url}/rendered", headers={"Accept": 'multipart/related; type="image/png"'})
    parts = multipart_parts(r.content, r.headers["content-type"])
    assert [h["content-type"] for h, _ in parts] == ["image/png"] * 3
    assert [grey_levels(body)[0] for _, body in parts] == grey_levels(client.get(f"{url}/rendered").content)
    # A single-image type names one image: the first frame.
    r = client.get(f"{url}/rendered", headers={"Accept": "image/png"})
    assert r.headers["content-type"] == "image/png" and grey_levels(r.content)[0] < 40
    # A frame asked for by number is that frame, rendered or as a thumbnail.
    for path in ("frames/2/rendered", "frames/2/thumbnail"):
        r = client.get(f"{url}/{path}", headers={"Accept": "image/png"})
        assert 40 < grey_levels(r.content)[0] < 200, path
    r = client.get(f"{url}/frames/3,1/rendered")
    levels = grey_levels(r.content)
    assert r.headers["content-type"] == "image/gif" and levels[0] > 200 > 40 > levels[1]
    # The instance's thumbnail is one image.
    r = client.get(f"{url}/thumbnail")
    assert r.headers["content-type"] == "image/jpeg" and grey_levels(r.content)[0] < 40


@pytest.mark.parametrize(
    "query, status",
    [
        ("window=1", 400),
        ("window=a,b", 400),
        ("window=0,0", 400),
        ("viewport=0,10", 400),
        ("quality=101", 400),
        ("bogus=1", 400),
    ],
)
def test_rendered_bad_parameters(client: TestClient, query: str, status: int) -> None:
    url = store_bytes(client, grey_instance()[1])
    r = client.get(f"{url}/rendered?{query}")
    assert r.status_code == status
    assert r.json()["error"]


def test_rendered_errors(client: TestClient) -> None:
    url = store_bytes(client, grey_instance()[1])
    assert client.get(f"{url}/rendered", headers={"Accept": "image/webp"}).status_code == 406
    r = client.get(f"{url}/rendered", headers={"Accept": "image/gif"})  # GIF serves single frames too
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    nopix, _ = store_file(client, "rtplan.dcm")
    assert client.get(f"{nopix}/rendered").status_code == 404
    assert client.get(f"/dicomweb/studies/{generate_uid()}/thumbnail").status_code == 404


def test_wado_uri(client: TestClient) -> None:
    url, data = store_file(client, "SC_rgb_jpeg_dcmtk.dcm")
    study, series, sop = url.split("/studies/")[1].replace("/series/", "/").replace("/instances/", "/").split("/")
    q = f"requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    r = client.get(f"/dicomweb/wado?{q}&contentType=application/dicom")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    assert r.content == data
    r = client.get(f"/dicomweb/wado?{q}&contentType=application/dicom&transferSyntax=1.2.840.10008.1.2.1")
    assert dcmread(io.BytesIO(r.content)).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    r = client.get(f"/dicomweb/wado?{q}&rows=50")
    assert r.headers["content-type"] == "image/jpeg" and image_of(r.content).size[1] == 50
    assert client.get(f"/dicomweb/wado?{q}&contentType=image/png").headers["content-type"] == "image/png"
    for bad, status in [
        (f"requestType=WADO&studyUID={study}&seriesUID={series}", 400),
        (f"{q}&contentType=video/mpeg", 406),
        (q.replace("WADO", "WADX"), 400),
        (f"{q}&windowCenter=5", 400),
        (q.replace(sop, generate_uid()), 404),
        (f"{q}&frameNumber=9", 404),
    ]:
        assert client.get(f"/dicomweb/wado?{bad}").status_code == status, bad
    assert path_of("rtplan.dcm").exists()
