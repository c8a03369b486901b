"""The container image: it installs requirements-runtime.txt and copies the
service packages; everything the services import must come from those."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

from tests.support import ROOT

SERVICE_PACKAGES = [
    "common",
    "dicomcore",
    "deidentify",
    "storage_svc",
    "metadata_svc",
    "auth_svc",
    "ingest_svc",
    "dicomweb_gateway",
    "eventbus",
    "launcher",
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_levels() -> set[str]:
    names: set[str] = set()
    for package in SERVICE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def test_every_third_party_import_is_a_runtime_requirement() -> None:
    pinned = {
        _norm(line.split("==")[0])
        for line in (ROOT / "requirements-runtime.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    providers = importlib.metadata.packages_distributions()
    local = set(SERVICE_PACKAGES)
    missing = {}
    for module in sorted(_imported_top_levels() - local - set(sys.stdlib_module_names)):
        dists = {_norm(d) for d in providers.get(module, [])}
        if not dists & pinned:
            missing[module] = sorted(dists) or ["(not installed)"]
    assert not missing, f"imported by services but not in requirements-runtime.txt: {missing}"


def test_the_image_copies_every_service_package() -> None:
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (ROOT / "Dockerfile").read_text(), re.M))
    assert copied == set(SERVICE_PACKAGES)
    assert "requirements-runtime.txt" in (ROOT / "Dockerfile").read_text()
