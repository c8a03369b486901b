"""DICOM TLS and HTTPS on the launched server, with certificates from the dev
CA and no client certificates asked for: dcmtk's echoscu and storescu over
TLS, the object back over HTTPS, and what plain or wrongly trusting clients get."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest

from common import tls
from tests.support import Archive
from tests.tls.tls_support import Pki, content, dcmtk, fresh_ct, https_client, make_pki, wado_uri


@dataclass
class Served:
    archive: Archive
    pki: Pki

    @property
    def https(self) -> str:
        return f"https://127.0.0.1:{self.archive.http_port}"

    def dimse(self) -> list[str]:
        return ["-aec", self.archive.ae_title, "127.0.0.1", str(self.archive.dimse_port)]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tls-edges")
    pki = make_pki(root)
    archive = Archive(
        root / "archive",
        extra_env={
            "DICOMSERVER_TLS_CERT_FILE": str(pki.cert("server")),
            "DICOMSERVER_TLS_KEY_FILE": str(pki.key("server")),
            "DICOMSERVER_HTTP_TLS_CERT_FILE": str(pki.cert("server")),
            "DICOMSERVER_HTTP_TLS_KEY_FILE": str(pki.key("server")),
            "DICOMSERVER_HTTP_MAX_HEADER_BYTES": "8192",
            "DICOMSERVER_HTTP_HEAD_TIMEOUT": "2",
        },
    )
    archive.start()
    try:
        yield Served(archive, pki)
    finally:
        assert archive.stop() == 0, "".join(archive.output)


def test_launcher_says_https_and_tls(served: Served) -> None:
    out = "".join(served.archive.output)
    assert f"DICOMweb  https://127.0.0.1:{served.archive.http_port}/dicomweb" in out
    assert f"DIMSE     DICOMSERVER@127.0.0.1:{served.archive.dimse_port} (TLS)" in out


def test_echoscu_over_tls(served: Served) -> None:
    pki = served.pki
    proc = dcmtk(
        "echoscu", "+tls", str(pki.key("client")), str(pki.cert("client")), "+cf", str(pki.ca), *served.dimse()
    )
    assert proc.returncode == 0, proc.stderr
    # No client certificate asked for: anonymous TLS (still checking the server) works too.
    proc = dcmtk("echoscu", "+tla", "+cf", str(pki.ca), *served.dimse())
    assert proc.returncode == 0, proc.stderr


def test_plain_dimse_to_the_tls_port_fails(served: Served) -> None:
    proc = dcmtk("echoscu", *served.dimse())
    assert proc.returncode != 0
    assert "Association Request Failed" in proc.stderr


def test_dcmtk_refuses_a_server_from_another_ca(served: Served) -> None:
    proc = dcmtk("echoscu", "+tla", "+cf", str(served.pki.other / "ca.pem"), *served.dimse())
    assert proc.returncode != 0


def test_storescu_over_tls_then_wado_over_https(served: Served, tmp_path: Path) -> None:
    path, ds = fresh_ct(tmp_path)
    pki = served.pki
    proc = dcmtk(
        "storescu",
        "+tls",
        str(pki.key("client")),
        str(pki.cert("client")),
        "+cf",
        str(pki.ca),
        *served.dimse(),
        str(path),
    )
    assert proc.returncode == 0, proc.stderr
    with https_client(pki.ca) as client:
        r = client.get(served.https + "/dicomweb" + wado_uri(ds))
    assert r.status_code == 200, r.text
    assert content(pydicom.dcmread(BytesIO(r.content))) == content(ds)


def test_stow_and_retrieve_over_https(served: Served, tmp_path: Path) -> None:
    path, ds = fresh_ct(tmp_path)
    data = path.read_bytes()
    with https_client(served.pki.ca) as client:
        assert client.get(served.https + "/healthz").status_code == 200
        r = client.post(served.https + "/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
        assert r.status_code == 200, r.text
        r = client.get(served.https + "/dicomweb" + wado_uri(ds))
        assert r.status_code == 200
        assert r.content == data
        r = client.get(served.https + "/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID})
        assert [m["00080018"]["Value"] for m in r.json()] == [[ds.SOPInstanceUID]]


def test_plain_http_to_the_https_port_fails(served: Served) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{served.archive.http_port}/healthz", timeout=30)


def test_a_client_trusting_another_ca_refuses_the_server(served: Served) -> None:
    with (
        https_client(served.pki.other / "ca.pem") as client,
        pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
    ):
        client.get(served.https + "/healthz")


def test_request_head_limit_applies(served: Served) -> None:
    """DICOMSERVER_HTTP_MAX_HEADER_BYTES (8 KiB here) reaches uvicorn: an
    unfinished request head beyond it is answered 400 at once. (A whole head
    that arrives in one read is parsed whatever its size: the limit bounds
    what a slow client makes the server hold.)"""
    context = tls.client_context(served.pki.ca)
    with (
        socket.create_connection(("127.0.0.1", served.archive.http_port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 12 * 1024)
        reply = conn.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400 "), reply


def test_a_trickled_request_head_is_cut_off(served: Served) -> None:
    """DICOMSERVER_HTTP_HEAD_TIMEOUT (2 s here): a client that sends part of
    a request head and then waits is disconnected, on a new connection and on
    a kept-alive one, instead of holding the connection forever."""
    context = tls.client_context(served.pki.ca)
    with (
        socket.create_connection(("127.0.0.1", served.archive.http_port), timeout=60) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        response = http.client.HTTPResponse(conn)  # type: ignore[arg-type]
        response.begin()
        assert response.status == 200 and response.read() == b'{"status":"ok"}'
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert conn.recv(4096) == b""
    with (
        socket.create_connection(("127.0.0.1", served.archive.http_port), timeout=60) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        conn.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert conn.recv(4096) == b""


def test_a_client_that_never_handshakes_does_not_stall_others(served: Served) -> None:
    pki = served.pki
    with socket.create_connection(("127.0.0.1", served.archive.dimse_port)):
        # The guard only ends the wait: without the fix echoscu never gets its handshake.
        proc = dcmtk(
            "echoscu",
            "+tls",
            str(pki.key("client")),
            str(pki.cert("client")),
            "+cf",
            str(pki.ca),
            *served.dimse(),
            timeout=10,
        )
    assert proc.returncode == 0, proc.stderr
