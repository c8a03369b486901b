"""The tree's import rules, read from the source with ast:
- a service never imports another service (they talk over gRPC);
- libraries (common, dicomcore, deidentify) import no service;
- bench/ and testbed/ never import the tests;
- generated code is imported only as common.gen.dicomserver.v1;
- DICOM status codes are defined only in dicomcore/status.py.

Each rule is also run on a module written to break it, so a checker that
finds nothing cannot pass."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("storage_svc", "metadata_svc", "auth_svc", "ingest_svc", "dicomweb_gateway", "eventbus")
LIBRARIES = ("common", "dicomcore", "deidentify")
GENERATED = "common.gen.dicomserver.v1"
# The tests package, and its helpers by their bare names (as once reached through sys.path).
TEST_MODULES = {"tests"} | {p.stem for p in (ROOT / "tests").rglob("*.py")}
# Our generated modules, by file name (grpc_health's own *_pb2 are not ours).
GENERATED_MODULES = {p.stem for p in (ROOT / "common" / "gen" / "dicomserver" / "v1").glob("*_pb2*.py")}


def imported(source: str) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import; `from a import b` yields a and a.b."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def violations(package: str, source: str) -> list[str]:
    """What `source`, a module of top-level folder `package`, imports against the rules."""
    found = []
    for line, name in imported(source):
        top = name.split(".")[0]
        if package in SERVICES and top in SERVICES and top != package:
            found.append(f"{line}: service {package} imports service {name}")
        if package in LIBRARIES and top in SERVICES:
            found.append(f"{line}: library {package} imports service {name}")
        if package in ("bench", "testbed") and top in TEST_MODULES:
            found.append(f"{line}: {package} imports the tests' {name}")
        generated = top == "dicomserver" or name.split(".")[-1] in GENERATED_MODULES
        if generated and not name.startswith(GENERATED):
            found.append(f"{line}: generated code imported as {name}, not {GENERATED}")
    if package in ("bench", "testbed") and "sys.path" in source and '"tests"' in source:
        found.append(f"{package} puts tests/ on sys.path")
    return found


def tree() -> Iterator[tuple[str, Path]]:
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if (
            rel.parts[0].startswith(".")
            or rel.parts[0] in ("node_modules", "viewer")
            or rel.parts[:2] == ("common", "gen")
        ):
            continue
        yield rel.parts[0], path


def test_the_tree_keeps_the_import_rules() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{v}"
        for package, path in tree()
        for v in violations(package, path.read_text(encoding="utf-8"))
    ]
    assert found == []


def test_every_service_and_library_is_there() -> None:
    """The rules name folders; a renamed one would silently escape them."""
    for name in (*SERVICES, *LIBRARIES, "bench", "testbed"):
        assert (ROOT / name / "__init__.py").is_file() or (ROOT / name / "__main__.py").is_file(), name
    assert sum(1 for package, _ in tree() if package in SERVICES) > 50
    assert {"events_pb2", "metadata_service_pb2_grpc"} <= GENERATED_MODULES


@pytest.mark.parametrize(
    ("package", "source", "expected"),
    [
        ("ingest_svc", "from metadata_svc.index import MetadataIndex\n", "service ingest_svc imports service"),
        ("dicomweb_gateway", "import storage_svc.filesystem\n", "service dicomweb_gateway imports service"),
        ("common", "from ingest_svc import scp\n", "library common imports service"),
        ("bench", "from support import Archive\n", "bench imports the tests' support"),
        ("bench", 'import sys\nsys.path.insert(0, "tests")\n', "bench puts tests/ on sys.path"),
        ("eventbus", "from dicomserver.v1 import events_pb2\n", "generated code imported as dicomserver.v1"),
        ("common", "import metadata_service_pb2\n", "generated code imported as metadata_service_pb2"),
    ],
)
def test_a_module_that_breaks_a_rule_is_named(package: str, source: str, expected: str) -> None:
    assert any(expected in v for v in violations(package, source)), violations(package, source)


@pytest.mark.parametrize(
    ("package", "source"),
    [
        ("ingest_svc", "from ingest_svc.scp import start_scp\nfrom common.clients import MetadataClient\n"),
        ("eventbus", "from common.gen.dicomserver.v1 import events_pb2\nfrom google.protobuf import json_format\n"),
        ("tests", "from support import Archive\nfrom metadata_svc.index import MetadataIndex\n"),
        ("bench", "from testbed.servers import Postgres\nfrom metadata_svc.db import Database\n"),
    ],
)
def test_allowed_imports_pass(package: str, source: str) -> None:
    assert violations(package, source) == []


def status_definitions(source: str) -> list[str]:
    """Module-level names assigned here that dicomcore.status defines."""
    from dicomcore import status

    codes = {name for name, value in vars(status).items() if name.isupper() and isinstance(value, (int, tuple))}
    found = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                found += [n.id for n in names if isinstance(n, ast.Name) and n.id in codes]
    return found


def test_status_codes_are_defined_once() -> None:
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for package, path in tree()
        if package in (*SERVICES, *LIBRARIES) and path != ROOT / "dicomcore" / "status.py"
        for name in status_definitions(path.read_text(encoding="utf-8"))
    ]
    assert found == []
    assert status_definitions("PENDING, CANCEL = 0xFF00, 0xFE00\nOTHER = 1\n") == ["PENDING", "CANCEL"]


def test_gateway_handlers_never_import_each_other() -> None:
    """The modules that answer the gateway's routes share code through
    modules of their own (reading, imaging, ...), never through each other."""
    from dicomweb_gateway.app import routes

    handlers = {route.endpoint.__module__ for route in routes() if hasattr(route, "endpoint")}
    assert {"dicomweb_gateway.wado", "dicomweb_gateway.render", "dicomweb_gateway.frames"} <= handlers
    found = []
    for module in sorted(handlers):
        path = ROOT / (module.replace(".", "/") + ".py")
        for line, name in imported(path.read_text(encoding="utf-8")):
            if name in handlers - {module} or name.rsplit(".", 1)[0] in handlers - {module}:
                found.append(f"{module}:{line} imports {name}")
    assert found == []


DIMSE_HANDLERS = ("find", "retrieve", "store", "commitment", "query_retrieve")


def test_dimse_handlers_never_import_each_other() -> None:
    """C-FIND, C-GET/C-MOVE, C-STORE and storage commitment on pynetdicom's
    path, and the lean path's query/retrieve, share code through modules of
    their own (queries, retrieval, principals, dicomcore.status), never
    through each other."""
    handlers = {f"ingest_svc.{name}" for name in DIMSE_HANDLERS}
    found = []
    for module in sorted(handlers):
        source = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        for line, name in imported(source):
            if name in handlers - {module} or name.rsplit(".", 1)[0] in handlers - {module}:
                found.append(f"{module}:{line} imports {name}")
    assert found == []
    assert "ingest_svc.find" in {name for _, name in imported("from ingest_svc import find\n")}
