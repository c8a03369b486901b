"""Authentication may be off only on loopback: the real edge processes,
bound to 0.0.0.0, refuse to start while a real auth_svc says authentication
is off, and start when it is on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from common.clients import AuthClient, channel
from common.errors import Unavailable
from testbed.processes import free_port, stop_process
from tests.support import ROOT


def env_for(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMSERVER_")}
    env.update(
        {"DICOMSERVER_DATA_DIR": str(data_dir), "DICOMSERVER_LOG_LEVEL": "INFO", "DICOMSERVER_SHUTDOWN_GRACE": "0.5"}
    )
    env.update({f"DICOMSERVER_{k.upper()}": v for k, v in settings.items()})
    return env


@contextmanager
def auth_svc(data_dir: Path, enabled: bool) -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auth_svc"],
        cwd=ROOT,
        env=env_for(data_dir, auth_addr=address, auth_enabled=str(enabled).lower()),
    )
    try:
        with channel(address) as ch:
            deadline = time.monotonic() + 60
            while True:
                try:
                    AuthClient(ch).describe_policy(timeout=2)
                    break
                except Unavailable:
                    assert proc.poll() is None and time.monotonic() < deadline, "auth_svc did not start"
                    time.sleep(0.1)
        yield address
    finally:
        stop_process(proc)


EDGES = {
    "dicomweb_gateway": lambda port: {"http_host": "0.0.0.0", "http_port": str(port)},
    "ingest_svc": lambda port: {
        "dimse_host": "0.0.0.0",
        "dimse_port": str(port),
        "ingest_addr": f"127.0.0.1:{free_port()}",
    },
}


@pytest.mark.parametrize("edge", EDGES)
def test_an_edge_on_a_network_address_refuses_to_start_with_auth_off(edge: str, tmp_path: Path) -> None:
    with auth_svc(tmp_path, enabled=False) as auth:
        proc = subprocess.run(
            [sys.executable, "-m", edge],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=env_for(tmp_path, auth_addr=auth, **EDGES[edge](free_port())),
        )
    assert proc.returncode != 0
    assert "authentication is off" in proc.stderr and "0.0.0.0 is not loopback" in proc.stderr, proc.stderr


@pytest.mark.parametrize("edge", EDGES)
def test_an_edge_on_a_network_address_starts_with_auth_on(edge: str, tmp_path: Path) -> None:
    port = free_port()
    with auth_svc(tmp_path, enabled=True) as auth:
        proc = subprocess.Popen(
            [sys.executable, "-m", edge],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(tmp_path, auth_addr=auth, **EDGES[edge](port)),
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the edge never listened"
                    time.sleep(0.2)
            if edge == "dicomweb_gateway":
                # Listening, and closed to callers without credentials.
                assert httpx.get(f"http://127.0.0.1:{port}/dicomweb/studies").status_code == 401
        finally:
            stop_process(proc)
