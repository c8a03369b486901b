"""scripts/devca.py: a development certificate authority.

  scripts/devca.py init   --dir DIR [--days N] [--cn CN]
  scripts/devca.py server --dir DIR --name NAME --host H [--host H ...] [--also-client]
  scripts/devca.py client --dir DIR --name NAME [--cn CN]

`init` makes DIR/ca.pem and DIR/ca.key; `server` and `client` make
DIR/NAME.pem and DIR/NAME.key signed by it. Keys are ECDSA P-256 (dcmtk's
BCP 195 profiles, Python's ssl and gRPC all accept them), written 0600,
unencrypted. A server certificate names each --host as a DNS or IP subject
alternative name and is for TLS servers (serverAuth); --also-client adds
clientAuth, for a service that also calls others with it (gRPC mutual TLS).
A client certificate is for TLS clients only (clientAuth).

Existing files are left alone unless --force. Exit status: 0 done, 1 could
not (a file exists, no CA in DIR, unreadable CA), 2 bad arguments.

For development and tests: a real deployment takes its certificates from its
own PKI."""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 365
# Certificates start a little in the past: clocks of peers differ.
BACKDATE = datetime.timedelta(minutes=5)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DNS_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class DevCAError(Exception):
    """Something the user can fix; the message says what."""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing:
        raise DevCAError(f"{', '.join(existing)} already exist(s); pass --force to replace")


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Writes through a temp file in the same folder: a reader never sees
    half a file, and without `force` an existing file is never replaced
    (a hard link fails if the name exists)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise DevCAError(f"{path} already exists; pass --force to replace") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_pair(
    cert_path: Path, cert: x509.Certificate, key_path: Path, key: ec.EllipticCurvePrivateKey, force: bool
) -> Issued:
    _write(key_path, _key_pem(key), 0o600, force)
    _write(cert_path, _cert_pem(cert), 0o644, force)
    return Issued(cert_path, key_path)


def _prepare_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def init_ca(
    directory: Path, days: int = CA_DAYS, cn: str = "dicomserver development CA", force: bool = False
) -> Issued:
    """A self-signed CA that may sign leaf certificates only (path length 0)."""
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    _refuse_existing([cert_path, key_path], force)
    _prepare_dir(directory)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write_pair(cert_path, cert, key_path, key, force)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if not cert_path.is_file() or not key_path.is_file():
        raise DevCAError(f"no CA in {directory}: run `scripts/devca.py init --dir {directory}` first")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise DevCAError(f"cannot read the CA in {directory}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise DevCAError(f"{key_path} is not an ECDSA key made by this tool")
    if cert.public_key() != key.public_key():
        raise DevCAError(f"{cert_path} and {key_path} do not belong together")
    return cert, key


def parse_host(host: str) -> x509.GeneralName:
    """An IP address or a DNS name (a leading `*.` allowed) as a subject alternative name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    if not labels or len(host) > 253 or not all(DNS_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"--host {host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.lower())


def _issue(
    directory: Path,
    name: str,
    cn: str,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName],
    days: int,
    force: bool,
) -> Issued:
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    _refuse_existing([cert_path, key_path], force)
    ca_cert, ca_key = _load_ca(directory)
    key = _new_key()
    now = datetime.datetime.now(datetime.UTC)
    not_after = min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _write_pair(cert_path, cert, key_path, key, force)


def _check_name(name: str) -> None:
    if not NAME_RE.fullmatch(name) or name == "ca":
        raise ValueError(
            f"--name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not 'ca'); it names NAME.pem and NAME.key"
        )


def issue_server(
    directory: Path,
    name: str,
    hosts: Sequence[str],
    days: int = LEAF_DAYS,
    also_client: bool = False,
    cn: str | None = None,
    force: bool = False,
) -> Issued:
    _check_name(name)
    if not hosts:
        raise ValueError("a server certificate needs at least one --host")
    sans = [parse_host(h) for h in hosts]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if also_client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    return _issue(directory, name, cn or hosts[0], usages, sans, days, force)


def issue_client(
    directory: Path, name: str, cn: str | None = None, days: int = LEAF_DAYS, force: bool = False
) -> Issued:
    _check_name(name)
    return _issue(directory, name, cn or name, [ExtendedKeyUsageOID.CLIENT_AUTH], [], days, force)


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of days") from None
    if not 1 <= days <= 36500:
        raise argparse.ArgumentTypeError(f"{days} days: use 1 to 36500")
    return days


def _cn(value: str) -> str:
    if not value.strip() or len(value) > 64:
        raise argparse.ArgumentTypeError("a common name has 1 to 64 characters")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/devca.py", description="A development certificate authority.")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, required=True, help="folder of ca.pem/ca.key and the issued files")
    common.add_argument("--force", action="store_true", help="replace existing files")

    p = sub.add_parser("init", parents=[common], help="make ca.pem and ca.key")
    p.add_argument("--days", type=_days, default=CA_DAYS, help="validity (default %(default)s)")
    p.add_argument("--cn", type=_cn, default="dicomserver development CA", help="the CA's common name")

    p = sub.add_parser("server", parents=[common], help="make NAME.pem and NAME.key for a TLS server")
    p.add_argument("--name", required=True, help="file name stem")
    p.add_argument(
        "--host", action="append", default=[], help="DNS name or IP address the server is reached at; repeat"
    )
    p.add_argument("--cn", type=_cn, help="common name (default: the first --host)")
    p.add_argument("--days", type=_days, default=LEAF_DAYS, help="validity (default %(default)s)")
    p.add_argument("--also-client", action="store_true", help="also valid as a client certificate (gRPC mutual TLS)")

    p = sub.add_parser("client", parents=[common], help="make NAME.pem and NAME.key for a TLS client")
    p.add_argument("--name", required=True, help="file name stem")
    p.add_argument("--cn", type=_cn, help="common name (default: NAME)")
    p.add_argument("--days", type=_days, default=LEAF_DAYS, help="validity (default %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            issued = init_ca(args.dir, args.days, args.cn, args.force)
        elif args.command == "server":
            issued = issue_server(args.dir, args.name, args.host, args.days, args.also_client, args.cn, args.force)
        else:
            issued = issue_client(args.dir, args.name, args.cn, args.days, args.force)
    except ValueError as exc:
        parser.error(str(exc))  # exits 2
    except (DevCAError, OSError) as exc:
        print(f"devca: {exc}", file=sys.stderr)
        return 1
    print(issued.cert)
    print(issued.key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
