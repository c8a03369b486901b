"""Tenant walls in routing, against the launched server with authentication
on: a rule sends only its own tenant's data, a destination bound to tenant
A never receives tenant B's (not even an instance with the same SOP
Instance UID), and over HTTP each tenant sees, sends to and replays only
its own destinations, studies, sends and dead letters."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.eventbus.routing_support import (  # noqa: E402
    ScuPeer,
    StoreScp,
    c_store,
    make_objects,
    routing_env,
    wait_for,
)
from tests.support import Archive  # noqa: E402

KEYS = {
    "a": "dsk_routingwalla001_" + "a" * 40,
    "b": "dsk_routingwallb001_" + "b" * 40,
    "a-no-admin": "dsk_routingwalla002_" + "c" * 40,
}


@dataclass
class Walls:
    archive: Archive
    peers: dict[str, StoreScp]
    poison: ScuPeer
    objects: dict[str, dict[str, Path]]  # tenant -> SOP UID -> file
    studies: dict[str, str]
    shared: str

    def http(self, who: str) -> httpx.Client:
        return httpx.Client(base_url=self.archive.dicomweb, headers={"X-API-Key": KEYS[who]}, timeout=30)


def _key(name: str, tenant: str, scopes: list[str]) -> dict[str, object]:
    return {
        "sha256": hashlib.sha256(KEYS[name].encode()).hexdigest(),
        "subject": name,
        "tenants": [tenant],
        "scopes": scopes,
    }


@pytest.fixture(scope="module")
def walls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Walls]:
    root = tmp_path_factory.mktemp("routing-walls")
    peers = {name: StoreScp(name, root / name) for name in ("DA", "DB", "DAB")}
    poison = ScuPeer("POISON", status=0xA700)
    destinations = {
        "DA": peers["DA"].destination(["a"]),
        "DB": peers["DB"].destination(["b"]),
        "DAB": peers["DAB"].destination(["a", "b"]),
        "POISON": poison.destination(["a", "b"], max_attempts=1),
    }
    rules = [
        {"name": "a-everything", "tenant": "a", "destinations": ["DA", "DAB", "POISON"]},
        {"name": "b-ct", "tenant": "b", "modalities": ["CT"], "destinations": ["DB", "POISON"]},
    ]
    archive = Archive(
        root / "archive",
        extra_env={
            **routing_env(destinations, rules),
            "DICOMSERVER_AUTH_ENABLED": "true",
            "DICOMSERVER_API_KEYS": json.dumps(
                [
                    _key("a", "a", ["read", "write", "admin"]),
                    _key("b", "b", ["read", "write", "admin"]),
                    _key("a-no-admin", "a", ["read", "write"]),
                ]
            ),
            "DICOMSERVER_DIMSE_RULES": json.dumps(
                [{"calling_ae_title": "MOD_A", "tenant": "a"}, {"calling_ae_title": "MOD_B", "tenant": "b"}]
            ),
        },
    )
    for p in peers.values():
        p.start()
    poison.start()
    archive.start()
    try:
        shared = generate_uid()
        objects: dict[str, dict[str, Path]] = {}
        studies: dict[str, str] = {}
        for tenant, ae in (("a", "MOD_A"), ("b", "MOD_B")):
            studies[tenant] = generate_uid()
            objects[tenant] = make_objects(
                root / tenant,
                ["CT_small.dcm", "MR_small.dcm"],
                study=studies[tenant],
                patient_id=f"{tenant.upper()}-1",
                copies=2,
            )
            # The same SOP Instance UID in both tenants, with different contents.
            (path,) = make_objects(
                root / f"{tenant}-shared",
                ["CT_small.dcm"],
                patient_id=f"{tenant.upper()}-SHARED",
                study=studies[tenant],
            ).values()
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = shared
            ds.save_as(path, enforce_file_format=True)
            objects[tenant][shared] = path
            c_store(archive, objects[tenant], ae)
        yield Walls(archive, peers, poison, objects, studies, shared)
    finally:
        assert archive.stop() == 0, "".join(archive.output)
        for p in peers.values():
            p.stop()
        poison.stop()


def _patient_ids(peer: StoreScp) -> dict[str, str]:
    return {uid: str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) for uid, p in peer.received().items()}


def _dead(client: httpx.Client) -> list[dict[str, object]]:
    r = client.get("/routing/dead-letters")
    assert r.status_code == 200, r.text
    return r.json()["dead_letters"]  # type: ignore[no-any-return]


def test_rules_send_only_their_tenants_data_to_destinations_bound_to_it(walls: Walls) -> None:
    a, b = walls.objects["a"], walls.objects["b"]
    b_ct = {uid for uid, p in b.items() if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT"}
    with walls.http("a") as ha, walls.http("b") as hb:
        wait_for("every delivery to end", lambda: len(_dead(ha)) == len(a) and len(_dead(hb)) == len(b_ct))
    wait_for("DA", lambda: walls.peers["DA"].received().keys() == a.keys())
    wait_for("DAB", lambda: walls.peers["DAB"].received().keys() == a.keys())
    wait_for("DB", lambda: walls.peers["DB"].received().keys() == b_ct)
    # The shared SOP Instance UID: each destination got the copy of the tenant it is routed from.
    assert set(_patient_ids(walls.peers["DA"]).values()) == {"A-1", "A-SHARED"}
    assert set(_patient_ids(walls.peers["DAB"]).values()) == {"A-1", "A-SHARED"}
    assert set(_patient_ids(walls.peers["DB"]).values()) == {"B-1", "B-SHARED"}
    assert walls.poison.received == {}


def test_over_http_each_tenant_sees_and_sends_only_its_own(walls: Walls) -> None:
    with walls.http("a") as ha, walls.http("b") as hb, walls.http("a-no-admin") as plain:
        assert {d["name"] for d in ha.get("/routing/destinations").json()["destinations"]} == {"DA", "DAB", "POISON"}
        assert {d["name"] for d in hb.get("/routing/destinations").json()["destinations"]} == {"DB", "DAB", "POISON"}
        # Another tenant's destination reads like one that does not exist; another tenant's study has nothing.
        refused = ha.post(f"/routing/destinations/DB/studies/{walls.studies['a']}")
        missing = ha.post(f"/routing/destinations/NOPE/studies/{walls.studies['a']}")
        assert refused.status_code == missing.status_code == 404 and refused.json() == missing.json()
        assert ha.post(f"/routing/destinations/DAB/studies/{walls.studies['b']}").status_code == 404
        # Dead letters: each tenant's own; the admin scope is needed.
        wait_for("the dead letters", lambda: _dead(ha) and _dead(hb))
        dead_a, dead_b = _dead(ha), _dead(hb)
        assert {d["instance"] for d in dead_a} == set(walls.objects["a"])
        assert {d["instance"] for d in dead_b} <= set(walls.objects["b"])
        assert plain.get("/routing/dead-letters").status_code == 403
        assert plain.post("/routing/dead-letters/replay", json={}).status_code == 403
        r = ha.post("/routing/dead-letters/replay", json={"ids": [d["id"] for d in dead_b]})
        assert r.status_code == 200 and r.json() == {"replayed": 0}
        assert len(_dead(hb)) == len(dead_b)
        # B sends its study to the destination bound to both: B's objects, and B's progress only.
        calls = walls.poison.calls
        r = hb.post(f"/routing/destinations/DAB/studies/{walls.studies['b']}")
        assert r.status_code == 202, r.text
        send = r.json()
        assert send["total"] == len(walls.objects["b"])
        assert ha.get(f"/routing/sends/{send['id']}").status_code == 404
        wait_for("B's send", lambda: hb.get(f"/routing/sends/{send['id']}").json()["sent"] == send["total"])
        ids = _patient_ids(walls.peers["DAB"])
        assert {ids[uid] for uid in walls.objects["b"] if uid != walls.shared} == {"B-1"}
        assert set(_patient_ids(walls.peers["DA"]).values()) == {"A-1", "A-SHARED"}
        assert walls.poison.calls == calls
