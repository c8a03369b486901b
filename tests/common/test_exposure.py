"""Which listeners count as loopback (auth may be off only there)."""

from __future__ import annotations

import pytest

from common.exposure import exposed, host_of, is_loopback


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("pacs.example.org", False),
        ("localhost.example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize(
    "address, host",
    [
        ("127.0.0.1:50051", "127.0.0.1"),
        ("[::1]:50051", "::1"),
        ("0.0.0.0", "0.0.0.0"),
        ("::1", "::1"),
        ("[::]:80", "::"),
    ],
)
def test_host_of(address: str, host: str) -> None:
    assert host_of(address) == host


def test_exposed_names_only_network_listeners() -> None:
    assert exposed({"HTTP": "127.0.0.1", "DIMSE": "0.0.0.0", "gRPC": "[::1]:5"}) == {"DIMSE": "0.0.0.0"}
