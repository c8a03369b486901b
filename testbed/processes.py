"""Processes for the test suite and the benchmarks: free ports, stopping
a child, and the environment dcmtk's tools run in."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any


def dcmtk_env() -> dict[str, str]:
    """The environment to run dcmtk's tools in: TCP_NODELAY=1 (without it
    every C-STORE waits ~40 ms for a delayed ACK) and a PATH without this
    virtualenv, whose pynetdicom console scripts have dcmtk's names
    (findscu, movescu, storescp, ...) but other options."""
    venv_bin = os.path.abspath(os.path.dirname(sys.executable))
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and os.path.abspath(p) != venv_bin]
    return {**os.environ, "TCP_NODELAY": "1", "PATH": os.pathsep.join(path)}


def stop_process(proc: subprocess.Popen[Any], timeout: float = 60) -> int:
    """SIGTERM, then SIGKILL if it has not ended within `timeout`; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
    """Returns once something listens on 127.0.0.1:`port`; raises if `proc` exits first or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{what}: nothing listens on 127.0.0.1:{port}")
