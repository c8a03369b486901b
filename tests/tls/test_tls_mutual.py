"""Client certificates everywhere: DICOM TLS and HTTPS that require one signed
by our CA, and mutual TLS between the services (DICOMSERVER_GRPC_TLS_*).
A store over DIMSE and a query over HTTPS cross every internal hop, so they
only work if every service and every channel speaks mutual TLS."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import grpc
import httpx
import pydicom
import pytest

from common import errors
from common.clients import MetadataClient, channel
from common.settings import CommonSettings
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

    def client(self) -> httpx.Client:
        return https_client(self.pki.ca, self.pki.cert("client"), self.pki.key("client"))

    def stored(self, sop_uid: str) -> list[str]:
        with self.client() as client:
            r = client.get(self.https + "/dicomweb/instances", params={"SOPInstanceUID": sop_uid})
        assert r.status_code == 200, r.text
        return [m["00080018"]["Value"][0] for m in r.json()]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("tls-mutual")
    pki = make_pki(root)
    server, key, ca = str(pki.cert("server")), str(pki.key("server")), str(pki.ca)
    archive = Archive(
        root / "archive",
        extra_env={
            "DICOMSERVER_TLS_CERT_FILE": server,
            "DICOMSERVER_TLS_KEY_FILE": key,
            "DICOMSERVER_TLS_CA_FILE": ca,
            "DICOMSERVER_HTTP_TLS_CERT_FILE": server,
            "DICOMSERVER_HTTP_TLS_KEY_FILE": key,
            "DICOMSERVER_HTTP_TLS_CA_FILE": ca,
            "DICOMSERVER_GRPC_TLS_CERT_FILE": server,
            "DICOMSERVER_GRPC_TLS_KEY_FILE": key,
            "DICOMSERVER_GRPC_TLS_CA_FILE": ca,
        },
    )
    archive.start()
    try:
        yield Served(archive, pki)
    finally:
        assert archive.stop() == 0, "".join(archive.output)


def test_dimse_requires_a_certificate_from_our_ca(served: Served, tmp_path: Path) -> None:
    pki = served.pki
    path, ds = fresh_ct(tmp_path)
    # Without a certificate, and with one from another CA: no association, nothing stored.
    proc = dcmtk("storescu", "+tla", "+cf", str(pki.ca), *served.dimse(), str(path))
    assert proc.returncode != 0
    proc = dcmtk(
        "storescu",
        "+tls",
        str(pki.other / "client.key"),
        str(pki.other / "client.pem"),
        "+cf",
        str(pki.ca),
        *served.dimse(),
        str(path),
    )
    assert proc.returncode != 0
    assert served.stored(ds.SOPInstanceUID) == []

    proc = dcmtk(
        "echoscu", "+tls", str(pki.key("client")), str(pki.cert("client")), "+cf", str(pki.ca), *served.dimse()
    )
    assert proc.returncode == 0, proc.stderr
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
    # Ingest called storage and metadata, the gateway metadata and storage: all over mutual TLS.
    assert served.stored(ds.SOPInstanceUID) == [ds.SOPInstanceUID]
    with served.client() as client:
        r = client.get(served.https + "/dicomweb" + wado_uri(ds))
    assert r.status_code == 200
    assert content(pydicom.dcmread(BytesIO(r.content))) == content(ds)


def test_https_requires_a_certificate_from_our_ca(served: Served) -> None:
    pki = served.pki
    with https_client(pki.ca) as client, pytest.raises(httpx.TransportError):
        client.get(served.https + "/healthz")
    with (
        https_client(pki.ca, pki.other / "client.pem", pki.other / "client.key") as client,
        pytest.raises(httpx.TransportError),
    ):
        client.get(served.https + "/healthz")
    with served.client() as client:
        assert client.get(served.https + "/healthz").status_code == 200
        assert client.get(served.https + "/readyz").status_code == 200


def grpc_settings(cert: Path, key: Path, ca: Path) -> CommonSettings:
    return CommonSettings(grpc_tls_cert_file=cert, grpc_tls_key_file=key, grpc_tls_ca_file=ca)


def test_metadata_service_wants_our_client_certificate(served: Served, tmp_path: Path) -> None:
    pki = served.pki
    addr = served.archive.grpc_addrs["metadata"]
    path, ds = fresh_ct(tmp_path)
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

    # Plain gRPC (this process has no DICOMSERVER_GRPC_TLS_* settings).
    with pytest.raises(errors.Unavailable):
        MetadataClient(channel(addr)).locate_each("default", [ds.SOPInstanceUID])
    # TLS trusting our CA, but no certificate of ours: the handshake fails.
    anonymous = grpc.secure_channel(addr, grpc.ssl_channel_credentials(pki.ca.read_bytes()))
    with pytest.raises(errors.Unavailable):
        MetadataClient(anonymous).locate_each("default", [ds.SOPInstanceUID])
    anonymous.close()
    # A certificate from another CA.
    stranger = grpc_settings(pki.other / "client.pem", pki.other / "client.key", pki.ca)
    with pytest.raises(errors.Unavailable):
        MetadataClient(channel(addr, stranger)).locate_each("default", [ds.SOPInstanceUID])

    ours = grpc_settings(pki.cert("server"), pki.key("server"), pki.ca)
    found = MetadataClient(channel(addr, ours)).locate_each("default", [ds.SOPInstanceUID])
    assert [loc.ref.sop_instance_uid for loc in found] == [ds.SOPInstanceUID]
