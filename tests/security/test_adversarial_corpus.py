"""The adversarial corpus: hostile requests against a real launched archive.

Every case names the exact status it must get and, for a refusal, a readable
message (JSON {"error": ...}, or the DICOM JSON failure list for STOW-RS),
never a stack trace; and nothing may be stored by it: the QIDO-RS instance
count and the storage folder's file list are the same before and after.
After the whole corpus the archive still stores, serves and answers C-ECHO.

One archive runs with small limits (request, part, parts, PDU, ACSE, network
and HTTP head timeouts) so that the limit and slow-peer cases are cheap;
another has authentication on (RS256 tokens from a JWKS endpoint served here,
an API key of a second tenant) for the credential cases. SQL-ish matching
values are valid queries: their right answer is 200 with no match, and that
is what they must get."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.pdu_primitives import MaximumLengthNotification
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.security.security_support import make_instance, multipart, raw_part10
from tests.support import Archive, split_part10

B = "/dicomweb"
MAX_REQUEST = 256 * 1024
MAX_PART = 64 * 1024
MAX_PARTS = 16
MAX_PDU = 16 * 1024
ACSE_TIMEOUT = 2
NETWORK_TIMEOUT = 4
HEAD_TIMEOUT = 4
# How long the tests wait for the server to drop a stalled peer: "for ever" here.
DROP_GUARD = 15

LIMITED_ENV = {
    "DICOMSERVER_MAX_REQUEST_BYTES": str(MAX_REQUEST),
    "DICOMSERVER_MAX_PART_BYTES": str(MAX_PART),
    "DICOMSERVER_MAX_PARTS": str(MAX_PARTS),
    "DICOMSERVER_MAX_PDU_SIZE": str(MAX_PDU),
    "DICOMSERVER_ACSE_TIMEOUT": str(ACSE_TIMEOUT),
    "DICOMSERVER_NETWORK_TIMEOUT": str(NETWORK_TIMEOUT),
    "DICOMSERVER_HTTP_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
    "DICOMSERVER_SHUTDOWN_GRACE": "1",
}

# The object every route case can aim at (stored once, before the corpus).
SEED, SEED_BYTES = make_instance()
STUDY, SERIES, SOP = SEED.StudyInstanceUID, SEED.SeriesInstanceUID, SEED.SOPInstanceUID
INSTANCE = f"{B}/studies/{STUDY}/series/{SERIES}/instances/{SOP}"
BOUNDARY = b"corpus-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}'


@dataclass(frozen=True)
class Case:
    id: str
    method: str
    target: str
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    # bytes: sent with Content-Length; a tuple: sent chunked, no Content-Length.
    body: bytes | tuple[bytes, ...] = b""
    # A piece of the message the caller must read.
    says: str = ""
    # "error": {"error": "..."}; "stow": a STOW-RS failure list; "empty": a QIDO-RS [];
    # "text": the HTTP server's own short plain-text refusal (before the app).
    kind: str = "error"


def stow(
    case_id: str,
    body: bytes | tuple[bytes, ...],
    status: int,
    says: str = "",
    ctype: str = MULTIPART,
    target: str = f"{B}/studies",
    kind: str = "error",
) -> Case:
    return Case(case_id, "POST", target, status, (("Content-Type", ctype),), body, says, kind)


def get(
    case_id: str,
    target: str,
    status: int,
    says: str = "",
    headers: tuple[tuple[str, str], ...] = (),
    kind: str = "error",
) -> Case:
    return Case(case_id, "GET", target, status, headers, b"", says, kind)


def part(data: bytes, ctype: str = "application/dicom") -> tuple[dict[str, str], bytes]:
    return {"Content-Type": ctype}, data


_, OTHER = make_instance()
GARBAGE = bytes(range(256)) * 4
TRUNCATED = OTHER[: len(OTHER) // 2]
TRUNCATED_PIXELS = OTHER[:-40]
OVERLONG_UID = "1." + "2" * 70
UNDECODABLE_NAME = raw_part10([(0x00100010, b"PN", b"=\x01")], charset="ISO 2022 IR 87")


def _with(**changes: str) -> bytes:
    """A valid object with some attributes replaced (as raw text, unchecked)."""
    ds = dcmread(io.BytesIO(make_instance()[1]))
    for keyword, value in changes.items():
        ds[keyword].value = value
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


BAD_MULTIPART = [
    stow(
        "multipart-no-boundary",
        multipart([part(OTHER)], BOUNDARY),
        400,
        "boundary",
        ctype='multipart/related; type="application/dicom"',
    ),
    stow("multipart-wrong-boundary", multipart([part(OTHER)], b"another-one"), 400, "does not contain the boundary"),
    stow("multipart-truncated", multipart([part(OTHER)], BOUNDARY)[:-30], 400, "ended before"),
    stow(
        "multipart-nested",
        multipart([part(multipart([part(OTHER)], b"inner"), "multipart/related; boundary=inner")], BOUNDARY),
        415,
        "nested multipart",
    ),
    stow(
        "multipart-thousands-of-empty-parts",
        multipart([({}, b"")] * 5000, BOUNDARY),
        413,
        f"more than {MAX_PARTS} parts (after {MAX_PARTS} part(s), none stored)",
    ),
    stow("multipart-huge-part-header", multipart([({"X-Junk": "j" * 20000}, OTHER)], BOUNDARY), 400, "headers exceed"),
    stow(
        "multipart-boundary-71-chars",
        multipart([part(OTHER)], b"b" * 71),
        400,
        "1-70 characters",
        ctype=f"multipart/related; boundary={'b' * 71}",
    ),
    stow(
        "multipart-boundary-bad-chars",
        b"--a<b>\r\n\r\nx\r\n--a<b>--",
        400,
        "boundary may contain",
        ctype='multipart/related; boundary="a<b>"',
    ),
    stow(
        "multipart-duplicate-boundary",
        multipart([part(OTHER)], BOUNDARY),
        400,
        "more than once",
        ctype=f"{MULTIPART}; boundary=other",
    ),
    stow(
        "multipart-no-crlf-after-delimiter",
        b"--" + BOUNDARY + b"XYZ\r\n\r\ndata\r\n--" + BOUNDARY + b"--",
        400,
        "not followed by CRLF",
    ),
    stow(
        "multipart-malformed-header-line",
        b"--" + BOUNDARY + b"\r\nno colon here\r\n\r\nx\r\n--" + BOUNDARY + b"--",
        400,
        "malformed part header",
    ),
    stow("multipart-empty-body", b"", 400, "does not contain the boundary"),
    stow("multipart-no-parts", b"--" + BOUNDARY + b"--\r\n", 400, "no parts"),
    stow(
        "multipart-padding-flood",
        b"--" + BOUNDARY + b" " * 400 + b"\r\n\r\nx\r\n--" + BOUNDARY + b"--",
        400,
        "whitespace",
    ),
    stow(
        "multipart-dicom-json-type",
        multipart([part(b"{}")], BOUNDARY),
        415,
        "not supported",
        ctype=f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY.decode()}',
    ),
    stow("multipart-text-part", multipart([part(b"hello", "text/plain")], BOUNDARY), 409, "text/plain", kind="stow"),
    stow(
        "multipart-part-too-large", multipart([part(b"\0" * (MAX_PART + 1))], BOUNDARY), 413, f"larger than {MAX_PART}"
    ),
    stow(
        "multipart-latin1-boundary",
        b"--b\xf8\r\n\r\nx\r\n--b\xf8--",
        400,
        "ASCII",
        ctype="multipart/related; boundary=b\xf8",
    ),
]

BAD_OBJECTS = [
    stow("object-garbage", GARBAGE, 409, "not a DICOM Part 10 object", ctype="application/dicom", kind="stow"),
    stow("object-truncated-header", TRUNCATED, 409, "", ctype="application/dicom", kind="stow"),
    stow("object-truncated-pixels", TRUNCATED_PIXELS, 409, "truncated", ctype="application/dicom", kind="stow"),
    stow("object-empty", b"", 400, "empty", ctype="application/dicom"),
    stow("object-preamble-only", b"\0" * 128 + b"DICM", 409, "", ctype="application/dicom", kind="stow"),
    stow(
        "object-traversal-sop-uid",
        _with(SOPInstanceUID="../../../etc/passwd"),
        409,
        "not a valid UID",
        ctype="application/dicom",
        kind="stow",
    ),
    stow(
        "object-overlong-study-uid",
        _with(StudyInstanceUID=OVERLONG_UID),
        409,
        "not a valid UID",
        ctype="application/dicom",
        kind="stow",
    ),
    stow(
        "object-in-multipart-garbage",
        multipart([part(GARBAGE)], BOUNDARY),
        409,
        "not a DICOM Part 10 object",
        kind="stow",
    ),
    stow(
        "object-study-mismatch", OTHER, 409, "", ctype="application/dicom", target=f"{B}/studies/1.2.3.4", kind="stow"
    ),
    # Found by the property tests: pydicom cannot decode this name under this character set.
]

# Path segments that try to leave their place; each is refused before any lookup.
TRAVERSALS = {
    "dotdot": "..",
    "dotdot-encoded": "%2e%2e",
    "slash-encoded": "1.2%2F..%2F..%2Fx",
    "nul": "1.2%00",
    "backslash": "1.2%5C..%5Cx",
    "overlong": OVERLONG_UID,
    "letters": "1.2.abc",
    "empty-component": "1..2",
}
ROUTES = {
    "study": f"{B}/studies/{{u}}",
    "study-metadata": f"{B}/studies/{{u}}/metadata",
    "series-search": f"{B}/studies/{{u}}/series",
    "series": f"{B}/studies/{STUDY}/series/{{u}}",
    "instance-metadata": f"{B}/studies/{STUDY}/series/{SERIES}/instances/{{u}}/metadata",
    "frames": f"{B}/studies/{STUDY}/series/{SERIES}/instances/{{u}}/frames/1",
    "rendered": f"{B}/studies/{STUDY}/series/{{u}}/rendered",
    "thumbnail": f"{B}/studies/{{u}}/thumbnail",
}
# (route, traversal) pairs: every route, and every traversal, at least once.
PAIRS = (
    [("study", t) for t in TRAVERSALS]
    + [(r, "dotdot-encoded") for r in ROUTES if r != "study"]
    + [
        ("frames", "nul"),
        ("rendered", "backslash"),
        ("instance-metadata", "overlong"),
    ]
)


def _traversal_status(value: str) -> int:
    # An encoded '/' splits the segment after decoding: no route has that shape.
    return 404 if "%2F" in value else 400


TRAVERSAL_CASES = [
    get(f"path-{route}-{name}", ROUTES[route].format(u=TRAVERSALS[name]), _traversal_status(TRAVERSALS[name]))
    for route, name in PAIRS
] + [
    Case("path-delete-dotdot", "DELETE", f"{B}/studies/%2e%2e", 400, says="Study Instance UID"),
    stow(
        "path-stow-traversal", OTHER, 400, "Study Instance UID", ctype="application/dicom", target=f"{B}/studies/%2e%2e"
    ),
    get("path-bulkdata-traversal", f"{INSTANCE}/bulkdata/..%2F..%2F..%2Fetc%2Fpasswd", 404, "no such bulk data"),
    get("path-frames-garbage", f"{INSTANCE}/frames/1;DROP", 400, "frame list"),
    get("path-tenant-dotdot", f"{B}/tenants/..%2F../studies", 400, "tenant"),
    get("path-tenant-upper", f"{B}/tenants/DEFAULT/studies", 400, "tenant"),
    get("header-tenant-traversal", f"{B}/studies", 400, "tenant", headers=(("X-Tenant", "../other"),)),
    get("header-tenant-nul", f"{B}/studies", 400, "tenant", headers=(("X-Tenant", "a\tb"),)),
]

QIDO_CASES = [
    get("sql-or-1-1", f"{B}/studies?PatientName=%27%20OR%201%3D1%20--", 200, kind="empty"),
    get("sql-percent", f"{B}/studies?PatientID=%25", 200, kind="empty"),
    get("sql-underscore", f"{B}/studies?PatientID=_*", 200, kind="empty"),
    get("sql-backslash", f"{B}/studies?PatientID=%5C%5C", 200, kind="empty"),
    get("sql-in-uid", f"{B}/studies?StudyInstanceUID=1%27%20OR%201%3D1", 400, "StudyInstanceUID"),
    get("sql-in-limit", f"{B}/studies?limit=1;DROP%20TABLE%20studies", 400, "limit"),
    get("qido-uid-list-traversal", f"{B}/instances?SOPInstanceUID=1.2,..%2F..", 400, "SOPInstanceUID"),
    get("qido-value-5000-chars", f"{B}/studies?PatientID={'x' * 5000}", 400, "longer than"),
    get("qido-10k-stars", f"{B}/studies?PatientName={'*' * 10000}", 400, "longer than"),
    get("qido-wildcard-flood", f"{B}/studies?PatientName={'a*' * 100}", 400, "wildcard"),
    get(
        "qido-100-params",
        f"{B}/studies?" + "&".join(f"includefield=PatientID{i}" for i in range(100)),
        400,
        "parameters",
    ),
    get("qido-300-includefields", f"{B}/studies?includefield=" + ",".join(["PatientID"] * 300), 400, "more than"),
    get("qido-query-string-20k", f"{B}/studies?PatientID={'x' * 20000}", 414, "query string"),
    get("qido-nul-value", f"{B}/studies?PatientID=a%00b", 400, "control characters"),
    get("qido-control-value", f"{B}/studies?PatientName=a%1Bb", 400, "control characters"),
    get("qido-unknown-attribute", f"{B}/studies?NoSuchAttribute=x", 400, "NoSuchAttribute"),
    get("qido-unindexed-attribute", f"{B}/studies?00091010=x", 400, "not an indexed attribute"),
    get("qido-fuzzy-bad", f"{B}/studies?fuzzymatching=maybe", 400, "fuzzymatching"),
    get("qido-negative-offset", f"{B}/studies?offset=-1", 400, "offset"),
    get("qido-huge-offset", f"{B}/studies?offset=99999999999", 400, "offset"),
    get("qido-duplicate-limit", f"{B}/studies?limit=1&limit=2", 400, "more than once"),
    get("qido-limit-clamped", f"{B}/studies?PatientID=nobody&limit=999999", 200, kind="empty"),
    get("qido-date-garbage", f"{B}/studies?StudyDate=20200101-x", 400, "StudyDate"),
    get("changefeed-garbage", f"{B}/changefeed?offset=-5", 400, "offset"),
]

WADO_URI = f"{B}/wado?requestType=WADO&studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}"
WADO_URI_CASES = [
    get(
        "wado-uri-no-request-type", f"{B}/wado?studyUID={STUDY}&seriesUID={SERIES}&objectUID={SOP}", 400, "requestType"
    ),
    get(
        "wado-uri-traversal-uid", f"{B}/wado?requestType=WADO&studyUID=..%2F..&seriesUID=1&objectUID=1", 400, "studyUID"
    ),
    get("wado-uri-duplicate-uid", f"{WADO_URI}&objectUID=1.2.3", 400, "more than once"),
    get(
        "wado-uri-transfer-syntax-garbage",
        f"{WADO_URI}&contentType=application/dicom&transferSyntax=..%2Fx",
        400,
        "transferSyntax",
    ),
    get("wado-uri-unknown-param", f"{WADO_URI}&debug=1", 400, "debug"),
    get("wado-uri-content-type-html", f"{WADO_URI}&contentType=text/html", 406, "contentType"),
    get("wado-uri-rows-zero", f"{WADO_URI}&rows=0", 400, "rows"),
    get("wado-uri-window-list", f"{WADO_URI}&windowCenter=1,2&windowWidth=linear", 400, "one number"),
    get("wado-uri-frame-garbage", f"{WADO_URI}&frameNumber=1e9", 400, "frameNumber"),
]

MEDIA_TYPE_CASES = [
    stow("stow-content-type-json", OTHER, 415, "application/json", ctype="application/json"),
    stow("stow-content-type-html", OTHER, 415, "text/html", ctype="text/html"),
    stow("stow-content-type-garbage", OTHER, 415, "not a media type", ctype="garbage"),
    Case("stow-no-content-type", "POST", f"{B}/studies", 415, (), OTHER, "no Content-Type"),
    get("qido-accept-xml", f"{B}/studies", 406, "application/dicom+json", (("Accept", "application/dicom+xml"),)),
    get("qido-accept-garbage", f"{B}/studies", 400, "Accept", (("Accept", "///;;;"),)),
    get("wado-accept-html", INSTANCE, 406, "", (("Accept", "text/html"),)),
    get("metadata-accept-dicom", f"{INSTANCE}/metadata", 406, "", (("Accept", "application/dicom"),)),
    Case("method-patch", "PATCH", f"{B}/studies", 405, says="not allowed"),
]

OVERSIZE_CASES = [
    # A declared body above the limit is refused before it is read.
    Case(
        "oversize-content-length",
        "POST",
        f"{B}/studies",
        413,
        (("Content-Type", "application/dicom"),),
        b"\0" * (MAX_REQUEST + 1),
        f"at most {MAX_REQUEST} are accepted",
    ),
    Case(
        "oversize-chunked-multipart",
        "POST",
        f"{B}/studies",
        413,
        (("Content-Type", MULTIPART),),
        tuple([b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n"] + [b"\0" * 16384] * 20),
        "larger than",
    ),
    Case(
        "oversize-single-object",
        "POST",
        f"{B}/studies",
        413,
        (("Content-Type", "application/dicom"),),
        b"\0" * (MAX_PART + 1),
        f"larger than {MAX_PART}",
    ),
    Case(
        "oversize-chunked-single",
        "POST",
        f"{B}/studies",
        413,
        (("Content-Type", "application/dicom"),),
        tuple([b"\0" * 16384] * 20),
        "larger than",
    ),
]

HTTP_CASES = (
    BAD_MULTIPART + BAD_OBJECTS + TRAVERSAL_CASES + QIDO_CASES + WADO_URI_CASES + MEDIA_TYPE_CASES + OVERSIZE_CASES
)


# ---- the archive and how to talk to it -------------------------------------


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def send(
    port: int,
    method: str,
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | tuple[bytes, ...] = b"",
) -> Reply:
    """One request, with the target and headers exactly as given (no client
    normalizes '..' or re-encodes anything)."""
    head = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in headers]
    if isinstance(body, tuple):
        head.append("Transfer-Encoding: chunked")
        payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in body) + b"0\r\n\r\n"
    else:
        if body or method == "POST":
            head.append(f"Content-Length: {len(body)}")
        payload = body
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall("\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed: read what it said
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Reply(response.status, response.headers, response.read())


def snapshot(server: Archive, headers: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """What is stored: instances the index lists, files the storage folder holds."""
    r = httpx.get(f"{server.dicomweb}/instances", params={"limit": "1000"}, headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    return len(r.json()), server.stored_files()


# Slow peers, opened as soon as the limited archive runs, so that their wait
# overlaps the rest of the corpus: name -> (socket, when to stop waiting).
STALLED: dict[str, tuple[socket.socket, float]] = {}
_STALL_OPENINGS = {
    "dimse-silent": ("dimse", b""),
    "dimse-inside-pdu": ("dimse", b"\x01\x00" + (1000).to_bytes(4, "big") + b"\x00\x01"),
    "http-silent": ("http", b""),
    "http-inside-headers": ("http", b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\nX-Slow: "),
}


def open_stalled_peers(server: Archive) -> None:
    for name, (port_name, opening) in _STALL_OPENINGS.items():
        port = server.dimse_port if port_name == "dimse" else server.http_port
        sock = socket.create_connection(("127.0.0.1", port), timeout=DROP_GUARD)
        sock.sendall(opening)
        STALLED[name] = (sock, time.monotonic() + DROP_GUARD)


def dropped(stalled: tuple[socket.socket, float]) -> bool:
    """Whether the server closed the connection (after whatever it said last,
    e.g. an A-ABORT or a 408) before the deadline."""
    sock, deadline = stalled
    try:
        while True:
            remaining = deadline - time.monotonic()
            sock.settimeout(max(remaining, 0.1))  # past the deadline: only what is already there
            if sock.recv(4096) == b"":
                return True
            if remaining <= 0:
                return False
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.close()


def start_archive(data_dir: Path, env: dict[str, str]) -> Archive:
    server = Archive(data_dir, extra_env=env)
    server.start()
    return server


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """An archive with small limits, holding the seed object."""
    server = start_archive(tmp_path_factory.mktemp("limited"), LIMITED_ENV)
    try:
        r = httpx.post(
            f"{server.dicomweb}/studies", content=SEED_BYTES, headers={"Content-Type": "application/dicom"}, timeout=30
        )
        assert r.status_code == 200, r.text
        open_stalled_peers(server)
        yield server
    finally:
        for sock, _ in STALLED.values():
            sock.close()
        code = server.stop()
    assert code == 0, "".join(server.output)


def check_readable(case: Case, reply: Reply) -> None:
    text = reply.body.decode("utf-8", errors="replace")
    assert "Traceback" not in text and 'File "' not in text
    if case.kind == "text":
        assert len(text) < 200
        return
    assert reply.headers.get_content_type() in ("application/json", "application/dicom+json"), text[:200]
    body = reply.json()
    if case.kind == "error":
        assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"], body
        assert len(body["error"]) < 400 and body["error"].isprintable(), body
        assert case.says.lower() in body["error"].lower(), body
    elif case.kind == "stow":
        failed = body["00081198"]["Value"]
        assert failed and "00081199" not in body, body
        assert case.says.lower() in reply.headers.get("Warning", "").lower(), reply.headers.get("Warning")
    elif case.kind == "empty":
        assert body == [], body


@pytest.mark.parametrize("case", HTTP_CASES, ids=lambda c: c.id)
def test_http_case(limited: Archive, case: Case) -> None:
    before = snapshot(limited)
    reply = send(limited.http_port, case.method, case.target, case.headers, case.body)
    assert reply.status == case.status, reply.body[:300]
    check_readable(case, reply)
    assert snapshot(limited) == before


# Requests the HTTP server itself refuses before the app sees them.
RAW_REQUESTS = {
    "http-garbage-request-line": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n",
    "http-header-without-colon": b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n",
    "http-nul-in-header": b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\nX-Tenant: a\x00b\r\n\r\n",
    "http-space-in-target": b"GET /dicomweb/studies/1 2 HTTP/1.1\r\nHost: x\r\n\r\n",
    "http-conflicting-lengths": b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
    b"Transfer-Encoding: chunked\r\nContent-Type: application/dicom\r\n\r\n0\r\n\r\n",
    "http-huge-header": b"GET /dicomweb/studies HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(RAW_REQUESTS))
def test_malformed_http_is_refused_by_the_server(limited: Archive, name: str) -> None:
    before = snapshot(limited)
    with socket.create_connection(("127.0.0.1", limited.http_port), timeout=30) as sock:
        try:
            sock.sendall(RAW_REQUESTS[name])
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
            body = response.read()
        except ConnectionResetError:  # refused while we were still sending: its 400 was lost with the reset
            assert name == "http-huge-header"
            body = b""
        else:
            assert response.status == 400, body[:200]
    assert b"Traceback" not in body and len(body) < 200
    assert snapshot(limited) == before


def test_an_undecodable_person_name_is_kept_as_sent(limited: Archive) -> None:
    """Values as they are: a name its character set cannot decode (a control
    byte under ISO 2022 IR 87, as found by the property tests) is stored
    byte for byte, its metadata is strict JSON that names it, and it goes
    again on DELETE."""
    reply = send(limited.http_port, "POST", f"{B}/studies", (("Content-Type", "application/dicom"),), UNDECODABLE_NAME)
    assert reply.status == 200, reply.body[:300]
    url = reply.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    path = url.split("127.0.0.1", 1)[1].split("/", 1)[1]
    meta = send(limited.http_port, "GET", f"/{path}/metadata")
    (attrs,) = json.loads(meta.body, parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))
    assert "00100010" in attrs
    got = send(
        limited.http_port,
        "GET",
        f"/{path}",
        (("Accept", 'multipart/related; type="application/dicom"; transfer-syntax=*'),),
    )
    assert got.status == 200 and UNDECODABLE_NAME in got.body
    assert send(limited.http_port, "DELETE", f"/{path}").status == 204


def test_limit_above_the_cap_is_lowered_with_a_warning(limited: Archive) -> None:
    reply = send(limited.http_port, "GET", f"{B}/studies?limit=999999")
    assert reply.status == 200
    assert [s["0020000D"]["Value"][0] for s in reply.json()] == [STUDY]
    assert "limit was lowered to 1000" in reply.headers["Warning"]


def test_corpus_size() -> None:
    assert len(HTTP_CASES) + len(TOKEN_CASE_IDS) + len(DIMSE_GARBAGE) + len(RAW_REQUESTS) >= 50
    ids = [c.id for c in HTTP_CASES] + TOKEN_CASE_IDS
    assert len(set(ids)) == len(ids)


# ---- DIMSE ------------------------------------------------------------------


def _part10_with_dataset(dataset_bytes: bytes, sop: str) -> bytes:
    """File meta for a CT image followed by `dataset_bytes` as its data set."""
    meta, _ = make_instance()
    meta.file_meta.MediaStorageSOPInstanceUID = sop
    buf = io.BytesIO()
    ds = Dataset()
    ds.file_meta = meta.file_meta
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue() + dataset_bytes


_VALID_DATASET = split_part10(make_instance()[1])[1]
DIMSE_GARBAGE = {
    "cstore-garbage": bytes(range(256)) * 8,
    "cstore-truncated": _VALID_DATASET[: len(_VALID_DATASET) // 2],
    "cstore-truncated-pixels": _VALID_DATASET[:-40],
}


def associate(server: Archive, max_pdu: int = MAX_PDU) -> Any:
    ae = AE(ae_title="CORPUS")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
    assert assoc.is_established
    return assoc


@pytest.mark.parametrize("name", sorted(DIMSE_GARBAGE))
def test_dimse_cstore_of_garbage_fails_and_stores_nothing(limited: Archive, tmp_path: Path, name: str) -> None:
    before = snapshot(limited)
    path = tmp_path / "garbage.dcm"
    path.write_bytes(_part10_with_dataset(DIMSE_GARBAGE[name], "1.2.3.999"))
    assoc = associate(limited)
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are, undecoded
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()
    assert status.Status == 0xC000
    assert snapshot(limited) == before


def test_dimse_peer_that_sends_nothing_is_dropped(limited: Archive) -> None:
    """A peer that connects and never sends an A-ASSOCIATE-RQ is disconnected
    once the ACSE timeout (2 s here) has passed."""
    assert dropped(STALLED["dimse-silent"])


def test_dimse_peer_that_stalls_inside_a_pdu_is_dropped(limited: Archive) -> None:
    """A slow peer: the header of an A-ASSOCIATE-RQ PDU announcing 1000 bytes,
    then silence. Its connection must be dropped once the network timeout
    (4 s here) has passed, not held for ever: each one holds an association slot."""
    assert dropped(STALLED["dimse-inside-pdu"])


@pytest.mark.parametrize("name", ["http-silent", "http-inside-headers"])
def test_http_peer_that_stalls_is_dropped(limited: Archive, name: str) -> None:
    """A client that sends nothing, or stops inside its request head, is
    disconnected after the head timeout (4 s here)."""
    assert dropped(STALLED[name])


def test_dimse_pdu_above_the_negotiated_maximum_is_refused(limited: Archive) -> None:
    """The SCP offers MAX_PDU; an SCU that ignores it and sends one P-DATA-TF
    PDU four times as large must see the association aborted and nothing stored."""
    before = snapshot(limited)
    ds, _ = make_instance()
    ds.PixelData = bytes(4 * MAX_PDU)
    ds.Rows, ds.Columns = 64, 128
    assoc = associate(limited)
    assert assoc.acceptor.maximum_length == MAX_PDU
    for item in assoc.acceptor.user_information:  # behave as if the SCP had no maximum
        if isinstance(item, MaximumLengthNotification):
            item.maximum_length_received = 0
    assert assoc.acceptor.maximum_length == 0
    try:
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    assert not status or status.Status != 0x0000
    assert assoc.is_aborted
    assert snapshot(limited) == before


def test_a_part_over_the_limit_after_a_stored_one_is_reported(limited: Archive) -> None:
    """Parts are stored as they stream in, so a limit broken by a later part
    cannot undo the earlier ones: 202, the first stored, the rest a failure
    naming the limit. Only the first object is added."""
    before_count, before_files = snapshot(limited)
    ds, data = make_instance()
    body = multipart([part(data), part(b"\0" * (MAX_PART + 1))], BOUNDARY)
    reply = send(limited.http_port, "POST", f"{B}/studies", (("Content-Type", MULTIPART),), body)
    assert reply.status == 202, reply.body[:300]
    result = reply.json()
    assert [i["00081155"]["Value"] for i in result["00081199"]["Value"]] == [[ds.SOPInstanceUID]]
    assert [f["00081197"]["Value"] for f in result["00081198"]["Value"]] == [[0xC000]]
    assert f"part 2 is larger than {MAX_PART} bytes" in reply.headers["Warning"]
    count, files = snapshot(limited)
    assert count == before_count + 1 and len(files) == len(before_files) + 1


# ---- still serving after all of it -------------------------------------------


def test_still_serves_after_the_corpus(limited: Archive) -> None:
    ds, data = make_instance()
    r = httpx.post(
        f"{limited.dicomweb}/studies",
        content=multipart([part(data)], BOUNDARY),
        headers={"Content-Type": MULTIPART},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    url = (
        f"{limited.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}, timeout=30)
    assert r.status_code == 200
    assert data in r.content
    assoc = associate(limited)
    try:
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


# ---- credentials (authentication on) -----------------------------------------

ISSUER, AUDIENCE = "https://idp.corpus.test", "dicomserver"
TENANT_A, TENANT_B = "hospital-a", "hospital-b"
_SIGNING_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_UNPUBLISHED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
API_KEY_B = "dsk_corpus_" + "b" * 32


class Jwks:
    """A JWKS endpoint on loopback publishing the signing key's public half."""

    def __init__(self) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_SIGNING_KEY.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": "corpus-1", "alg": "RS256", "use": "sig"}]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"


def token(key: Any = _SIGNING_KEY, alg: str = "RS256", kid: str = "corpus-1", **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "sub": "corpus",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        "tenants": [TENANT_A],
        "scope": "dicom.read dicom.write dicom.delete",
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, key, algorithm=alg, headers={"kid": kid})


def _unsigned(**overrides: Any) -> str:
    """alg=none: a header and claims, no signature."""

    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "sub": "corpus",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 600,
        "tenants": [TENANT_A],
        "scope": "dicom.read dicom.write dicom.delete",
        **overrides,
    }
    return f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': 'corpus-1'})}.{b64(claims)}."


def _tampered() -> str:
    """A real token whose claims were edited afterwards (another tenant)."""
    head, _, sig = token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(_ + "=" * (-len(_) % 4)))
    claims["tenants"] = [TENANT_B]
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{body}.{sig}"


_PUBLIC_PEM = _SIGNING_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def _hs256_with_the_public_key() -> str:
    """The classic confusion: HMAC keyed with the RSA public key, which anyone has."""
    now = int(time.time())
    claims = {
        "sub": "corpus",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "exp": now + 600,
        "tenants": [TENANT_A],
        "scope": "dicom.read dicom.write dicom.delete",
    }
    header = {"alg": "HS256", "typ": "JWT", "kid": "corpus-1"}

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(json.dumps(claims).encode())
    return (signing_input + b"." + b64(hmac.new(_PUBLIC_PEM, signing_input, hashlib.sha256).digest())).decode()


def bearer(value: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {value}"),)


def _token_cases() -> list[Case]:
    now = int(time.time())
    unauthenticated = [
        ("token-missing", ()),
        ("token-basic-scheme", (("Authorization", "Basic Y29ycHVzOnNlY3JldA=="),)),
        ("token-bearer-empty", (("Authorization", "Bearer "),)),
        ("token-garbage", bearer("not.a.jwt")),
        ("token-huge-garbage", bearer("A" * 8000)),
        ("token-expired", bearer(token(exp=now - 3600, iat=now - 7200))),
        ("token-not-yet-valid", bearer(token(nbf=now + 3600))),
        ("token-without-exp", bearer(token(exp=None))),
        ("token-wrong-audience", bearer(token(aud="another-service"))),
        ("token-wrong-issuer", bearer(token(iss="https://evil.example"))),
        ("token-alg-none", bearer(_unsigned())),
        ("token-hs256-not-trusted", bearer(token(key="a-secret-nobody-configured-32b!!", alg="HS256"))),
        ("token-hs256-keyed-with-public-key", bearer(_hs256_with_the_public_key())),
        ("token-unknown-kid", bearer(token(key=_UNPUBLISHED_KEY, kid="corpus-2"))),
        ("token-known-kid-wrong-key", bearer(token(key=_UNPUBLISHED_KEY))),
        ("token-forged-claims", bearer(_tampered())),
        ("token-no-tenants", bearer(token(tenants=None))),
        ("token-no-subject", bearer(token(sub=None))),
        ("api-key-unknown", bearer("dsk_corpus_" + "x" * 32)),
        ("api-key-header-unknown", (("X-API-Key", "dsk_nope"),)),
        ("api-key-header-empty", (("X-API-Key", " "),)),
    ]
    cases = [get(name, f"{B}/studies", 401, headers=headers) for name, headers in unauthenticated]
    read_only = bearer(token(scope="dicom.read"))
    cases += [
        stow("token-read-scope-stores", OTHER, 403, "write", ctype="application/dicom"),
        Case("token-read-scope-deletes", "DELETE", f"{B}/studies/{STUDY}", 403, read_only, says="delete"),
        get("token-tenant-header-not-held", f"{B}/studies", 403, "tenant", bearer(token()) + (("X-Tenant", TENANT_B),)),
        get("token-tenant-path-not-held", f"{B}/tenants/{TENANT_B}/studies", 403, "tenant", bearer(token())),
        get(
            "token-tenant-header-traversal",
            f"{B}/studies",
            400,
            "tenant",
            bearer(token()) + (("X-Tenant", "../hospital-b"),),
        ),
        get(
            "token-tenant-header-and-path-differ",
            f"{B}/tenants/{TENANT_A}/studies",
            400,
            "differ",
            bearer(token()) + (("X-Tenant", TENANT_B),),
        ),
        get("api-key-of-another-tenant", f"{B}/studies", 403, "tenant", bearer(API_KEY_B) + (("X-Tenant", TENANT_A),)),
        get(
            "api-key-and-token-both",
            f"{B}/studies",
            400,
            "one credential",
            bearer(token()) + (("X-API-Key", API_KEY_B),),
        ),
        get("api-key-reads-another-tenants-study", f"{B}/studies/{STUDY}/metadata", 404, "", bearer(API_KEY_B)),
    ]
    # The read-only token stores through this one: fix the headers of the STOW case.
    cases[len(unauthenticated)] = replace(
        cases[len(unauthenticated)], headers=read_only + (("Content-Type", "application/dicom"),)
    )
    return cases


# Ids at collection; the tokens themselves are minted when each case runs:
# they expire ten minutes after minting, and the suite runs longer than that.
TOKEN_CASE_IDS = [c.id for c in _token_cases()]


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """An archive with authentication on: RS256 tokens from a JWKS endpoint,
    one API key of hospital-b; the seed object stored in hospital-a."""
    jwks = Jwks()
    env = {
        "DICOMSERVER_AUTH_ENABLED": "true",
        "DICOMSERVER_JWKS_URL": jwks.url,
        "DICOMSERVER_JWT_ISSUER": ISSUER,
        "DICOMSERVER_JWT_AUDIENCE": AUDIENCE,
        "DICOMSERVER_JWT_LEEWAY_SECONDS": "0",
        "DICOMSERVER_SHUTDOWN_GRACE": "1",
        "DICOMSERVER_API_KEYS": json.dumps(
            [
                {
                    "sha256": hashlib.sha256(API_KEY_B.encode()).hexdigest(),
                    "subject": "corpus-b",
                    "tenants": [TENANT_B],
                    "scopes": ["read", "write"],
                }
            ]
        ),
    }
    server = start_archive(tmp_path_factory.mktemp("guarded"), env)
    try:
        r = httpx.post(
            f"{server.dicomweb}/studies",
            content=SEED_BYTES,
            headers={"Content-Type": "application/dicom", "Authorization": f"Bearer {token()}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        yield server
    finally:
        code = server.stop()
        jwks.server.shutdown()
    assert code == 0, "".join(server.output)


def guarded_snapshot(server: Archive) -> tuple[Any, ...]:
    return (
        snapshot(server, {"Authorization": f"Bearer {token()}"}),
        snapshot(server, {"Authorization": f"Bearer {API_KEY_B}"})[0],
    )


@pytest.mark.parametrize("case_id", TOKEN_CASE_IDS)
def test_credential_case(guarded: Archive, case_id: str) -> None:
    case = next(c for c in _token_cases() if c.id == case_id)
    before = guarded_snapshot(guarded)
    reply = send(guarded.http_port, case.method, case.target, case.headers, case.body)
    assert reply.status == case.status, reply.body[:300]
    check_readable(case, reply)
    if reply.status == 401:
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert guarded_snapshot(guarded) == before


def test_guarded_archive_still_serves(guarded: Archive) -> None:
    ds, data = make_instance()
    auth = {"Authorization": f"Bearer {token()}"}
    r = httpx.post(
        f"{guarded.dicomweb}/studies", content=data, headers={"Content-Type": "application/dicom", **auth}, timeout=30
    )
    assert r.status_code == 200, r.text
    url = (
        f"{guarded.dicomweb}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    r = httpx.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*', **auth}, timeout=30
    )
    assert r.status_code == 200
    assert data in r.content
