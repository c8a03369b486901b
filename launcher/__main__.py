"""python -m launcher [--data-dir D] [--http-port P] [--dimse-port P] [--ae-title T]

Starts storage, metadata, auth, ingest (DIMSE) and the DICOMweb gateway as
child processes bound to 127.0.0.1, waits until each answers, prints where
the edges listen, and stops them all on Ctrl-C or SIGTERM (edges first)."""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common import tls
from common.settings import CommonSettings

SERVICES = ["storage_svc", "metadata_svc", "auth_svc", "ingest_svc", "dicomweb_gateway", "eventbus"]
EDGES = ["dicomweb_gateway", "ingest_svc", "eventbus"]
CORE = ["auth_svc", "metadata_svc", "storage_svc"]
GRPC_ADDR_SETTING = {
    "storage_svc": "storage_addr",
    "metadata_svc": "metadata_addr",
    "auth_svc": "auth_addr",
    "ingest_svc": "ingest_addr",
}
# The event bus serves status and audit statistics (EventBusService) on the
# port after those four.
EVENTBUS_ADDR_SETTING = "eventbus_addr"
HOST = "127.0.0.1"


class LauncherSettings(CommonSettings):
    http_port: int = 8080
    dimse_port: int = 11112
    ae_title: str = "DICOMSERVER"
    base_path: str = "/dicomweb"
    # First of four consecutive ports for the internal gRPC services; 0 picks free ports.
    grpc_base_port: int = 50051
    startup_timeout: float = 60.0
    # The edges' TLS settings (same variables as ingest_svc's and the
    # gateway's): the readiness probes speak TLS and the printed URL says https.
    tls_cert_file: Path | None = None
    http_tls_cert_file: Path | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Children get SIGTERM if the launcher dies without cleaning up.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_grpc(addr: str, deadline: float, credentials: grpc.ChannelCredentials | None = None) -> None:
    with grpc.insecure_channel(addr) if credentials is None else grpc.secure_channel(addr, credentials) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no healthy gRPC service on {addr}")
            time.sleep(0.1)


def _tls_alert_from(port: int, context: ssl.SSLContext) -> bool:
    """Whether a TLS server on `port` answers our certificate-less handshake
    with an alert (it wants a client certificate): then it is up."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as raw, context.wrap_socket(raw) as conn:
            conn.recv(1)  # TLS 1.3 servers send their verdict on the client's certificate after the handshake
    except ssl.SSLError:
        return True
    except OSError:
        return False
    return False


def dimse_answers(port: int, ae_title: str, context: ssl.SSLContext | None) -> bool:
    """A C-ECHO (a bare TCP probe would hold an SCP thread until its ACSE
    timeout). An A-ASSOCIATE-RJ counts as up: an AE title or auth rule said no."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # generated at import time

    ae = AE(ae_title="LAUNCHER")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 5
    assoc = ae.associate(HOST, port, ae_title=ae_title, tls_args=None if context is None else (context, HOST))
    if assoc.is_rejected:
        return True
    if assoc.is_established:
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status and status.Status == 0)
    return context is not None and _tls_alert_from(port, context)


def wait_dimse(port: int, ae_title: str, deadline: float, context: ssl.SSLContext | None = None) -> None:
    """Waits for a DIMSE answer; `context` when the SCP speaks DICOM TLS."""
    while not dimse_answers(port, ae_title, context):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no DIMSE C-ECHO answer on {HOST}:{port}")
        time.sleep(0.2)


def wait_tcp(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {HOST}:{port}") from None
            time.sleep(0.1)


class Supervisor:
    def __init__(self, env: dict[str, str], grace: float) -> None:
        self.env = env
        self.grace = grace
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.stopping = threading.Event()

    def start(self, name: str) -> None:
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", name], env=self.env, start_new_session=True, preexec_fn=_die_with_parent
        )

    def first_exit(self) -> tuple[str, int] | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name, proc.returncode
        return None

    def stop_all(self) -> None:
        """The edges and the event bus first, together, so that nothing new
        comes in while the core services still answer; then the core."""
        self.stopping.set()
        for wave in (EDGES, CORE):
            procs = [self.procs[name] for name in wave if name in self.procs]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace + 5
            for proc in procs:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def main(argv: list[str] | None = None) -> int:
    base = LauncherSettings()
    parser = argparse.ArgumentParser(prog="python -m launcher", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "--data-dir", type=Path, default=base.data_dir, help="index, objects and event log (default %(default)s)"
    )
    parser.add_argument(
        "--http-port", type=int, default=base.http_port, help="DICOMweb HTTP port (default %(default)s)"
    )
    parser.add_argument("--dimse-port", type=int, default=base.dimse_port, help="DIMSE port (default %(default)s)")
    parser.add_argument("--ae-title", default=base.ae_title, help="called AE title (default %(default)s)")
    parser.add_argument(
        "--grpc-base-port", type=int, default=base.grpc_base_port, help="first internal gRPC port, 0 for free ports"
    )
    args = parser.parse_args(argv)

    data_dir = args.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        DICOMSERVER_DATA_DIR=str(data_dir),
        DICOMSERVER_HTTP_HOST=HOST,
        DICOMSERVER_HTTP_PORT=str(args.http_port),
        DICOMSERVER_DIMSE_HOST=HOST,
        DICOMSERVER_DIMSE_PORT=str(args.dimse_port),
        DICOMSERVER_AE_TITLE=args.ae_title,
    )
    for i, setting in enumerate([*GRPC_ADDR_SETTING.values(), EVENTBUS_ADDR_SETTING]):
        port = args.grpc_base_port + i if args.grpc_base_port else free_port()
        env[f"DICOMSERVER_{setting.upper()}"] = f"{HOST}:{port}"

    try:
        grpc_credentials = tls.grpc_channel_credentials(base)
    except tls.TLSConfigError as exc:
        print(f"startup failed: {exc}", file=sys.stderr)
        return 2
    # The readiness probe carries no data: it does not check the SCP's certificate.
    dimse_probe = tls.client_context(verify=False) if base.tls_cert_file is not None else None
    scheme = "https" if base.http_tls_cert_file is not None else "http"

    sup = Supervisor(env, base.shutdown_grace)
    signal.signal(signal.SIGTERM, lambda *_: sup.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: sup.stopping.set())
    deadline = time.monotonic() + base.startup_timeout
    try:
        # Every service at once: callers connect lazily, and the event bus
        # waits for metadata itself before its consumers start.
        for name in SERVICES:
            sup.start(name)
        for setting in [*GRPC_ADDR_SETTING.values(), EVENTBUS_ADDR_SETTING]:
            wait_grpc(env[f"DICOMSERVER_{setting.upper()}"], deadline, grpc_credentials)
        wait_dimse(args.dimse_port, args.ae_title, deadline, dimse_probe)
        wait_tcp(args.http_port, deadline)
    except TimeoutError as exc:
        print(f"startup failed: {exc}", file=sys.stderr)
        sup.stop_all()
        return 1
    print(f"console   {scheme}://{HOST}:{args.http_port}/", flush=True)
    print(f"DICOMweb  {scheme}://{HOST}:{args.http_port}{base.base_path}", flush=True)
    print(f"DIMSE     {args.ae_title}@{HOST}:{args.dimse_port}{' (TLS)' if dimse_probe else ''}", flush=True)
    print(f"data      {data_dir}", flush=True)
    for svc, setting in GRPC_ADDR_SETTING.items():
        print(f"grpc      {svc.removesuffix('_svc'):<9} {env[f'DICOMSERVER_{setting.upper()}']}", flush=True)
    print(f"grpc      {'eventbus':<9} {env[f'DICOMSERVER_{EVENTBUS_ADDR_SETTING.upper()}']}", flush=True)
    print("ready; Ctrl-C stops", flush=True)
    code = 0
    while not sup.stopping.wait(0.5):
        exited = sup.first_exit()
        if exited is not None:
            print(f"{exited[0]} exited with status {exited[1]}; stopping", file=sys.stderr)
            code = 1
            break
    sup.stop_all()
    print("stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
