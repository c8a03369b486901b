"""TLS in one place: server contexts for the edges (DICOM TLS, HTTPS), client
contexts, and gRPC credentials for mutual TLS between the services.

Every context refuses anything older than TLS 1.2. A partly configured
listener (a CA without a certificate, a certificate without its key) is an
error, never a quiet fallback to plain TCP."""

from __future__ import annotations

import logging
import socket
import ssl
from pathlib import Path

import grpc

from common.settings import CommonSettings

log = logging.getLogger(__name__)

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


class TLSConfigError(ValueError):
    """TLS settings that cannot work together; the message names them."""


def server_context(cert_file: Path | str, key_file: Path | str, ca_file: Path | str | None = None) -> ssl.SSLContext:
    """A server context; with `ca_file`, clients must present a certificate it signed."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MINIMUM_VERSION
    ctx.load_cert_chain(cert_file, key_file)
    if ca_file is not None:
        ctx.load_verify_locations(cafile=ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def optional_server_context(
    cert_file: Path | str | None, key_file: Path | str | None, ca_file: Path | str | None, prefix: str
) -> ssl.SSLContext | None:
    """None when none of the three is set; a server context when certificate
    and key are; otherwise TLSConfigError naming `prefix`_CERT_FILE etc."""
    if cert_file is None and key_file is None and ca_file is None:
        return None
    missing = [name for name, value in (("CERT_FILE", cert_file), ("KEY_FILE", key_file)) if value is None]
    if missing:
        raise TLSConfigError(
            f"TLS is half configured: set {' and '.join(prefix + '_' + m for m in missing)}"
            f" too, or unset {prefix}_CERT_FILE, {prefix}_KEY_FILE and {prefix}_CA_FILE"
        )
    assert cert_file is not None and key_file is not None
    return server_context(cert_file, key_file, ca_file)


def client_context(
    ca_file: Path | str | None = None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    """A client context trusting `ca_file` (the system's CAs when None),
    presenting `cert_file` when given. verify=False skips checking the
    server: for readiness probes only, never for data."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MINIMUM_VERSION
    if verify:
        if ca_file is not None:
            ctx.load_verify_locations(cafile=ca_file)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert_file is not None:
        ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _grpc_files(settings: CommonSettings) -> tuple[bytes, bytes, bytes] | None:
    files = (settings.grpc_tls_cert_file, settings.grpc_tls_key_file, settings.grpc_tls_ca_file)
    if all(f is None for f in files):
        return None
    names = ("DICOMSERVER_GRPC_TLS_CERT_FILE", "DICOMSERVER_GRPC_TLS_KEY_FILE", "DICOMSERVER_GRPC_TLS_CA_FILE")
    missing = [name for name, f in zip(names, files, strict=False) if f is None]
    if missing:
        raise TLSConfigError(f"gRPC mutual TLS needs all three of {', '.join(names)}; missing {', '.join(missing)}")
    out = []
    for name, f in zip(names, files, strict=False):
        assert f is not None
        try:
            out.append(Path(f).read_bytes())
        except OSError as exc:
            raise TLSConfigError(f"{name}: cannot read {f}: {exc.strerror}") from None
    cert, key, ca = out
    return cert, key, ca


def grpc_server_credentials(settings: CommonSettings) -> grpc.ServerCredentials | None:
    """Mutual TLS for a gRPC server when the grpc_tls_* settings are set:
    callers must present a certificate signed by grpc_tls_ca_file."""
    files = _grpc_files(settings)
    if files is None:
        return None
    cert, key, ca = files
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def grpc_channel_credentials(settings: CommonSettings) -> grpc.ChannelCredentials | None:
    """The client half: trust grpc_tls_ca_file, present our certificate."""
    files = _grpc_files(settings)
    if files is None:
        return None
    cert, key, ca = files
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def server_handshake(context: ssl.SSLContext, sock: socket.socket, timeout: float) -> ssl.SSLSocket | None:
    """The server side of a handshake on an accepted socket, within `timeout`
    seconds; None (and the socket closed) when the peer does not complete it.
    The TLS socket keeps the timeout `sock` had before.

    Run it on the connection's own thread, not in the accept loop: there a
    client that connects and sends nothing would stall every other client."""
    peer = _peer(sock)
    previous = sock.gettimeout()
    sock.settimeout(timeout)
    try:
        conn = context.wrap_socket(sock, server_side=True)
    except OSError as exc:
        log.info("TLS handshake with %s failed: %s", peer, exc)
        sock.close()
        return None
    conn.settimeout(previous)
    return conn


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "a peer that left"
    return f"{host}:{port}"
