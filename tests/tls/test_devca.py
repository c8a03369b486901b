"""scripts/devca.py: what it makes (checked with OpenSSL's own verifier),
file modes, refusing to overwrite, and its errors."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.tls.tls_support import devca


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def openssl_verify(ca: Path, cert: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca), "-purpose", purpose, str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("devca") / "ca"
    proc = devca("init", "--dir", str(folder), "--days", "30")
    assert proc.returncode == 0, proc.stderr
    return folder


def test_init_makes_a_ca_with_a_private_key(ca_dir: Path) -> None:
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(ca_dir.stat().st_mode) == 0o700
    ca = load(ca_dir / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca.not_valid_after_utc - ca.not_valid_before_utc).days == 30
    assert openssl_verify(ca_dir / "ca.pem", ca_dir / "ca.pem", "any").returncode == 0


def test_server_certificate_names_every_host(ca_dir: Path) -> None:
    proc = devca(
        "server",
        "--dir",
        str(ca_dir),
        "--name",
        "web",
        "--host",
        "pacs.example.org",
        "--host",
        "127.0.0.1",
        "--host",
        "::1",
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE((ca_dir / "web.key").stat().st_mode) == 0o600
    cert = load(ca_dir / "web.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["pacs.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert openssl_verify(ca_dir / "ca.pem", ca_dir / "web.pem", "sslserver").returncode == 0
    # For a server only: a TLS server checking client certificates refuses it.
    assert openssl_verify(ca_dir / "ca.pem", ca_dir / "web.pem", "sslclient").returncode != 0
    proc = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(ca_dir / "ca.pem"),
            "-verify_hostname",
            "pacs.example.org",
            str(ca_dir / "web.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_also_client_serves_both_ends(ca_dir: Path) -> None:
    proc = devca("server", "--dir", str(ca_dir), "--name", "svc", "--host", "metadata", "--also-client")
    assert proc.returncode == 0, proc.stderr
    assert openssl_verify(ca_dir / "ca.pem", ca_dir / "svc.pem", "sslserver").returncode == 0
    assert openssl_verify(ca_dir / "ca.pem", ca_dir / "svc.pem", "sslclient").returncode == 0


def test_client_certificate_is_for_clients_only(ca_dir: Path) -> None:
    proc = devca("client", "--dir", str(ca_dir), "--name", "modality", "--cn", "CT scanner 3")
    assert proc.returncode == 0, proc.stderr
    cert = load(ca_dir / "modality.pem")
    assert cert.subject.rfc4514_string() == "CN=CT scanner 3"
    assert openssl_verify(ca_dir / "ca.pem", ca_dir / "modality.pem", "sslclient").returncode == 0
    assert openssl_verify(ca_dir / "ca.pem", ca_dir / "modality.pem", "sslserver").returncode != 0


def test_existing_files_are_kept_unless_forced(ca_dir: Path) -> None:
    proc = devca("client", "--dir", str(ca_dir), "--name", "kept")
    assert proc.returncode == 0, proc.stderr
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    proc = devca("init", "--dir", str(ca_dir))
    assert proc.returncode == 1
    assert "already exist" in proc.stderr and "--force" in proc.stderr
    proc = devca("client", "--dir", str(ca_dir), "--name", "kept")
    assert proc.returncode == 1
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before

    proc = devca("client", "--dir", str(ca_dir), "--name", "kept", "--force")
    assert proc.returncode == 0, proc.stderr
    assert (ca_dir / "kept.key").read_bytes() != before["kept.key"]
    assert stat.S_IMODE((ca_dir / "kept.key").stat().st_mode) == 0o600
    assert (ca_dir / "ca.key").read_bytes() == before["ca.key"]
    assert sorted(p.name for p in ca_dir.iterdir()) == sorted(before)  # no temp files left


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["server", "--name", "web"], "at least one --host"),
        (["server", "--name", "web", "--host", "bad_host!"], "neither an IP address nor a DNS name"),
        (["server", "--name", "web", "--host=-x.example.org"], "neither an IP address nor a DNS name"),
        (["client", "--name", "ca"], "--name 'ca'"),
        (["client", "--name", "../escape"], "--name '../escape'"),
        (["client", "--name", "x", "--days", "0"], "1 to 36500"),
        (["client", "--name", "x", "--days", "soon"], "not a whole number"),
        (["client"], "--name"),
        (["sign", "--name", "x"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_and_make_nothing(ca_dir: Path, args: list[str], message: str) -> None:
    before = sorted(p.name for p in ca_dir.iterdir())
    proc = devca(args[0], "--dir", str(ca_dir), *args[1:])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert sorted(p.name for p in ca_dir.iterdir()) == before
    assert not (ca_dir.parent / "escape.pem").exists()


def test_issuing_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    proc = devca("client", "--dir", str(tmp_path), "--name", "x")
    assert proc.returncode == 1
    assert "scripts/devca.py init" in proc.stderr
    assert list(tmp_path.iterdir()) == []
