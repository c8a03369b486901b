"""A real AuthService gRPC server on a free loopback port, per settings."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from auth_svc.keystore import KeyStore
from auth_svc.policy import Policy
from auth_svc.service import AuthService
from auth_svc.settings import AuthSettings
from common.clients import AuthClient, channel
from common.errors import Unavailable
from common.gen.dicomserver.v1 import auth_service_pb2, auth_service_pb2_grpc
from common.grpc_server import build_server
from testbed.processes import free_port, stop_process
from tests.support import ROOT

SERVICE_NAME = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


@contextmanager
def serving(settings: AuthSettings, keys: KeyStore | None = None) -> Iterator[AuthClient]:
    service = AuthService(Policy(settings, keys))
    server, _health, port = build_server(
        lambda s: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(service, s), [SERVICE_NAME], "127.0.0.1:0"
    )
    ch = channel(f"127.0.0.1:{port}")
    try:
        yield AuthClient(ch)
    finally:
        ch.close()
        server.stop(None).wait()


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of an auth_svc process: none of ours inherited, these settings added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMSERVER_")}
    env.update({"DICOMSERVER_DATA_DIR": str(data_dir), "DICOMSERVER_LOG_LEVEL": "WARNING"})
    env.update({f"DICOMSERVER_{k.upper()}": v for k, v in settings.items()})
    return env


@contextmanager
def auth_process(data_dir: Path, **settings: str) -> Iterator[AuthClient]:
    """`python -m auth_svc` on a free loopback port, once it answers."""
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "auth_svc"],
        cwd=ROOT,
        env=service_env(data_dir, auth_addr=address, **settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ch = channel(address)
    client = AuthClient(ch)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client.describe_policy(timeout=2)
                break
            except Unavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    stop_process(proc)
                    raise RuntimeError(f"auth_svc did not start: {proc.stdout.read() if proc.stdout else ''}") from None
                time.sleep(0.1)
        yield client
    finally:
        ch.close()
        assert stop_process(proc) == 0
