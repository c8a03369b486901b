"""The Kubernetes manifests: every overlay renders and validates against the
Kubernetes schemas; every variable they set is a real setting of the service
it goes to; every port and probe they name is what the service serves."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import ROOT, free_port

from auth_svc.settings import AuthSettings
from common.settings import CommonSettings
from dicomweb_gateway.settings import GatewaySettings
from eventbus.settings import EventbusSettings
from ingest_svc.settings import IngestSettings
from metadata_svc.settings import MetadataSettings
from storage_svc.settings import StorageSettings

OVERLAYS = ["dev", "prod"]
KUBERNETES_VERSION = "1.32.0"
SETTINGS: dict[str, type[CommonSettings]] = {
    "storage_svc": StorageSettings,
    "metadata_svc": MetadataSettings,
    "metadata_svc.migrate": MetadataSettings,
    "auth_svc": AuthSettings,
    "ingest_svc": IngestSettings,
    "dicomweb_gateway": GatewaySettings,
    "eventbus": EventbusSettings,
}


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [str(ROOT / "scripts" / "kustomize"), str(ROOT / "k8s" / "overlays" / overlay)],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def workloads(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, container) for every container of every Deployment and Job."""
    return [
        (doc, c)
        for doc in docs
        if doc["kind"] in {"Deployment", "Job"}
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]


def container_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str | None]:
    """Variables a container gets: its ConfigMaps, then its own env (secrets as None)."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_overlays_render_and_validate(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    counts = Counter(doc["kind"] for doc in docs)
    print(f"{overlay}: {len(docs)} objects {dict(sorted(counts.items()))}")
    for kind in ("Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                 "NetworkPolicy", "Job"):
        assert counts[kind] >= 1, kind
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_workloads_are_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for doc, container in workloads(docs):
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        sec = container["securityContext"]
        assert sec["readOnlyRootFilesystem"] is True
        assert sec["allowPrivilegeEscalation"] is False
        assert sec["capabilities"]["drop"] == ["ALL"]
        assert {"requests", "limits"} <= set(container["resources"])
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{doc['metadata']['name']}: writable /tmp"


def test_every_variable_is_a_setting_of_its_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    for _doc, container in workloads(docs):
        module = container["command"][2]
        fields = set(SETTINGS[module].model_fields)
        for name in container_env(docs, container):
            assert name.startswith("DICOMSERVER_"), name
            assert name.removeprefix("DICOMSERVER_").lower() in fields, f"{module} has no setting {name}"


def test_the_edges_reach_the_objects_storage_grants(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The edges write and read object bytes themselves, and routing in the
    event bus reads them: on the filesystem backend they mount the very
    volume storage keeps its objects folder on, at the same path (grants
    name absolute paths); on S3 they need none."""
    overlay, docs = rendered
    pods = {doc["metadata"]["name"]: (doc, c) for doc, c in workloads(docs) if doc["kind"] == "Deployment"}
    storage_doc, storage = pods["storage"]
    env = container_env(docs, storage)
    if env.get("DICOMSERVER_STORAGE_BACKEND", "filesystem") == "s3":
        return
    folder = env["DICOMSERVER_STORAGE_DIR"]

    def volume_at(doc: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
        (mount,) = [m for m in container.get("volumeMounts", []) if m["mountPath"] == folder]
        (volume,) = [v for v in doc["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        return volume

    claim = volume_at(storage_doc, storage).get("persistentVolumeClaim")
    assert claim, f"{overlay}: storage keeps its objects on a volume no other pod can share"
    for edge in ("gateway", "ingest", "eventbus"):
        assert volume_at(*pods[edge]).get("persistentVolumeClaim") == claim, f"{overlay}: {edge}"
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == claim["claimName"]]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_authentication_is_on_where_listeners_face_the_network(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """The edges refuse to serve 0.0.0.0 with authentication off, so every
    overlay must turn it on in auth_svc."""
    _, docs = rendered
    (auth,) = [c for _, c in workloads(docs) if c["command"][2] == "auth_svc"]
    env = container_env(docs, auth)
    assert env.get("DICOMSERVER_AUTH_ENABLED") == "true"
    assert env.get("DICOMSERVER_GRPC_LISTEN", "").startswith("0.0.0.0")


def _port_map(container: dict[str, Any]) -> dict[int, int]:
    return {p["containerPort"]: free_port() for p in container["ports"]}


def _local_env(env: dict[str, str | None], ports: dict[int, int], data_dir: Path) -> dict[str, str]:
    """The manifest's variables on this machine: loopback, free ports, a temp folder."""
    out = {}
    for name, value in env.items():
        if value is None:
            continue
        value = value.replace("0.0.0.0", "127.0.0.1")
        for theirs, ours in ports.items():
            value = re.sub(rf"(^|:){theirs}$", rf"\g<1>{ours}", value)
        out[name] = value
    out["DICOMSERVER_DATA_DIR"] = str(data_dir)
    return out


def _grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING


def _wait(check: Any, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return False


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


DEPLOYMENTS = [d["metadata"]["name"] for d in render("dev") if d["kind"] == "Deployment"]


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_ports_and_probes_are_what_the_service_serves(name: str, tmp_path: Path) -> None:
    docs = render("dev")
    (doc,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    ports = _port_map(container)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {**os.environ, **_local_env(container_env(docs, container), ports, tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", container["command"][2]], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe_name not in container:
                assert probe_name == "readinessProbe" and "grpc" not in named, f"{name}: {probe_name}"
                continue
            probe = container[probe_name]
            if "grpc" in probe:
                assert probe["grpc"]["port"] == named["grpc"]
                assert _wait(lambda: _grpc_serving(ports[named["grpc"]])), f"{name}: no gRPC health"
            else:
                get = probe["httpGet"]
                port = ports[named[get["port"]]]
                assert _wait(lambda port=port: _listening(port)), f"{name}: nothing on {get['port']}"
                status = httpx.get(f"http://127.0.0.1:{port}{get['path']}").status_code
                # Readiness may say "not yet" (dependencies down), but the path exists.
                assert status == 200 or (probe_name == "readinessProbe" and status == 503), (get["path"], status)
        metrics = ports[named["metrics"]]
        assert _wait(lambda: _listening(metrics)), f"{name}: no metrics endpoint"
        assert "dicomserver_" in httpx.get(f"http://127.0.0.1:{metrics}/metrics").text
        if "dimse" in named:
            assert _wait(lambda: _listening(ports[named["dimse"]])), f"{name}: no DIMSE listener"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    # uvicorn re-raises SIGTERM after its graceful shutdown, so the gateway's
    # clean stop reads as -SIGTERM; the gRPC services exit 0.
    assert proc.returncode in (0, -signal.SIGTERM), err.decode()[-2000:]
