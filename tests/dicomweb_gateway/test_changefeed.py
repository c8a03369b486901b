"""The HTTP change feed over the real metadata service."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.dicomweb_gateway.gateway_support import make_instance


def test_feed_lists_creates_and_deletes_in_order(client: TestClient) -> None:
    start = client.get("/dicomweb/changefeed/latest").json()["Sequence"]
    first, data1 = make_instance()
    second, data2 = make_instance()
    for data in (data1, data2):
        assert (
            client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"}).status_code
            == 200
        )
    study_url = f"/dicomweb/studies/{first.StudyInstanceUID}"
    assert client.delete(study_url).status_code == 204

    feed = client.get("/dicomweb/changefeed", params={"offset": start, "limit": 100}).json()
    assert [(e["Action"], e["SopInstanceUid"]) for e in feed] == [
        ("Create", first.SOPInstanceUID),
        ("Create", second.SOPInstanceUID),
        ("Delete", first.SOPInstanceUID),
    ]
    sequences = [e["Sequence"] for e in feed]
    assert sequences == sorted(sequences) and sequences[0] > start
    assert feed[0]["StudyInstanceUid"] == first.StudyInstanceUID
    assert feed[0]["Timestamp"].endswith("Z")
    assert client.get("/dicomweb/changefeed/latest").json()["Sequence"] == sequences[-1]
    # Paging by offset.
    page = client.get("/dicomweb/changefeed", params={"offset": sequences[0], "limit": 1}).json()
    assert [e["Sequence"] for e in page] == [sequences[1]]


def test_bad_parameters_are_400(client: TestClient) -> None:
    for params in ({"offset": "-1"}, {"limit": "0"}, {"limit": "abc"}, {"limit": "100000"}, {"since": "1"}):
        r = client.get("/dicomweb/changefeed", params=params)
        assert r.status_code == 400, params
        assert r.json()["error"]
