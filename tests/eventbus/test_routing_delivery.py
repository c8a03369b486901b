"""Routing against the launched server: rules forward what the archive
stores to real peers. A storescp destination receives every matching
instance byte-identical, in every stored transfer syntax; a poison
destination ends in dead letters and a replay over HTTP delivers; a manual
send over HTTP takes the same path; a second launched archive is a real
STOW-RS destination behind an API key read from a secret file; a studies
rule sends a whole study once it is quiet."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.eventbus.routing_support import (
    ScuPeer,
    StoreScp,
    c_store,
    dataset_bytes,
    make_objects,
    routing_env,
    wait_for,
)
from tests.support import Archive

REMOTE_KEY = "dsk_routingremote01_" + "r" * 40


@dataclass
class Routed:
    archive: Archive
    remote: Archive
    peer: StoreScp
    studies_peer: StoreScp
    poison: ScuPeer
    http: httpx.Client
    root: Path


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    root = tmp_path_factory.mktemp("routing")
    peer, studies_peer = StoreScp("PEER", root / "peer"), StoreScp("STUDIES", root / "studies")
    poison = ScuPeer("POISON", status=0xA700)
    remote = Archive(
        root / "remote",
        extra_env={
            "DICOMSERVER_AUTH_ENABLED": "true",
            "DICOMSERVER_API_KEYS": f'[{{"sha256": "{hashlib.sha256(REMOTE_KEY.encode()).hexdigest()}", '
            f'"subject": "router", "tenants": ["default"], "scopes": ["read", "write"]}}]',
        },
    )
    token = root / "secrets" / "remote-api-key"
    token.parent.mkdir()
    token.write_text(REMOTE_KEY + "\n")
    destinations = {
        "PEER": peer.destination(["default"]),
        "STUDIES": studies_peer.destination(["default"]),
        "POISON": poison.destination(["default"], max_attempts=3, backoff=0.2, max_backoff=0.5),
        "REMOTE": {
            "type": "dicomweb",
            "url": remote.dicomweb,
            "auth": "api_key",
            "token_file": str(token),
            "tenants": ["default"],
        },
    }
    rules = [
        {"name": "from-modality", "tenant": "default", "calling_ae_titles": ["MODALITY"], "destinations": ["PEER"]},
        {
            "name": "ct-to-remote",
            "tenant": "default",
            "modalities": ["CT"],
            "match": {"PatientID": "REMOTE*"},
            "destinations": ["REMOTE"],
        },
        {"name": "poisoned", "tenant": "default", "calling_ae_titles": ["POISONER"], "destinations": ["POISON"]},
        {
            "name": "quiet-ct-studies",
            "tenant": "default",
            "modalities": ["CT"],
            "match": {"StudyDescription": "QUIET*"},
            "send": "studies",
            "quiet_seconds": 4,
            "destinations": ["STUDIES"],
        },
    ]
    archive = Archive(
        root / "archive",
        extra_env=routing_env(
            destinations, rules, DICOMSERVER_ROUTING_BACKOFF="0.5", DICOMSERVER_ROUTING_MAX_BACKOFF="2"
        ),
    )
    for p in (peer, studies_peer):
        p.start()
    poison.start()
    started: list[Archive] = []
    try:
        for a in (remote, archive):
            a.start()
            started.append(a)
        with httpx.Client(base_url=archive.dicomweb, timeout=30) as http:
            yield Routed(archive, remote, peer, studies_peer, poison, http, root)
    finally:
        for a in started:
            assert a.stop() == 0, "".join(a.output)
        for p in (peer, studies_peer):
            p.stop()
        poison.stop()


def test_a_storescp_destination_receives_every_matching_instance_byte_identical(routed: Routed) -> None:
    matching = make_objects(routed.root / "modality", patient_id="MOD-1")  # one per stored transfer syntax
    others = make_objects(routed.root / "other", ["CT_small.dcm", "MR_small.dcm"], patient_id="OTHER-1")
    c_store(routed.archive, matching, "MODALITY")
    c_store(routed.archive, others, "ANOTHER")
    got = wait_for("every matching instance", lambda: (r := routed.peer.received()).keys() >= matching.keys() and r)
    for uid, path in matching.items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path), f"{path.name}: not the bytes stored"
    # The other AE's instances match no rule for this destination (given the time to arrive had they matched).
    wait_for("the queue to drain", lambda: _queued(routed, "PEER") == 0)
    assert not set(others) & set(routed.peer.received())


def _destination(routed: Routed, name: str) -> dict[str, object]:
    r = routed.http.get("/routing/destinations")
    assert r.status_code == 200, r.text
    (found,) = [d for d in r.json()["destinations"] if d["name"] == name]
    return found  # type: ignore[no-any-return]


def _queued(routed: Routed, name: str) -> int:
    return int(_destination(routed, name)["queued"])  # type: ignore[call-overload]


def _dead_letters(routed: Routed, destination: str) -> list[dict[str, object]]:
    r = routed.http.get("/routing/dead-letters", params={"destination": destination})
    assert r.status_code == 200, r.text
    return r.json()["dead_letters"]  # type: ignore[no-any-return]


def test_a_poison_destination_ends_in_dead_letters_and_replay_delivers(routed: Routed) -> None:
    objects = make_objects(routed.root / "poison", ["CT_small.dcm"], copies=2)
    c_store(routed.archive, objects, "POISONER")
    dead = wait_for("two dead letters", lambda: len(d := _dead_letters(routed, "POISON")) == 2 and d)
    assert {d["instance"] for d in dead} == set(objects)
    assert {(d["attempts"], d["error"], d["origin"]) for d in dead} == {
        (3, "C-STORE failed with status 0xA700", "rule:poisoned")
    }
    assert routed.poison.calls == 6 and routed.poison.received == {}
    assert _destination(routed, "POISON")["dead_letters"] == 2 and _queued(routed, "POISON") == 0
    routed.poison.status = 0x0000  # the peer is fixed
    r = routed.http.post("/routing/dead-letters/replay", json={"destination": "POISON"})
    assert r.status_code == 200 and r.json() == {"replayed": 2}, r.text
    wait_for("the replayed deliveries", lambda: routed.poison.received.keys() == objects.keys())
    for uid, data in routed.poison.received.items():
        assert data == dataset_bytes(objects[uid])
    assert _dead_letters(routed, "POISON") == [] and _destination(routed, "POISON")["dead_letters"] == 0
    # Bad requests change nothing.
    for body in ({"ids": ["1"]}, {"ids": 5}, {"destination": 7}, {"what": 1}, [1]):
        assert routed.http.post("/routing/dead-letters/replay", json=body).status_code == 400, body
    assert routed.http.post("/routing/dead-letters/replay", json={"destination": "NOPE"}).status_code == 404
    assert routed.http.get("/routing/dead-letters", params={"limit": "x"}).status_code == 400


def test_a_manual_send_over_http_takes_the_same_path(routed: Routed) -> None:
    study = generate_uid()
    objects = make_objects(routed.root / "manual", ["CT_small.dcm", "MR_small.dcm"], study=study, copies=2)
    c_store(routed.archive, objects, "ANOTHER")  # no rule sends these
    r = routed.http.post(f"/routing/destinations/STUDIES/studies/{study}")
    assert r.status_code == 202, r.text
    sent = r.json()
    assert (sent["total"], sent["study"], sent["destination"]) == (4, study, "STUDIES")
    assert r.headers["Location"].endswith(f"/dicomweb/routing/sends/{sent['id']}")
    progress = wait_for("the send to finish", lambda: (p := httpx.get(r.headers["Location"]).json())["sent"] == 4 and p)
    assert (progress["failed"], progress["skipped"], progress["queued"]) == (0, 0, 0)
    got = routed.studies_peer.received()
    for uid, path in objects.items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path)
    # One series, one instance.
    ds = pydicom.dcmread(next(iter(objects.values())), stop_before_pixels=True)
    r = routed.http.post(
        f"/routing/destinations/STUDIES/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert r.status_code == 202 and r.json()["total"] == 1, r.text
    # What cannot be sent.
    assert routed.http.post(f"/routing/destinations/NOPE/studies/{study}").status_code == 404
    assert routed.http.post(f"/routing/destinations/STUDIES/studies/{generate_uid()}").status_code == 404
    assert routed.http.post("/routing/destinations/STUDIES/studies/not-a-uid").status_code == 400
    assert routed.http.get("/routing/sends/999999").status_code == 404


def test_a_stow_rs_destination_receives_the_matching_instances(routed: Routed) -> None:
    matching = make_objects(routed.root / "remote-ct", ["CT_small.dcm"], patient_id="REMOTE-7", copies=3)
    not_ct = make_objects(routed.root / "remote-mr", ["MR_small.dcm"], patient_id="REMOTE-7")
    not_patient = make_objects(routed.root / "remote-other", ["CT_small.dcm"], patient_id="LOCAL-7")
    for objects in (matching, not_ct, not_patient):
        c_store(routed.archive, objects, "ANOTHER")
    headers = {"X-API-Key": REMOTE_KEY}

    def remote_instances() -> set[str]:
        r = httpx.get(f"{routed.remote.dicomweb}/instances", params={"PatientID": "REMOTE-7"}, headers=headers)
        assert r.status_code == 200, r.text
        return {m["00080018"]["Value"][0] for m in r.json()} if r.content else set()

    wait_for("the remote archive to have them", lambda: remote_instances() >= set(matching))
    wait_for("the queue to drain", lambda: _queued(routed, "REMOTE") == 0)
    assert remote_instances() == set(matching)
    for uid, path in matching.items():
        (stored,) = [p for p in (routed.remote.data_dir / "objects").rglob(f"*{uid}*") if p.is_file()]
        assert dataset_bytes(stored) == dataset_bytes(path), uid


def test_a_studies_rule_sends_the_whole_study_once_it_is_quiet(routed: Routed) -> None:
    study = generate_uid()
    ct = make_objects(routed.root / "quiet-ct", ["CT_small.dcm"], study=study, description="QUIET HEAD", copies=2)
    report = make_objects(routed.root / "quiet-sr", ["test-SR.dcm"], study=study, description="QUIET HEAD")
    c_store(routed.archive, {**ct, **report}, "ANOTHER")
    # Not before the study has been quiet for 4 s; then all of it, the report too.
    time.sleep(2)
    assert not set(routed.studies_peer.received()) & (set(ct) | set(report))
    got = wait_for(
        "the whole study",
        lambda: (r := routed.studies_peer.received()).keys() >= ct.keys() | report.keys() and r,
        timeout=60,
    )
    for uid, path in {**ct, **report}.items():
        assert dataset_bytes(got[uid]) == dataset_bytes(path)
