"""WADO with an HTTP Range header: ignored, consistently. Every retrieve
answers 200 with the whole representation (the same parts as without the
header) and says Accept-Ranges: none; never a 206 or a 416."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.dicomweb_gateway.gateway_support import make_instance, multipart_parts

DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
RANGES = ["bytes=0-99", "bytes=-10", "bytes=100-", "bytes=5000000-6000000", "bytes=0-0,10-20", "pages=1-2"]


@pytest.fixture
def urls(client: TestClient) -> dict[str, tuple[str, str]]:
    ds, data = make_instance()
    r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 200, r.text
    study = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    series = f"{study}/series/{ds.SeriesInstanceUID}"
    instance = f"{series}/instances/{ds.SOPInstanceUID}"
    return {
        "study": (study, DICOM),
        "series": (series, DICOM),
        "instance": (instance, DICOM),
        "frames": (f"{instance}/frames/1", OCTETS),
        "bulkdata": (f"{instance}/bulkdata/7FE00010", OCTETS),
        "metadata": (f"{instance}/metadata", "application/dicom+json"),
        "rendered": (f"{instance}/rendered", "image/jpeg"),
        "wado-uri": (
            f"/dicomweb/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}&seriesUID="
            f"{ds.SeriesInstanceUID}&objectUID={ds.SOPInstanceUID}&contentType=application/dicom",
            "*/*",
        ),
    }


def _body(r):  # type: ignore[no-untyped-def]
    ctype = r.headers["content-type"]
    return [body for _, body in multipart_parts(r.content, ctype)] if ctype.startswith("multipart/") else r.content


@pytest.mark.parametrize(
    "what", ["study", "series", "instance", "frames", "bulkdata", "metadata", "rendered", "wado-uri"]
)
def test_a_range_header_is_ignored_and_the_whole_answer_served(
    client: TestClient, urls: dict[str, tuple[str, str]], what: str
) -> None:
    url, accept = urls[what]
    whole = client.get(url, headers={"Accept": accept})
    assert whole.status_code == 200, whole.text
    assert whole.headers["accept-ranges"] == "none"
    for value in RANGES:
        r = client.get(url, headers={"Accept": accept, "Range": value})
        assert r.status_code == 200, (value, r.status_code)
        assert r.headers["accept-ranges"] == "none"
        assert "content-range" not in r.headers
        assert _body(r) == _body(whole), value
