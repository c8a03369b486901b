"""TLS settings that cannot work are refused with a message naming them,
never served as plain TCP: by the helpers, the gateway and the launcher."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import tls
from common.clients import channel
from common.settings import CommonSettings
from testbed.processes import free_port
from tests.support import ROOT
from tests.tls.tls_support import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("settings"))


def test_half_configured_listener(pki: Pki) -> None:
    with pytest.raises(tls.TLSConfigError, match="set DICOMSERVER_TLS_KEY_FILE too"):
        tls.optional_server_context(pki.cert("server"), None, None, "DICOMSERVER_TLS")
    # A CA alone would mean "client certificates required" on a plain listener.
    with pytest.raises(tls.TLSConfigError, match="DICOMSERVER_HTTP_TLS_CERT_FILE and DICOMSERVER_HTTP_TLS_KEY_FILE"):
        tls.optional_server_context(None, None, pki.ca, "DICOMSERVER_HTTP_TLS")
    assert tls.optional_server_context(None, None, None, "DICOMSERVER_TLS") is None


def test_half_configured_grpc(pki: Pki) -> None:
    settings = CommonSettings(grpc_tls_ca_file=pki.ca)
    with pytest.raises(
        tls.TLSConfigError, match="missing DICOMSERVER_GRPC_TLS_CERT_FILE, DICOMSERVER_GRPC_TLS_KEY_FILE"
    ):
        channel("127.0.0.1:1", settings)
    with pytest.raises(tls.TLSConfigError, match="missing DICOMSERVER_GRPC_TLS_CA_FILE"):
        tls.grpc_server_credentials(
            CommonSettings(grpc_tls_cert_file=pki.cert("server"), grpc_tls_key_file=pki.key("server"))
        )
    unreadable = CommonSettings(
        grpc_tls_cert_file=pki.cert("server"),
        grpc_tls_key_file=pki.key("server"),
        grpc_tls_ca_file=pki.dir / "missing.pem",
    )
    with pytest.raises(tls.TLSConfigError, match="DICOMSERVER_GRPC_TLS_CA_FILE: cannot read"):
        tls.grpc_server_credentials(unreadable)


def run(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_gateway_refuses_to_start(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    proc = run(
        "dicomweb_gateway",
        {
            "DICOMSERVER_HTTP_PORT": str(port),
            "DICOMSERVER_HTTP_TLS_CA_FILE": str(pki.ca),
            "DICOMSERVER_DATA_DIR": str(tmp_path),
        },
    )
    assert proc.returncode == 2
    assert "DICOMSERVER_HTTP_TLS_CERT_FILE and DICOMSERVER_HTTP_TLS_KEY_FILE" in proc.stderr
    proc = run(
        "dicomweb_gateway",
        {
            "DICOMSERVER_HTTP_PORT": str(port),
            "DICOMSERVER_HTTP_TLS_CERT_FILE": str(pki.cert("server")),
            "DICOMSERVER_HTTP_TLS_KEY_FILE": str(pki.dir / "missing.key"),
            "DICOMSERVER_DATA_DIR": str(tmp_path),
        },
    )
    assert proc.returncode == 2
    assert "cannot load the HTTPS certificate" in proc.stderr


def test_launcher_refuses_half_configured_grpc_tls(pki: Pki, tmp_path: Path) -> None:
    proc = run(
        "launcher",
        {"DICOMSERVER_GRPC_TLS_CERT_FILE": str(pki.cert("server"))},
        "--data-dir",
        str(tmp_path),
        "--grpc-base-port",
        "0",
        "--http-port",
        str(free_port()),
        "--dimse-port",
        str(free_port()),
    )
    assert proc.returncode == 2
    assert "missing DICOMSERVER_GRPC_TLS_KEY_FILE, DICOMSERVER_GRPC_TLS_CA_FILE" in proc.stderr
    assert "ready" not in proc.stdout
