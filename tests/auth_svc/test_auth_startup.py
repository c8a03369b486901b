"""auth_svc refuses to start with authentication off on a listener beyond
loopback, and starts on loopback (real processes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from auth_svc.settings import AuthSettings, exposure_problem
from testbed.processes import free_port
from tests.auth_svc.auth_support import auth_process, service_env
from tests.support import ROOT


def run_auth_svc(data_dir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """Runs `python -m auth_svc` expecting it to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "auth_svc"],
        cwd=ROOT,
        env=service_env(data_dir, **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("listen", ["0.0.0.0:{port}", "[::]:{port}", ":{port}", "example.org:{port}"])
def test_refuses_to_start_with_auth_off_beyond_loopback(tmp_path: Path, listen: str) -> None:
    address = listen.format(port=free_port())
    done = run_auth_svc(tmp_path, auth_enabled="false", grpc_listen=address)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"auth_svc: refusing to start: auth is off (DICOMSERVER_AUTH_ENABLED=false) but the gRPC listener "
        f"{address} is not loopback: configure authentication or bind to 127.0.0.1"
    ]


def test_starts_with_auth_off_on_loopback(tmp_path: Path) -> None:
    with auth_process(tmp_path, auth_enabled="false") as client:
        assert client.describe_policy().auth_enabled is False


@pytest.mark.parametrize(
    ("auth_enabled", "listen", "refused"),
    [
        (False, "127.0.0.1:1", False),
        (False, "127.9.8.7:1", False),
        (False, "[::1]:1", False),
        (False, "localhost:1", False),
        (False, "0.0.0.0:1", True),
        (False, "[::]:1", True),
        (False, "10.1.2.3:1", True),
        (False, "[::ffff:10.1.2.3]:1", True),
        (True, "0.0.0.0:1", False),
    ],
)
def test_which_listeners_count_as_loopback(auth_enabled: bool, listen: str, refused: bool) -> None:
    problem = exposure_problem(AuthSettings(auth_enabled=auth_enabled, grpc_listen=listen))
    assert (problem is not None) == refused
