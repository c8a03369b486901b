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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from auth_svc.settings import AuthSettings
from common.settings import CommonSettings
from dicomweb_gateway.settings import GatewaySettings
from eventbus.settings import EventbusSettings
from ingest_svc.settings import IngestSettings
from metadata_svc.settings import MetadataSettings
from storage_svc.settings import StorageSettings
from testbed.processes import free_port
from testbed.seaweed import ACCESS_KEY as SEAWEED_ACCESS_KEY
from testbed.seaweed import SECRET_KEY as SEAWEED_SECRET_KEY
from testbed.seaweed import SeaweedS3
from testbed.servers import new_database, shared
from tests.support import ROOT

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
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
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
    for kind in (
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
    ):
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


@pytest.fixture(scope="module")
def prod_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The servers the prod overlay names (its example.org hosts and its
    secrets), as real local ones: PostgreSQL, Redis, Kafka and an S3 store."""
    with shared("postgres") as pg, shared("redis") as redis, shared("kafka") as kafka:
        s3 = SeaweedS3(tmp_path_factory.mktemp("prod-s3"))
        s3.start()
        try:
            settings = {
                "DICOMSERVER_DATABASE_URL": new_database(pg, "k8s_metadata"),
                "DICOMSERVER_AUTH_DATABASE_URL": new_database(pg, "k8s_auth"),
                "DICOMSERVER_EVENTBUS_DATABASE_URL": new_database(pg, "k8s_eventbus"),
                "DICOMSERVER_REDIS_URL": redis.url,
                "DICOMSERVER_KAFKA_BOOTSTRAP": kafka.bootstrap,
                "DICOMSERVER_KAFKA_REPLICATION": "1",  # one broker here
                "DICOMSERVER_S3_ENDPOINT_URL": s3.endpoint,
                "DICOMSERVER_S3_ACCESS_KEY_ID": SEAWEED_ACCESS_KEY,
                "DICOMSERVER_S3_SECRET_ACCESS_KEY": SEAWEED_SECRET_KEY,
            }
            # As deployed: the migration Job runs before metadata starts.
            (job,) = [d for d in render("prod") if d["kind"] == "Job"]
            (container,) = job["spec"]["template"]["spec"]["containers"]
            subprocess.run(
                [sys.executable, *container["command"][1:]],
                cwd=ROOT,
                check=True,
                timeout=300,
                env={**os.environ, "DICOMSERVER_DATABASE_URL": settings["DICOMSERVER_DATABASE_URL"]},
            )
            yield settings
        finally:
            s3.stop()


def _port_map(container: dict[str, Any]) -> dict[int, int]:
    return {p["containerPort"]: free_port() for p in container["ports"]}


def _local_env(
    env: dict[str, str | None], ports: dict[int, int], data_dir: Path, backends: dict[str, str] | None = None
) -> dict[str, str]:
    """The manifest's variables on this machine: loopback, free ports, a temp
    folder, and `backends` for the servers and secrets it names."""
    out = {}
    for name, value in env.items():
        if backends and name in backends:
            out[name] = backends[name]
            continue
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


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector (matchLabels, matchExpressions In/NotIn/Exists) on labels."""
    if not all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, op = labels.get(e["key"]), e["operator"]
        if (
            (op == "In" and value not in e["values"])
            or (op == "NotIn" and value in e["values"])
            or (op == "Exists" and value is None)
            or (op == "DoesNotExist" and value is not None)
        ):
            return False
    return True


def _pods(docs: list[dict[str, Any]]) -> dict[str, tuple[dict[str, str], dict[int, str]]]:
    """Deployment name -> (its pods' labels, {container port: port name})."""
    out = {}
    for d in docs:
        if d["kind"] == "Deployment":
            template = d["spec"]["template"]
            (c,) = template["spec"]["containers"]
            out[d["metadata"]["name"]] = (
                template["metadata"]["labels"],
                {p["containerPort"]: p["name"] for p in c.get("ports", [])},
            )
    return out


def test_services_select_one_deployment_and_target_its_ports(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pods = _pods(docs)
    for d in docs:
        if d["kind"] == "Deployment":
            assert _selects(d["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"]), d["metadata"]["name"]
    for svc in (d for d in docs if d["kind"] == "Service"):
        name = svc["metadata"]["name"]
        chosen = [
            dep for dep, (labels, _) in pods.items() if _selects({"matchLabels": svc["spec"]["selector"]}, labels)
        ]
        assert len(chosen) == 1, f"Service {name} selects {chosen}"
        ports = pods[chosen[0]][1]
        for p in svc["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            assert target in (ports.values() if isinstance(target, str) else ports), (
                f"Service {name} targets {target!r}; {chosen[0]} has {ports}"
            )


def _service_target(docs: list[dict[str, Any]], host: str, port: int) -> tuple[str, int] | None:
    """(deployment, container port) behind a Service address, or None."""
    pods = _pods(docs)
    for svc in (d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == host):
        (dep,) = [n for n, (labels, _) in pods.items() if _selects({"matchLabels": svc["spec"]["selector"]}, labels)]
        for p in svc["spec"]["ports"]:
            if p["port"] == port:
                target = p.get("targetPort", port)
                named = {v: k for k, v in pods[dep][1].items()}
                return dep, named[target] if isinstance(target, str) else target
    return None


def _allowed(docs: list[dict[str, Any]], source: dict[str, str] | None, target: str, port: int) -> bool:
    """Whether some NetworkPolicy lets pods labelled `source` (None: another
    namespace's monitoring) reach `port` on `target`'s pods."""
    labels, names = _pods(docs)[target]
    for np_ in (d for d in docs if d["kind"] == "NetworkPolicy"):
        if not _selects(np_["spec"]["podSelector"], labels):
            continue
        for rule in np_["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if ports and port not in ports and names.get(port) not in ports:
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if "namespaceSelector" in peer:
                    if source is None:
                        return True
                elif source is not None and _selects(peer.get("podSelector", {}), source):
                    return True
    return False


def _callees(package: str) -> set[str]:
    """The services a package's code calls: the *_addr settings it reads,
    other than its own."""
    own = {
        "storage_svc": "storage",
        "metadata_svc": "metadata",
        "auth_svc": "auth",
        "ingest_svc": "ingest",
        "eventbus": "eventbus",
    }.get(package)
    read = {
        m.group(1)
        for f in (ROOT / package).rglob("*.py")
        for m in re.finditer(r"\.(storage|metadata|auth|ingest|eventbus)_addr\b", f.read_text())
    }
    return read - {own}


def test_network_policies_open_every_listener_to_its_callers_only(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Each service's address in another's settings is reachable through the
    policies; metrics ports from monitoring; nothing a policy names is a
    port no container listens on."""
    _, docs = rendered
    pods = _pods(docs)
    for np_ in (d for d in docs if d["kind"] == "NetworkPolicy" and d["spec"]["podSelector"]):
        selected = [ports for labels, ports in pods.values() if _selects(np_["spec"]["podSelector"], labels)]
        assert selected, f"policy {np_['metadata']['name']} selects no pods"
        for rule in np_["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert any(p["port"] in ports or p["port"] in ports.values() for ports in selected), (
                    f"policy {np_['metadata']['name']} opens {p['port']}, where nothing listens"
                )
    calls = 0
    for doc, container in workloads(docs):
        if doc["kind"] != "Deployment":
            continue
        source = doc["spec"]["template"]["metadata"]["labels"]
        env = container_env(docs, container)
        for callee in _callees(container["command"][2]):
            value = env.get(f"DICOMSERVER_{callee.upper()}_ADDR") or ""
            m = re.fullmatch(r"([a-z][a-z0-9-]*):(\d+)", value)
            assert m, f"{doc['metadata']['name']} calls {callee}, but its address is {value!r}"
            target = _service_target(docs, m.group(1), int(m.group(2)))
            assert target, f"{doc['metadata']['name']}: no Service behind {value}"
            calls += 1
            assert _allowed(docs, source, *target), f"{doc['metadata']['name']} cannot reach {value}"
    assert calls >= 8, "the services' addresses were not found in their settings"
    for dep, (_, ports) in pods.items():
        metrics = [p for p, n in ports.items() if n == "metrics"]
        assert metrics and _allowed(docs, None, dep, metrics[0]), f"{dep}: metrics closed to monitoring"
        for port in ports:
            assert (
                any(_allowed(docs, other[0], dep, port) for other in pods.values())
                or ports[port] == "metrics"
                or _allowed(docs, None, dep, port)
            ), f"{dep}: nothing may reach port {port}"


DEPLOYMENTS = [(o, d["metadata"]["name"]) for o in OVERLAYS for d in render(o) if d["kind"] == "Deployment"]


@pytest.mark.parametrize(("overlay", "name"), DEPLOYMENTS)
def test_ports_and_probes_are_what_the_service_serves(
    overlay: str, name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    docs = render(overlay)
    backends = request.getfixturevalue("prod_backends") if overlay == "prod" else None
    (doc,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name]
    (container,) = doc["spec"]["template"]["spec"]["containers"]
    ports = _port_map(container)
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {**os.environ, **_local_env(container_env(docs, container), ports, tmp_path, backends)}
    proc = subprocess.Popen(
        [sys.executable, "-m", container["command"][2]],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
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
