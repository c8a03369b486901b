"""common.tls.server_handshake, the piece an SCP runs on each connection's
thread: a silent peer is given up on, a real client gets its TLS socket with
the timeout the plain socket had, a plain client is refused."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from common import tls
from tests.tls.tls_support import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("handshake"))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        yield srv


class NextHandshake(threading.Thread):
    """Accepts one connection and hands it to server_handshake."""

    def __init__(self, srv: socket.socket, context: ssl.SSLContext, timeout: float | None = None) -> None:
        super().__init__()
        self.srv, self.context, self.timeout = srv, context, timeout
        self.result: ssl.SSLSocket | None | str = "not run"
        self.start()

    def run(self) -> None:
        sock, _ = self.srv.accept()
        # Blocking by default: only server_handshake's own timeout can then
        # end a silent handshake.
        sock.settimeout(self.timeout)
        self.result = tls.server_handshake(self.context, sock, 1.0)

    def outcome(self) -> ssl.SSLSocket | None | str:
        self.join(30)
        return self.result


def test_silent_peer_plain_peer_and_real_client(pki: Pki, listener: socket.socket) -> None:
    context = tls.server_context(pki.cert("server"), pki.key("server"))
    port = listener.getsockname()[1]

    silent = NextHandshake(listener, context)
    with socket.create_connection(("127.0.0.1", port)):
        assert silent.outcome() is None

    plain = NextHandshake(listener, context)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"\x01\x00\x00\x00\x00\xcd")  # the start of an A-ASSOCIATE-RQ
        assert plain.outcome() is None

    real = NextHandshake(listener, context, timeout=7.0)
    client = tls.client_context(pki.ca)
    with client.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="localhost") as conn:
        server_side = real.outcome()
        assert isinstance(server_side, ssl.SSLSocket)
        assert server_side.version() in ("TLSv1.2", "TLSv1.3")
        assert server_side.gettimeout() == 7.0
        server_side.sendall(b"ok")
        assert conn.recv(2) == b"ok"
        server_side.close()
