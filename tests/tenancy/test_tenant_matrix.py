"""The tenant isolation matrix (issue 6): a principal of tenant A cannot see,
retrieve, delete, or infer the existence of tenant B's data, on any route of
either edge.

One archive with authentication on (HS256 tokens, an API key, calling AE
titles mapped to tenants) holds the same kinds of objects in tenants A and B
(a single-frame CT and a two-frame RLE secondary capture), and an object with
the same Study/Series/SOP Instance UIDs in both (tenants are independent
namespaces). Every cell acts as A against B's UIDs and, as the control of the
existence oracle, against UIDs that exist nowhere ("ghost"): the two answers
(status, headers, body with the asked UIDs normalized; DIMSE statuses,
identifiers, sub-operation counts, commitment reports) must be identical and
carry nothing of B's. Each cell also asks for A's own object on the same
route (the positive control: the cell can fail), and B's data is checked
intact, byte for byte, after every deleting or writing cell and at the end.

B's objects carry the marker SECRETB in Patient's Name and PIDB- in Patient
ID; no answer to A may contain either, nor a UID only B holds."""

from __future__ import annotations

import hashlib
import io
import json
import queue
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, RLELossless, generate_uid
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from testbed.processes import free_port
from tests.support import Archive, multipart_body, response_parts, split_part10

SECRET = "tenant-matrix-hs256-secret-0123456789abcdef"
TENANT_A, TENANT_B, TENANT_NOWHERE = "tenant-a", "tenant-b", "tenant-zz"
AE_A, AE_B, DEST = "MATRIX_A", "MATRIX_B", "MATRIXDEST"
API_KEY_A = "dsk_matrixkeya001_" + "k" * 43
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
DICOM = "application/dicom"
BOUNDARY = "matrixb0undary"  # fixed: answers to B and to nowhere are compared byte for byte
WADO_ACCEPT = f'multipart/related; type="{DICOM}"; transfer-syntax=*'
OCTET_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SOURCES = {"ct": "CT_small.dcm", "mf": "SC_rgb_rle_2frame.dcm"}
CLASSES = {"ct": CTImageStorage, "mf": SecondaryCaptureImageStorage}
SCU_STORAGE = [(CTImageStorage, [ExplicitVRLittleEndian]), (SecondaryCaptureImageStorage, [RLELossless])]
# Headers whose values differ between any two requests.
VOLATILE = {"date", "x-request-id", "content-length", "server"}


def token(tenants: list[str]) -> str:
    claims = {
        "sub": "matrix-" + "-".join(tenants),
        "tenants": tenants,
        "scope": "dicom.read dicom.write dicom.delete",
        "exp": int(time.time()) + 3600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


# ---- objects ----------------------------------------------------------------


@dataclass(frozen=True)
class Obj:
    kind: str
    study: str
    series: str
    sop: str
    patient_id: str
    data: bytes  # the Part 10 object as sent

    @property
    def sop_class(self) -> str:
        return CLASSES[self.kind]

    @property
    def dataset(self) -> bytes:
        return split_part10(self.data)[1]

    @property
    def pixels(self) -> bytes:
        return bytes(pydicom.dcmread(io.BytesIO(self.data)).PixelData)

    @property
    def frames(self) -> list[bytes]:
        """The frames as stored: native bytes, or each frame's encapsulated bytes."""
        ds = pydicom.dcmread(io.BytesIO(self.data))
        count = int(ds.get("NumberOfFrames") or 1)
        if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            size = len(ds.PixelData) // count
            return [ds.PixelData[i * size : (i + 1) * size] for i in range(count)]
        return list(generate_frames(ds.PixelData, number_of_frames=count))

    def subst(self, label: str = "") -> dict[str, str]:
        """The asked values and the placeholders they are normalized to."""
        return {
            self.study: f"<STUDY{label}>",
            self.series: f"<SERIES{label}>",
            self.sop: f"<SOP{label}>",
            self.patient_id: f"<PID{label}>",
        }


def make(
    kind: str, owner: str, uids: tuple[str, str, str] | None = None, patient_id: str = "", bright: str = ""
) -> Obj:
    """A copy of a pydicom test file with new UIDs (or the given ones), owned
    by "A" (OWNA) or "B" (SECRETB, PIDB-). `bright` ("left" or "right")
    replaces the image by one half white, one half black: a signature a
    rendered image still shows, so a control can tell whose image it is."""
    ds = pydicom.dcmread(get_testdata_file(SOURCES[kind], download=False))
    study, series, sop = uids or (generate_uid(), generate_uid(), generate_uid())
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    tag = sop[-8:]
    ds.PatientID = patient_id or (f"PIDB-{tag}" if owner == "B" else f"PIDA-{tag}")
    ds.PatientName = f"SECRETB^{tag}" if owner == "B" else f"OWNA^{tag}"
    if bright:
        arr = ds.pixel_array.copy()
        half = arr.shape[-2] // 2 if arr.ndim == 4 else arr.shape[-1] // 2  # columns (RGB: axis -2)
        lit, dark = (
            (slice(None, half), slice(half, None)) if bright == "left" else (slice(half, None), slice(None, half))
        )
        cols = (Ellipsis, lit, slice(None)) if arr.ndim == 4 else (Ellipsis, lit)
        dark_cols = (Ellipsis, dark, slice(None)) if arr.ndim == 4 else (Ellipsis, dark)
        arr[cols], arr[dark_cols] = arr.max(), arr.min()
        if arr.ndim == 4:
            for i in range(arr.shape[0]):  # frames told apart by their dark value
                arr[i][:, dark] = arr.min() + i
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            ds.compress(ds.file_meta.TransferSyntaxUID, arr, generate_instance_uid=False)
        else:
            ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return Obj(kind, study, series, sop, str(ds.PatientID), buf.getvalue())


# ---- the C-MOVE destination ---------------------------------------------------


class Destination:
    """A storage SCP recording every connection and every object it receives."""

    def __init__(self, port: int) -> None:
        self.connections = 0
        self.received: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=DEST)
        # Explicit VR Little Endian first: the acceptor's order chooses, and
        # the archive proposes each object's stored syntax (here explicit or RLE).
        syntaxes = [ExplicitVRLittleEndian, *(s for s in AllTransferSyntaxes if s != ExplicitVRLittleEndian)]
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        self.server = ae.start_server(
            ("127.0.0.1", port),
            block=False,
            evt_handlers=[(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_C_STORE, self._on_store)],
        )

    def _on_open(self, event: evt.Event) -> None:
        with self._lock:
            self.connections += 1

    def _on_store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append((str(event.request.AffectedSOPInstanceUID), event.encoded_dataset(include_meta=False)))
        return 0x0000

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.connections, len(self.received)

    def since(self, mark: tuple[int, int]) -> list[tuple[str, bytes]]:
        with self._lock:
            return self.received[mark[1] :]


# ---- the world: archive, principals, objects, what A did --------------------------


@dataclass
class Principal:
    headers: dict[str, str]
    prefix: str = ""  # "/tenants/<t>" when the path chooses the tenant


@dataclass
class World:
    archive: Archive
    dest: Destination
    http: httpx.Client
    a: dict[str, Obj]
    b: dict[str, Obj]
    ghost: dict[str, Obj]
    principals: dict[str, Principal]
    b_principal: Principal
    # Everything A's tenant holds, and every change A made (the change feed A must see).
    a_live: dict[str, Obj] = field(default_factory=dict)
    b_live: dict[str, Obj] = field(default_factory=dict)
    a_ledger: list[tuple[str, str]] = field(default_factory=list)
    # Every value A ever held (its change feed names its deleted objects too).
    a_ever: set[str] = field(default_factory=set)

    def request(
        self, who: Principal, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.http.request(method, who.prefix + path, headers={**who.headers, **(headers or {})}, **kwargs)

    def only_b(self) -> set[str]:
        """Values only tenant B holds: none may reach A."""
        b_values = {v for o in self.b_live.values() for v in (o.study, o.series, o.sop, o.patient_id)}
        return b_values - self.a_ever

    def held_by_a(self, obj: Obj) -> None:
        self.a_live[obj.sop] = obj
        self.a_ever.update((obj.study, obj.series, obj.sop, obj.patient_id))
        self.a_ledger.append((obj.sop, "Create"))

    # -- writes, recorded

    def stow(self, who: Principal, obj: Obj, to_study: bool = False) -> httpx.Response:
        body, ctype = multipart_body([obj.data], BOUNDARY, DICOM)
        path = f"/studies/{obj.study}" if to_study else "/studies"
        return self.request(who, "POST", path, headers={"Content-Type": ctype}, content=body)

    def store_a(self, obj: Obj, who: Principal | None = None, to_study: bool = False) -> httpx.Response:
        r = self.stow(who or self.principals["jwt"], obj, to_study)
        assert r.status_code == 200, r.text
        self.held_by_a(obj)
        return r

    def store_b(self, obj: Obj) -> None:
        r = self.stow(self.b_principal, obj)
        assert r.status_code == 200, r.text
        self.b_live[obj.sop] = obj

    def deleted_a(self, obj: Obj) -> None:
        del self.a_live[obj.sop]
        self.a_ledger.append((obj.sop, "Delete"))

    # -- reads

    def fetch(self, who: Principal, obj: Obj) -> httpx.Response:
        """WADO-URI of one object as stored."""
        return self.request(
            who,
            "GET",
            "/wado",
            params={
                "requestType": "WADO",
                "studyUID": obj.study,
                "seriesUID": obj.series,
                "objectUID": obj.sop,
                "contentType": DICOM,
            },
        )

    def assert_b_intact(self, *objs: Obj) -> None:
        """B still retrieves each object byte-equal (and its objects are all there)."""
        for obj in objs or tuple(self.b_live.values()):
            r = self.fetch(self.b_principal, obj)
            assert r.status_code == 200, f"tenant B lost {obj.kind} {obj.sop}: {r.status_code} {r.text[:200]}"
            assert split_part10(r.content)[1] == obj.dataset, f"tenant B's {obj.kind} {obj.sop} changed"

    def b_files(self) -> set[Path]:
        root = self.archive.data_dir / "objects" / TENANT_B
        return {p for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    dest_port = free_port()
    dest = Destination(dest_port)
    key_hash = hashlib.sha256(API_KEY_A.encode()).hexdigest()
    archive = Archive(
        tmp_path_factory.mktemp("tenancy"),
        extra_env={
            "DICOMSERVER_AUTH_ENABLED": "true",
            "DICOMSERVER_JWT_HS256_SECRET": SECRET,
            "DICOMSERVER_API_KEYS": json.dumps(
                [
                    {
                        "sha256": key_hash,
                        "subject": "matrix-key",
                        "tenants": [TENANT_A],
                        "scopes": ["read", "write", "delete"],
                    }
                ]
            ),
            "DICOMSERVER_AE_ALLOWLIST": json.dumps([AE_A, AE_B]),
            "DICOMSERVER_AE_TENANTS": json.dumps({AE_A: TENANT_A, AE_B: TENANT_B}),
            "DICOMSERVER_DIMSE_PEERS": json.dumps({DEST: {"host": "127.0.0.1", "port": dest_port}}),
        },
    )
    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # C-STORE sends files as encoded
    http = httpx.Client(base_url=archive.dicomweb, timeout=60)
    both = token([TENANT_A, TENANT_B])
    principals = {
        "jwt": Principal({"Authorization": f"Bearer {token([TENANT_A])}"}),
        "apikey": Principal({"X-API-Key": API_KEY_A}),
        "two-tenants-header": Principal({"Authorization": f"Bearer {both}", "X-Tenant": TENANT_A}),
        "two-tenants-path": Principal({"Authorization": f"Bearer {both}"}, f"/tenants/{TENANT_A}"),
    }
    shared_uids = (generate_uid(), generate_uid(), generate_uid())
    shared_pid = f"PIDS-{shared_uids[2][-8:]}"
    w = World(
        archive=archive,
        dest=dest,
        http=http,
        a={
            "ct": make("ct", "A", bright="left"),
            "mf": make("mf", "A", bright="left"),
            "shared": make("ct", "A", shared_uids, shared_pid, bright="left"),
        },
        b={
            "ct": make("ct", "B", bright="right"),
            "mf": make("mf", "B", bright="right"),
            "shared": make("ct", "B", shared_uids, shared_pid, bright="right"),
        },
        ghost={"ct": make("ct", "B"), "mf": make("mf", "B")},
        principals=principals,
        b_principal=Principal({"Authorization": f"Bearer {token([TENANT_B])}"}),
    )
    started = False
    try:
        archive.start()
        started = True
        # CTs and the shared object over STOW-RS, the multi-frame objects over
        # C-STORE from each tenant's AE: both edges must put data in the right tenant.
        w.store_a(w.a["ct"])
        w.store_a(w.a["shared"])
        w.store_b(w.b["ct"])
        w.store_b(w.b["shared"])
        for ae_title, obj in ((AE_A, w.a["mf"]), (AE_B, w.b["mf"])):
            with Scu(archive, ae_title) as scu:
                assert scu.store(obj) == 0x0000
        w.held_by_a(w.a["mf"])
        w.b_live[w.b["mf"].sop] = w.b["mf"]
        yield w
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before
        http.close()
        dest.server.shutdown()
        if started:
            code = archive.stop()
            assert code == 0, "launcher did not stop cleanly:\n" + "".join(archive.output)


# ---- answers, normalized -------------------------------------------------------


def _replace(text: str, subst: dict[str, str]) -> str:
    for value, label in sorted(subst.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(value, label)
    return text


def http_answer(r: httpx.Response, subst: dict[str, str]) -> tuple[Any, ...]:
    """Status, headers and body with the asked values replaced by placeholders."""
    ctype = r.headers.get("content-type", "")
    body = r.content
    if m := re.search(r'boundary="?([^";]+)"?', ctype):
        body = body.replace(m.group(1).encode(), b"<BOUNDARY>")
        ctype = ctype.replace(m.group(1), "<BOUNDARY>")
    for value, label in sorted(subst.items(), key=lambda kv: -len(kv[0])):
        body = body.replace(value.encode(), label.encode())
    headers = {k: _replace(v, subst) for k, v in r.headers.items() if k not in VOLATILE and k != "content-type"}
    return r.status_code, ctype, headers, body


def ds_answer(ds: Dataset | None, subst: dict[str, str]) -> str | None:
    if ds is None:
        return None
    return _replace(json.dumps(ds.to_json_dict(), sort_keys=True), subst)


def assert_nothing_of_b(world: World, text: bytes | str, where: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    assert b"SECRETB" not in data and b"PIDB-" not in data, f"{where}: an answer to A carries B's patient data"
    leaked = [v for v in world.only_b() if v.encode() in data]
    assert not leaked, f"{where}: an answer to A names B's {leaked}"


def assert_no_oracle(world: World, on_b: tuple[Any, ...], on_ghost: tuple[Any, ...], where: str) -> None:
    assert on_b == on_ghost, (
        f"{where}: B's data answers differently from data that exists nowhere:\n"
        f"  B's:   {str(on_b)[:600]}\n  ghost: {str(on_ghost)[:600]}"
    )


# ---- HTTP routes -----------------------------------------------------------------


def multipart_parts(r: httpx.Response) -> list[bytes]:
    return [body for _, body in response_parts(r)]


def uids_in(r: httpx.Response, tag: str) -> list[str]:
    return [item[tag]["Value"][0] for item in r.json() if tag in item]


def own_qido(tag: str, attr: str) -> Callable[[httpx.Response, Obj], None]:
    def check(r: httpx.Response, own: Obj) -> None:
        assert r.status_code == 200, r.text
        assert getattr(own, attr) in uids_in(r, tag)

    return check


def own_wado(r: httpx.Response, own: Obj) -> None:
    assert r.status_code == 200, r.text
    assert [split_part10(p)[1] for p in multipart_parts(r)] == [own.dataset]


def own_metadata(r: httpx.Response, own: Obj) -> None:
    assert r.status_code == 200, r.text
    assert uids_in(r, "00080018") == [own.sop]


def own_frame(r: httpx.Response, own: Obj) -> None:
    assert r.status_code == 200, r.text
    assert multipart_parts(r) == own.frames[:1]


def own_pixel_data(r: httpx.Response, own: Obj) -> None:
    """Native pixel data whole; encapsulated pixel data frame by frame."""
    assert r.status_code == 200, r.text
    parts = multipart_parts(r)
    assert parts == own.frames if own.kind == "mf" else parts == [own.pixels]


def own_image(r: httpx.Response, own: Obj) -> None:
    """A rendered image: JPEG, or an animated GIF of every frame for a
    multi-frame instance; A's, by its bright left half (B's is bright right)."""
    assert r.status_code == 200, r.text
    ctype = r.headers["content-type"]
    images = multipart_parts(r) if ctype.startswith("multipart/related") else [r.content]
    assert images and ("image/jpeg" in ctype or "image/gif" in ctype), ctype
    for data in images:
        image = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=float)
        half = image.shape[1] // 2
        left, right = image[:, : half - 1].mean(), image[:, half + 1 :].mean()
        assert left > 200 and right < 55, f"not A's image: left half {left:.0f}, right half {right:.0f}"


def own_wado_uri(r: httpx.Response, own: Obj) -> None:
    assert r.status_code == 200, r.text
    assert split_part10(r.content)[1] == own.dataset


@dataclass(frozen=True)
class Route:
    path: str
    check_own: Callable[[httpx.Response, Obj], None]
    accept: str | None = None


_I = "/studies/{study}/series/{series}/instances/{sop}"
_WADO_URI = "/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
ROUTES = {
    "qido-studies-by-study": Route("/studies?StudyInstanceUID={study}", own_qido("0020000D", "study")),
    "qido-studies-by-patient": Route("/studies?PatientID={pid}", own_qido("0020000D", "study")),
    "qido-studies-by-study-list": Route("/studies?StudyInstanceUID={study},{own_study}", own_qido("0020000D", "study")),
    "qido-series-by-study": Route("/series?StudyInstanceUID={study}", own_qido("0020000E", "series")),
    "qido-series-by-series": Route("/series?SeriesInstanceUID={series}", own_qido("0020000E", "series")),
    "qido-series-by-patient": Route("/series?PatientID={pid}", own_qido("0020000E", "series")),
    "qido-instances-by-study": Route("/instances?StudyInstanceUID={study}", own_qido("00080018", "sop")),
    "qido-instances-by-sop": Route("/instances?SOPInstanceUID={sop}&includefield=all", own_qido("00080018", "sop")),
    "qido-instances-by-patient": Route("/instances?PatientID={pid}&includefield=all", own_qido("00080018", "sop")),
    "qido-study-series": Route("/studies/{study}/series", own_qido("0020000E", "series")),
    "qido-study-instances": Route("/studies/{study}/instances?includefield=all", own_qido("00080018", "sop")),
    "qido-series-instances": Route("/studies/{study}/series/{series}/instances", own_qido("00080018", "sop")),
    "wado-study": Route("/studies/{study}", own_wado, WADO_ACCEPT),
    "wado-series": Route("/studies/{study}/series/{series}", own_wado, WADO_ACCEPT),
    "wado-instance": Route(_I, own_wado, WADO_ACCEPT),
    "wado-instance-under-own-study": Route(
        "/studies/{own_study}/series/{series}/instances/{sop}", own_wado, WADO_ACCEPT
    ),
    "metadata-study": Route("/studies/{study}/metadata", own_metadata),
    "metadata-series": Route("/studies/{study}/series/{series}/metadata", own_metadata),
    "metadata-instance": Route(_I + "/metadata", own_metadata),
    "frames-1": Route(_I + "/frames/1", own_frame, OCTET_ACCEPT),
    "bulkdata-pixeldata": Route(_I + "/bulkdata/7FE00010", own_pixel_data, OCTET_ACCEPT),
    "rendered-instance": Route(_I + "/rendered", own_image),
    "rendered-frame-1": Route(_I + "/frames/1/rendered", own_image),
    "thumbnail-instance": Route(_I + "/thumbnail", own_image),
    "rendered-series": Route("/studies/{study}/series/{series}/rendered", own_image),
    "thumbnail-series": Route("/studies/{study}/series/{series}/thumbnail", own_image),
    "rendered-study": Route("/studies/{study}/rendered", own_image),
    "thumbnail-study": Route("/studies/{study}/thumbnail", own_image),
    "wado-uri-dicom": Route(_WADO_URI + f"&contentType={DICOM}", own_wado_uri),
    "wado-uri-jpeg": Route(_WADO_URI + "&contentType=image/jpeg", own_image),
}
PRINCIPALS = ["jwt", "apikey", "two-tenants-header", "two-tenants-path"]
KINDS = ["ct", "mf"]


def path_of(route: Route, target: Obj, own: Obj) -> str:
    return route.path.format(
        study=target.study, series=target.series, sop=target.sop, pid=target.patient_id, own_study=own.study
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_http_read(world: World, principal: str, route: str, kind: str) -> None:
    """A asks for B's object exactly as for one that exists nowhere; its own answers."""
    who, spec = world.principals[principal], ROUTES[route]
    headers = {"Accept": spec.accept} if spec.accept else {}
    own, theirs, ghost = world.a[kind], world.b[kind], world.ghost[kind]
    r_b = world.request(who, "GET", path_of(spec, theirs, own), headers)
    r_ghost = world.request(who, "GET", path_of(spec, ghost, own), headers)
    subst_b, subst_ghost = theirs.subst(), ghost.subst()
    assert_nothing_of_b(world, http_answer(r_b, subst_b)[3], f"{route} on B's")
    assert_no_oracle(world, http_answer(r_b, subst_b), http_answer(r_ghost, subst_ghost), route)
    if "StudyInstanceUID={study},{own_study}" in spec.path:
        assert uids_in(r_b, "0020000D") == [own.study]
    else:
        assert r_b.status_code in (200, 204, 404), r_b.text
        assert r_b.status_code != 200 or r_b.json() == [], r_b.text[:300]
    r_own = world.request(who, "GET", path_of(spec, own, own), headers)
    spec.check_own(r_own, own)
    assert_nothing_of_b(world, r_own.content, f"{route} on A's own")


SHARED_ROUTES = [
    "qido-studies-by-study",
    "qido-instances-by-sop",
    "qido-instances-by-patient",
    "qido-study-instances",
    "wado-study",
    "wado-instance",
    "metadata-study",
    "metadata-instance",
    "frames-1",
    "bulkdata-pixeldata",
    "rendered-instance",
    "thumbnail-study",
    "wado-uri-dicom",
]


@pytest.mark.parametrize("route", SHARED_ROUTES)
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_http_same_uids_in_both_tenants(world: World, principal: str, route: str) -> None:
    """The same UIDs in A and B: A gets exactly its own copy (B's copy has
    other pixels, patient name and ID), B exactly its own."""
    who, spec = world.principals[principal], ROUTES[route]
    headers = {"Accept": spec.accept} if spec.accept else {}
    mine, theirs = world.a["shared"], world.b["shared"]
    r = world.request(who, "GET", path_of(spec, mine, mine), headers)
    assert r.status_code == 200, r.text
    assert_nothing_of_b(world, r.content, route)
    if route.startswith(("qido", "metadata")):
        assert len(r.json()) == 1, "A sees one copy of the shared object"
        assert b"OWNA^" in r.content
    elif route in ("wado-study", "wado-instance"):
        own_wado(r, mine)
    elif route == "wado-uri-dicom":
        own_wado_uri(r, mine)
    elif route in ("frames-1", "bulkdata-pixeldata"):
        assert multipart_parts(r) == [mine.pixels] != [theirs.pixels]
    else:
        # The same picture as A's other CT (the same pixels), not B's (the mirror image).
        same = world.request(who, "GET", path_of(spec, world.a["ct"], world.a["ct"]), headers)
        r_b = world.request(world.b_principal, "GET", path_of(spec, theirs, theirs), headers)
        assert r.content == same.content != r_b.content
    # And B, asking the same, gets its own copy.
    r_b = world.request(world.b_principal, "GET", path_of(spec, theirs, theirs), headers)
    assert r_b.status_code == 200
    if route.startswith(("qido", "metadata")):
        assert b"SECRETB^" in r_b.content and b"OWNA^" not in r_b.content
    elif route == "wado-uri-dicom":
        own_wado_uri(r_b, theirs)


UNFILTERED = {
    "studies": ("/studies?limit=1000", "0020000D", "study"),
    "series": ("/series?limit=1000", "0020000E", "series"),
    "instances": ("/instances?limit=1000&includefield=all", "00080018", "sop"),
    "studies-any-patient": ("/studies?PatientID=*&limit=1000", "0020000D", "study"),
    "studies-any-name": ("/studies?PatientName=*&includefield=all&limit=1000", "0020000D", "study"),
    "instances-fuzzy-name": ("/instances?PatientName=s&fuzzymatching=true&limit=1000", "00080018", "sop"),
}


@pytest.mark.parametrize("query", list(UNFILTERED))
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_http_unfiltered_queries_list_only_own(world: World, principal: str, query: str) -> None:
    path, tag, attr = UNFILTERED[query]
    r = world.request(world.principals[principal], "GET", path)
    assert r.status_code in (200, 204), r.text
    found = uids_in(r, tag) if r.status_code == 200 else []
    assert_nothing_of_b(world, r.content, query)
    if query == "instances-fuzzy-name":
        # "s" matches B's SECRETB^ names, never A's OWNA^: nothing at all.
        assert found == []
        return
    assert sorted(found) == sorted({getattr(o, attr) for o in world.a_live.values()})


# ---- choosing a tenant: no oracle of tenant names either ---------------------------


TENANT_PROBES = {
    # name: (principal, method, path template, how the tenant is named)
    "header-studies": ("jwt", "GET", "/studies", "header"),
    "header-study": ("jwt", "GET", "/studies/{study}", "header"),
    "header-apikey-metadata": ("apikey", "GET", "/studies/{study}/metadata", "header"),
    "header-uppercase": ("jwt", "GET", "/studies/{study}", "header-upper"),
    "path-studies": ("jwt", "GET", "/studies", "path"),
    "path-instance": ("jwt", "GET", _I, "path"),
    "path-apikey-frames": ("apikey", "GET", _I + "/frames/1", "path"),
    "path-inside-own-tenant-path": ("jwt", "GET", "/studies/{study}", "double-path"),
    "path-encoded-traversal": ("jwt", "GET", "/studies/{study}", "traversal"),
    "path-delete-study": ("jwt", "DELETE", "/studies/{study}", "path"),
    "header-delete-instance": ("apikey", "DELETE", _I, "header"),
    "header-stow": ("jwt", "POST", "/studies", "header"),
}


def _named(tenant: str, path: str, how: str) -> tuple[str, dict[str, str]]:
    """The path and headers that name `tenant` the way `how` says."""
    if how == "header":
        return path, {"X-Tenant": tenant}
    if how == "header-upper":
        return path, {"X-Tenant": tenant.upper()}
    if how == "path":
        return f"/tenants/{tenant}{path}", {}
    if how == "double-path":
        return f"/tenants/{TENANT_A}/tenants/{tenant}{path}", {}
    assert how == "traversal"
    return f"/tenants/{TENANT_A}%2F..%2F{tenant}{path}", {}


@pytest.mark.parametrize("probe", list(TENANT_PROBES))
def test_naming_tenant_b_is_refused_like_a_tenant_that_does_not_exist(world: World, probe: str) -> None:
    principal, method, template, how = TENANT_PROBES[probe]
    who = world.principals[principal]
    files = world.b_files()

    def ask(tenant: str, target: Obj) -> httpx.Response:
        path, headers = _named(tenant, template.format(study=target.study, series=target.series, sop=target.sop), how)
        if method == "POST":
            body, headers["Content-Type"] = multipart_body([target.data], BOUNDARY, DICOM)
            return world.request(who, method, path, headers, content=body)
        return world.request(who, method, path, headers)

    r_b, r_ghost = ask(TENANT_B, world.b["ct"]), ask(TENANT_NOWHERE, world.ghost["ct"])
    assert r_b.status_code in (400, 403, 404), r_b.text
    normalized = {TENANT_B: "<T>", TENANT_B.upper(): "<T>", TENANT_NOWHERE: "<T>", TENANT_NOWHERE.upper(): "<T>"}
    assert_no_oracle(
        world,
        http_answer(r_b, world.b["ct"].subst() | normalized),
        http_answer(r_ghost, world.ghost["ct"].subst() | normalized),
        probe,
    )
    assert_nothing_of_b(world, r_b.content, probe)
    assert world.b_files() == files
    world.assert_b_intact(world.b["ct"])
    # Control: naming A's own tenant the same way is served.
    if method == "GET" and how in ("header", "path"):
        r_own = ask(TENANT_A, world.a["ct"])
        assert r_own.status_code == 200, r_own.text


# ---- DIMSE -----------------------------------------------------------------------------


class Scu:
    """An association from a calling AE title: find, move, get, commit, store."""

    def __init__(self, archive: Archive, calling: str) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()
        ae = AE(ae_title=calling)
        for model in (
            PatientRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelMove,
            PatientRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelGet,
            StorageCommitmentPushModel,
        ):
            ae.add_requested_context(model)
        for sop_class, syntaxes in SCU_STORAGE:
            ae.add_requested_context(sop_class, syntaxes)
        self.assoc = ae.associate(
            "127.0.0.1",
            archive.dimse_port,
            ae_title=archive.ae_title,
            ext_neg=[build_role(c, scu_role=True, scp_role=True) for c, _ in SCU_STORAGE],
            evt_handlers=[(evt.EVT_C_STORE, self._on_store), (evt.EVT_N_EVENT_REPORT, self._on_report)],
        )
        assert self.assoc.is_established, f"association from {calling} refused"

    def __enter__(self) -> Scu:
        return self

    def __exit__(self, *exc: object) -> None:
        self.assoc.release()

    def _on_store(self, event: evt.Event) -> int:
        self.received.append((str(event.request.AffectedSOPInstanceUID), event.encoded_dataset(include_meta=False)))
        return 0x0000

    def _on_report(self, event: evt.Event) -> tuple[int, None]:
        self.reports.put((event.event_type, event.event_information))
        return 0x0000, None

    def store(self, obj: Obj) -> int:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "object.dcm"
            path.write_bytes(obj.data)
            return int(self.assoc.send_c_store(path).Status)

    def find(self, model: str, query: Dataset) -> list[tuple[int, Dataset | None]]:
        return [(int(s.Status), ident) for s, ident in self.assoc.send_c_find(query, model)]

    def move(self, model: str, query: Dataset) -> list[tuple[Dataset, Dataset | None]]:
        return list(self.assoc.send_c_move(query, DEST, model))

    def get(self, model: str, query: Dataset) -> list[tuple[Dataset, Dataset | None]]:
        return list(self.assoc.send_c_get(query, model))

    def commit(self, *refs: tuple[str, str]) -> tuple[int, int, Dataset, str]:
        info = Dataset()
        info.TransactionUID = generate_uid()
        info.ReferencedSOPSequence = []
        for sop_class, uid in refs:
            item = Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, uid
            info.ReferencedSOPSequence.append(item)
        status, _ = self.assoc.send_n_action(info, 1, StorageCommitmentPushModel, WELL_KNOWN)
        event_type, report = self.reports.get(timeout=30)
        return int(status.Status), event_type, report, str(info.TransactionUID)


def identifier(level: str, obj: Obj, *keys: str, returns: tuple[str, ...] = ("PatientName",)) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    values = {
        "PatientID": obj.patient_id,
        "StudyInstanceUID": obj.study,
        "SeriesInstanceUID": obj.series,
        "SOPInstanceUID": obj.sop,
    }
    for key in keys:
        setattr(ds, key, values[key])
    for key in returns:
        if key not in ds:
            setattr(ds, key, "")
    return ds


P_FIND, S_FIND = PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind
P_MOVE, S_MOVE = PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove
P_GET, S_GET = PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet
FINDS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "find-patient-root-PATIENT": (P_FIND, "PATIENT", ("PatientID",)),
    "find-patient-root-STUDY": (P_FIND, "STUDY", ("PatientID", "StudyInstanceUID")),
    "find-patient-root-SERIES": (P_FIND, "SERIES", ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")),
    "find-patient-root-IMAGE": (
        P_FIND,
        "IMAGE",
        ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
    ),
    "find-study-root-STUDY-by-uid": (S_FIND, "STUDY", ("StudyInstanceUID",)),
    "find-study-root-STUDY-by-patient": (S_FIND, "STUDY", ("PatientID",)),
    "find-study-root-SERIES": (S_FIND, "SERIES", ("StudyInstanceUID", "SeriesInstanceUID")),
    "find-study-root-SERIES-by-patient": (S_FIND, "SERIES", ("PatientID",)),
    "find-study-root-IMAGE": (S_FIND, "IMAGE", ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")),
    "find-study-root-IMAGE-by-uid-only": (S_FIND, "IMAGE", ("SOPInstanceUID",)),
}
RETRIEVES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "patient-root-PATIENT": ("patient", "PATIENT", ("PatientID",)),
    "patient-root-STUDY": ("patient", "STUDY", ("PatientID", "StudyInstanceUID")),
    "study-root-STUDY": ("study", "STUDY", ("StudyInstanceUID",)),
    "study-root-SERIES": ("study", "SERIES", ("StudyInstanceUID", "SeriesInstanceUID")),
    "study-root-IMAGE": ("study", "IMAGE", ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")),
}
_COUNTS = (
    "NumberOfRemainingSuboperations",
    "NumberOfCompletedSuboperations",
    "NumberOfFailedSuboperations",
    "NumberOfWarningSuboperations",
)


def retrieve_answer(responses: list[tuple[Dataset, Dataset | None]], subst: dict[str, str]) -> list[Any]:
    return [(int(s.Status), tuple(s.get(k) for k in _COUNTS), ds_answer(ident, subst)) for s, ident in responses]


def find_answer(responses: list[tuple[int, Dataset | None]], subst: dict[str, str]) -> list[Any]:
    return [(status, ds_answer(ident, subst)) for status, ident in responses]


DIMSE_CELLS = [*FINDS, *(f"move-{r}" for r in RETRIEVES), *(f"get-{r}" for r in RETRIEVES), "storage-commitment"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell", DIMSE_CELLS)
def test_dimse(world: World, cell: str, kind: str) -> None:
    """As A's calling AE: B's object answers exactly as one that exists nowhere,
    nothing of B's is sent anywhere; A's own object is found and retrieved."""
    own, theirs, ghost = world.a[kind], world.b[kind], world.ghost[kind]
    with Scu(world.archive, AE_A) as scu:
        if cell in FINDS:
            model, level, keys = FINDS[cell]

            def run(obj: Obj, label: str) -> list[Any]:
                answer = find_answer(scu.find(model, identifier(level, obj, *keys)), obj.subst(label))
                assert_nothing_of_b(world, json.dumps(answer), cell)
                return answer

            on_b, on_ghost = run(theirs, ""), run(ghost, "")
            assert on_b == [(0x0000, None)], on_b
            assert_no_oracle(world, tuple(on_b), tuple(on_ghost), cell)
            mine = scu.find(model, identifier(level, own, *keys))
            assert [s for s, _ in mine] == [0xFF00, 0x0000], mine
            ident = mine[0][1]
            assert ident is not None and str(ident.PatientName).startswith("OWNA^")
            for key in keys:
                assert str(getattr(ident, key)) == getattr(
                    own,
                    {
                        "PatientID": "patient_id",
                        "StudyInstanceUID": "study",
                        "SeriesInstanceUID": "series",
                        "SOPInstanceUID": "sop",
                    }[key],
                )
        elif cell.startswith(("move-", "get-")):
            op, name = cell.split("-", 1)
            root, level, keys = RETRIEVES[name]
            model = {
                ("move", "patient"): P_MOVE,
                ("move", "study"): S_MOVE,
                ("get", "patient"): P_GET,
                ("get", "study"): S_GET,
            }[(op, root)]
            send = scu.move if op == "move" else scu.get

            def retrieve(obj: Obj) -> tuple[list[Any], list[tuple[str, bytes]]]:
                mark, got_before = world.dest.snapshot(), len(scu.received)
                answer = retrieve_answer(send(model, identifier(level, obj, *keys, returns=())), obj.subst())
                delivered = world.dest.since(mark) if op == "move" else scu.received[got_before:]
                if op == "move" and not delivered:
                    assert world.dest.snapshot() == mark, "the destination was contacted"
                return answer, delivered

            on_b, sent_b = retrieve(theirs)
            on_ghost, sent_ghost = retrieve(ghost)
            assert sent_b == [] and sent_ghost == [], "B's objects were sent"
            assert_nothing_of_b(world, json.dumps(on_b), cell)
            assert on_b[-1][0] == 0x0000 and on_b[-1][1][1] == 0, on_b
            assert_no_oracle(world, tuple(on_b), tuple(on_ghost), cell)
            answer, sent = retrieve(own)
            assert answer[-1][0] == 0x0000, answer
            assert sent == [(own.sop, own.dataset)]
        else:

            def commit(obj: Obj) -> tuple[Any, ...]:
                status, event_type, report, tx = scu.commit((obj.sop_class, obj.sop))
                failed = [(i.ReferencedSOPInstanceUID, i.FailureReason) for i in report.get("FailedSOPSequence", [])]
                done = list(report.get("ReferencedSOPSequence", []))
                assert (event_type, failed, done) == (2, [(obj.sop, 0x0112)], []), report  # no such instance
                return status, event_type, ds_answer(report, obj.subst() | {tx: "<TX>"})

            on_b, on_ghost = commit(theirs), commit(ghost)
            assert on_b[0] == 0x0000, on_b
            assert_nothing_of_b(world, str(on_b), cell)
            assert_no_oracle(world, on_b, on_ghost, cell)
            status, event_type, report, _ = scu.commit((own.sop_class, own.sop))
            assert (status, event_type) == (0x0000, 1)
            assert [i.ReferencedSOPInstanceUID for i in report.ReferencedSOPSequence] == [own.sop]
    world.assert_b_intact(theirs)


SHARED_DIMSE = [
    "find-study-root-IMAGE",
    "find-patient-root-PATIENT",
    "find-study-root-STUDY-by-uid",
    "move-study-root-STUDY",
    "move-patient-root-PATIENT",
    "get-study-root-IMAGE",
    "get-patient-root-STUDY",
    "storage-commitment",
]


@pytest.mark.parametrize("cell", SHARED_DIMSE)
def test_dimse_same_uids_in_both_tenants(world: World, cell: str) -> None:
    """A finds and retrieves exactly its own copy of the shared UIDs."""
    mine, theirs = world.a["shared"], world.b["shared"]
    with Scu(world.archive, AE_A) as scu:
        if cell in FINDS:
            model, level, keys = FINDS[cell]
            found = scu.find(model, identifier(level, mine, *keys))
            assert [s for s, _ in found] == [0xFF00, 0x0000], found
            assert str(found[0][1].PatientName).startswith("OWNA^")
        elif cell.startswith(("move-", "get-")):
            op, name = cell.split("-", 1)
            root, level, keys = RETRIEVES[name]
            model = {
                ("move", "patient"): P_MOVE,
                ("move", "study"): S_MOVE,
                ("get", "patient"): P_GET,
                ("get", "study"): S_GET,
            }[(op, root)]
            mark = world.dest.snapshot()
            if op == "move":
                answer = scu.move(model, identifier(level, mine, *keys, returns=()))
                sent = world.dest.since(mark)
            else:
                answer = scu.get(model, identifier(level, mine, *keys, returns=()))
                sent = scu.received
            assert int(answer[-1][0].Status) == 0x0000
            assert sent == [(mine.sop, mine.dataset)] and mine.dataset != theirs.dataset
        else:
            status, event_type, report, _ = scu.commit((mine.sop_class, mine.sop))
            assert (status, event_type) == (0x0000, 1)
    with Scu(world.archive, AE_B) as scu:
        answer = scu.get(
            S_GET, identifier("IMAGE", theirs, "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", returns=())
        )
        assert int(answer[-1][0].Status) == 0x0000
        assert scu.received == [(theirs.sop, theirs.dataset)]


DIMSE_UNFILTERED = {
    "patient-root-PATIENT": (P_FIND, "PATIENT", "PatientID", "patient_id"),
    "study-root-STUDY": (S_FIND, "STUDY", "StudyInstanceUID", "study"),
    "study-root-SERIES": (S_FIND, "SERIES", "SeriesInstanceUID", "series"),
    "study-root-IMAGE": (S_FIND, "IMAGE", "SOPInstanceUID", "sop"),
}


@pytest.mark.parametrize("query", list(DIMSE_UNFILTERED))
def test_dimse_universal_find_lists_only_own(world: World, query: str) -> None:
    model, level, key, attr = DIMSE_UNFILTERED[query]
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.PatientName = ""
    setattr(ds, key, "")
    with Scu(world.archive, AE_A) as scu:
        found = scu.find(model, ds)
    assert found[-1][0] == 0x0000
    assert_nothing_of_b(world, json.dumps([ds_answer(i, {}) for _, i in found]), query)
    values = [str(getattr(i, key)) for s, i in found if s == 0xFF00 and i is not None]
    assert sorted(values) == sorted({getattr(o, attr) for o in world.a_live.values()})


# ---- writing with B's UIDs: no oracle, B untouched --------------------------------


@pytest.mark.parametrize("path", ["studies", "studies-of-the-study"])
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_stow_with_b_uids_is_answered_as_new_and_leaves_b_alone(world: World, principal: str, path: str) -> None:
    theirs = make("ct", "B")
    world.store_b(theirs)
    files = world.b_files()
    copy = make("ct", "A", (theirs.study, theirs.series, theirs.sop))
    ghost = make("ct", "A")
    r_b = world.store_a(copy, world.principals[principal], path == "studies-of-the-study")
    r_ghost = world.store_a(ghost, world.principals[principal], path == "studies-of-the-study")
    assert_no_oracle(world, http_answer(r_b, copy.subst()), http_answer(r_ghost, ghost.subst()), principal)
    assert "Warning" not in r_b.headers and b"replaced" not in r_b.content
    assert world.b_files() == files
    world.assert_b_intact(theirs)
    r = world.fetch(world.principals[principal], copy)
    assert split_part10(r.content)[1] == copy.dataset  # A reads its own copy


def test_c_store_with_b_uids_is_answered_as_new_and_leaves_b_alone(world: World) -> None:
    theirs = make("mf", "B")
    world.store_b(theirs)
    files = world.b_files()
    copy = make("mf", "A", (theirs.study, theirs.series, theirs.sop))
    ghost = make("mf", "A")
    with Scu(world.archive, AE_A) as scu:
        statuses = [scu.store(copy), scu.store(ghost)]
    for obj in (copy, ghost):
        world.held_by_a(obj)
    assert statuses == [0x0000, 0x0000]
    assert world.b_files() == files
    world.assert_b_intact(theirs)
    assert split_part10(world.fetch(world.principals["jwt"], copy).content)[1] == copy.dataset


# ---- DELETE --------------------------------------------------------------------------


LEVELS = {"instance": _I, "series": "/studies/{study}/series/{series}", "study": "/studies/{study}"}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("level", list(LEVELS))
@pytest.mark.parametrize("principal", PRINCIPALS)
def test_delete(world: World, principal: str, level: str, kind: str) -> None:
    """A deleting B's object is answered as deleting nothing and removes
    nothing; A deleting its copy of shared UIDs leaves B's copy."""
    who = world.principals[principal]
    theirs, ghost = world.b[kind], world.ghost[kind]
    template = LEVELS[level]
    files = world.b_files()

    def delete(obj: Obj) -> httpx.Response:
        return world.request(who, "DELETE", template.format(study=obj.study, series=obj.series, sop=obj.sop))

    r_b, r_ghost = delete(theirs), delete(ghost)
    assert r_b.status_code == 404, r_b.text
    assert_no_oracle(world, http_answer(r_b, theirs.subst()), http_answer(r_ghost, ghost.subst()), level)
    assert world.b_files() == files
    world.assert_b_intact()
    # Control: the same UIDs in both tenants; A deletes its copy.
    uids = (generate_uid(), generate_uid(), generate_uid())
    mine, twin = make(kind, "A", uids), make(kind, "B", uids)
    world.store_a(mine)
    world.store_b(twin)
    files = world.b_files()
    r = delete(mine)
    assert r.status_code == 204, r.text
    world.deleted_a(mine)
    assert world.fetch(who, mine).status_code == 404
    assert world.b_files() == files
    world.assert_b_intact(twin)


# ---- the change feed ---------------------------------------------------------------------


def feed(world: World, who: Principal, offset: int = 0) -> list[dict[str, Any]]:
    r = world.request(who, "GET", f"/changefeed?offset={offset}&limit=1000")
    assert r.status_code == 200, r.text
    return list(r.json())


def latest(world: World, who: Principal) -> int:
    r = world.request(who, "GET", "/changefeed/latest")
    assert r.status_code == 200, r.text
    return int(r.json()["Sequence"])


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_changefeed_shows_only_own_changes(world: World, principal: str) -> None:
    entries = feed(world, world.principals[principal])
    assert_nothing_of_b(world, json.dumps(entries), "changefeed")
    assert [(e["SopInstanceUid"], e["Action"]) for e in entries] == world.a_ledger
    assert entries and latest(world, world.principals[principal]) == entries[-1]["Sequence"]


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_changefeed_latest_does_not_move_when_b_writes(world: World, principal: str) -> None:
    who = world.principals[principal]
    before, b_before = latest(world, who), latest(world, world.b_principal)
    theirs = make("ct", "B")
    world.store_b(theirs)
    delete = world.request(world.b_principal, "DELETE", f"/studies/{theirs.study}")
    assert delete.status_code == 204
    del world.b_live[theirs.sop]
    assert latest(world, world.b_principal) > b_before  # B's feed moved
    assert latest(world, who) == before
    assert feed(world, who, before) == []
    # Control: A's own write moves A's feed.
    mine = make("ct", "A")
    world.store_a(mine)
    after = feed(world, who, before)
    assert [(e["SopInstanceUid"], e["Action"]) for e in after] == [(mine.sop, "Create")]
    assert latest(world, who) == after[0]["Sequence"]


def test_changefeed_sequence_numbers_do_not_count_other_tenants_changes(world: World) -> None:
    who = world.principals["jwt"]
    first = make("ct", "A")
    world.store_a(first)
    for _ in range(3):
        world.store_b(make("ct", "B"))
    second = make("ct", "A")
    world.store_a(second)
    entries = feed(world, who, latest(world, who) - 1)  # just `second`
    previous = feed(world, who)[-2]
    assert previous["SopInstanceUid"] == first.sop and entries[0]["SopInstanceUid"] == second.sop
    # Sequences are per tenant: A's two changes are consecutive whatever B did between them.
    assert entries[0]["Sequence"] - previous["Sequence"] == 1


def test_b_is_intact_at_the_end(world: World) -> None:
    world.assert_b_intact()
    r = world.request(world.b_principal, "GET", "/instances?limit=1000")
    assert sorted(uids_in(r, "00080018")) == sorted(world.b_live)
    assert b"OWNA^" not in world.request(world.b_principal, "GET", "/instances?includefield=all&limit=1000").content
