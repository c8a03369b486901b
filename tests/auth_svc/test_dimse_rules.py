"""DIMSE peers (calling AE title + address) to tenants and scopes through a
real gRPC server: first matching rule wins; with auth on, a peer no rule
admits is refused; rules are checked when auth_svc starts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from auth_svc.settings import AuthSettings, DimseRule
from common.clients import AuthClient
from common.errors import PermissionDenied, Unauthenticated
from common.gen.dicomserver.v1 import auth_service_pb2 as pb
from tests.auth_svc.auth_support import service_env, serving
from tests.support import ROOT

RULES = [
    {"calling_ae_title": "CT1", "networks": ["10.1.0.0/16"], "tenant": "radiology", "scopes": ["read", "write"]},
    # CT1 again, wider: reached only when the first does not match.
    {"calling_ae_title": "CT1", "networks": ["10.0.0.0/8"], "tenant": "second-site", "scopes": ["read"]},
    {"calling_ae_title": "MR1", "networks": ["fd00:1::/32", "192.168.7.0/24"], "tenant": "mri"},
    {"calling_ae_title": "ANYWHERE", "tenant": "roaming", "scopes": ["write"]},
    {
        "calling_ae_title": "*",
        "networks": ["127.0.0.1/32", "::1/128"],
        "tenant": "local",
        "scopes": ["read", "write", "delete"],
    },
]
NO_RULE = "^no DIMSE rule admits this calling AE title from this address$"


def peer(ae: str, address: str) -> pb.Credential:
    return pb.Credential(
        dimse_peer=pb.DimsePeer(calling_ae_title=ae, called_ae_title="DICOMSERVER", peer_address=address)
    )


def rules(*extra: dict[str, Any]) -> list[DimseRule]:
    return [DimseRule(**r) for r in [*RULES, *extra]]


@pytest.fixture(scope="module")
def auth_on() -> Iterator[AuthClient]:
    with serving(AuthSettings(auth_enabled=True, dimse_rules=rules())) as client:
        yield client


@pytest.fixture(scope="module")
def auth_off() -> Iterator[AuthClient]:
    with serving(AuthSettings(auth_enabled=False, dimse_rules=rules(), ae_tenants={"OLD": "legacy"})) as client:
        yield client


@pytest.mark.parametrize(
    ("ae", "address", "tenant", "scopes"),
    [
        ("CT1", "10.1.2.3", "radiology", ["read", "write"]),
        ("CT1", "10.1.2.3:4104", "radiology", ["read", "write"]),  # a port, if the edge sends one
        ("CT1", "::ffff:10.1.2.3", "radiology", ["read", "write"]),  # IPv4-mapped
        ("CT1", "10.200.0.1", "second-site", ["read"]),  # first match wins; the second rule catches the rest
        ("MR1", "fd00:1::5", "mri", ["read", "write"]),
        ("MR1", "[fd00:1:ffff::1]:104", "mri", ["read", "write"]),
        ("MR1", "192.168.7.200", "mri", ["read", "write"]),
        ("ANYWHERE", "203.0.113.9", "roaming", ["write"]),
        ("ANYWHERE", "not an address", "roaming", ["write"]),  # no networks: any address
        ("CT1", "127.0.0.1", "local", ["read", "write", "delete"]),  # wildcard AE, after CT1's own rules
        ("STRANGER", "::1", "local", ["read", "write", "delete"]),
    ],
)
def test_first_matching_rule_gives_tenant_and_scopes(
    auth_on: AuthClient, ae: str, address: str, tenant: str, scopes: list[str]
) -> None:
    principal = auth_on.authenticate(pb.AuthenticateRequest(dimse_peer=peer(ae, address).dimse_peer))
    assert (principal.subject, list(principal.tenants), list(principal.scopes)) == (f"ae:{ae}", [tenant], scopes)
    answer = auth_on.check(peer(ae, address), pb.ACTION_WRITE if "write" in scopes else pb.ACTION_READ)
    assert answer.tenant == tenant


@pytest.mark.parametrize(
    ("ae", "address"),
    [
        ("CT1", "192.168.1.5"),  # right AE, wrong network
        ("MR1", "fd00:2::5"),  # outside the IPv6 network
        ("MR1", "10.1.2.3"),
        ("STRANGER", "10.1.2.3"),  # no rule for the AE, and the wildcard is loopback only
        ("STRANGER", "127.0.0.2"),
        ("STRANGER", "::2"),
        ("CT1", "garbage"),  # an unparseable address matches no network
        ("CT1", ""),
        ("ct1", "10.1.2.3"),  # AE titles are case-sensitive
        ("", "127.0.0.1"),
    ],
)
def test_auth_on_a_peer_no_rule_admits_is_refused(auth_on: AuthClient, ae: str, address: str) -> None:
    with pytest.raises(Unauthenticated, match=NO_RULE):
        auth_on.check(peer(ae, address), pb.ACTION_READ)
    with pytest.raises(Unauthenticated, match=NO_RULE):
        auth_on.authenticate(pb.AuthenticateRequest(dimse_peer=peer(ae, address).dimse_peer))


def test_a_rule_scopes_what_the_peer_may_do(auth_on: AuthClient) -> None:
    with pytest.raises(PermissionDenied, match="'write' scope"):
        auth_on.check(peer("CT1", "10.200.0.1"), pb.ACTION_WRITE)
    with pytest.raises(PermissionDenied, match="'read' scope"):
        auth_on.check(peer("ANYWHERE", "10.0.0.1"), pb.ACTION_READ)
    with pytest.raises(PermissionDenied, match="^no access to tenant$"):
        auth_on.check(peer("CT1", "10.1.2.3"), pb.ACTION_READ, "second-site")


def test_auth_off_rules_apply_and_other_peers_keep_the_old_behaviour(auth_off: AuthClient) -> None:
    assert auth_off.check(peer("CT1", "10.1.2.3"), pb.ACTION_READ).tenant == "radiology"
    with pytest.raises(PermissionDenied, match="'delete' scope"):
        auth_off.check(peer("CT1", "10.1.2.3"), pb.ACTION_DELETE)
    anyone = auth_off.check(peer("STRANGER", "10.9.9.9"), pb.ACTION_DELETE)
    assert (anyone.tenant, list(anyone.principal.scopes)) == ("default", ["read", "write", "delete", "admin"])
    assert auth_off.check(peer("OLD", "10.9.9.9"), pb.ACTION_WRITE).tenant == "legacy"


def test_the_older_settings_with_auth_on_admit_only_the_titles_they_name() -> None:
    settings = AuthSettings(auth_enabled=True, ae_allowlist=["A1", "A2"], ae_tenants={"A2": "ward", "A3": "x"})
    with serving(settings) as client:
        assert client.check(peer("A1", "10.0.0.1"), pb.ACTION_WRITE).tenant == "default"
        assert client.check(peer("A2", "10.0.0.1"), pb.ACTION_WRITE).tenant == "ward"
        with pytest.raises(PermissionDenied, match="'delete' scope"):
            client.check(peer("A2", "10.0.0.1"), pb.ACTION_DELETE)
        for refused in ("A3", "OTHER"):  # A3 has a tenant but the allowlist leaves it out
            with pytest.raises(Unauthenticated, match=NO_RULE):
                client.check(peer(refused, "10.0.0.1"), pb.ACTION_READ)
    with serving(AuthSettings(auth_enabled=True)) as client:  # nothing configured: nobody
        with pytest.raises(Unauthenticated, match=NO_RULE):
            client.check(peer("ANY", "127.0.0.1"), pb.ACTION_READ)


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"calling_ae_title": "CT1", "networks": ["10.0.0.1/8"], "tenant": "a"}, "host bits set"),
        ({"calling_ae_title": "CT1", "networks": ["10.0.0.0/33"], "tenant": "a"}, "CIDR"),
        ({"calling_ae_title": "CT1", "networks": ["ten.0.0.0/8"], "tenant": "a"}, "CIDR"),
        ({"calling_ae_title": "CT1", "tenant": "Radiology"}, "tenant must be"),
        ({"calling_ae_title": "CT1", "tenant": "a", "scopes": ["root"]}, "scopes must be"),
        ({"calling_ae_title": "CT1", "tenant": "a", "scopes": []}, "scopes must be"),
        ({"calling_ae_title": "", "tenant": "a"}, "calling_ae_title"),
        ({"calling_ae_title": "A" * 17, "tenant": "a"}, "calling_ae_title"),
        ({"calling_ae_title": "CT1", "tenant": "a", "network": ["10.0.0.0/8"]}, "Extra inputs"),
        ({"tenant": "a"}, "calling_ae_title"),
    ],
)
def test_bad_rules_are_refused(rule: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        AuthSettings(dimse_rules=[rule])


def test_auth_svc_refuses_to_start_with_a_bad_rule(tmp_path: Path) -> None:
    bad = json.dumps([RULES[0], {"calling_ae_title": "CT2", "networks": ["10.0.0.0/33"], "tenant": "a"}])
    done = subprocess.run(
        [sys.executable, "-m", "auth_svc"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=service_env(tmp_path, dimse_rules=bad),
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("auth_svc: refusing to start: invalid settings: DICOMSERVER_DIMSE_RULES[1].networks: ")
    assert "'10.0.0.0/33' is not a network in CIDR notation" in line
    assert not (tmp_path / "auth.sqlite3").exists()
