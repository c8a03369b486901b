"""The launcher's DIMSE readiness probe against real pynetdicom SCPs: a C-ECHO
over plain TCP and TLS, an A-ASSOCIATE-RJ, and a TLS SCP that wants a client
certificate the launcher does not have all count as up; nothing listening
does not."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from common import tls
from launcher.__main__ import dimse_answers
from testbed.processes import free_port
from tests.tls.tls_support import Pki, make_pki

StartScp = Callable[..., int]
PROBE = tls.client_context(verify=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("probes"))


@pytest.fixture
def scp() -> Iterator[StartScp]:
    servers: list[Any] = []

    def start(calling: Sequence[str] = (), ssl_context: ssl.SSLContext | None = None) -> int:
        ae = AE(ae_title="SCP")
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(calling)
        port = free_port()
        servers.append(ae.start_server(("127.0.0.1", port), block=False, ssl_context=ssl_context))
        return port

    yield start
    for server in servers:
        server.shutdown()


def test_plain_echo(scp: StartScp) -> None:
    assert dimse_answers(scp(), "SCP", None)


def test_an_association_rejected_by_a_rule_is_up(scp: StartScp) -> None:
    assert dimse_answers(scp(calling=["MODALITY"]), "SCP", None)


def test_tls_echo(scp: StartScp, pki: Pki) -> None:
    port = scp(ssl_context=tls.server_context(pki.cert("server"), pki.key("server")))
    assert dimse_answers(port, "SCP", PROBE)
    assert not dimse_answers(port, "SCP", None)  # plain DIMSE gets no answer there


def test_tls_that_wants_a_client_certificate_is_up(scp: StartScp, pki: Pki) -> None:
    port = scp(ssl_context=tls.server_context(pki.cert("server"), pki.key("server"), pki.ca))
    assert dimse_answers(port, "SCP", PROBE)


def test_nothing_listening() -> None:
    port = free_port()
    assert not dimse_answers(port, "SCP", None)
    assert not dimse_answers(port, "SCP", PROBE)
