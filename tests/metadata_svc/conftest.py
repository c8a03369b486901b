"""Fixtures: an in-process MetadataService (pytest-grpc, one server and one
fresh database per module) over SQLite and over a real PostgreSQL 15 server
(every test here runs on both), and a fresh tenant per test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from testbed.servers import Postgres, new_database, shared

_tenants = itertools.count()


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tenants are hard walls, so tests cannot see each other."""
    return f"t{next(_tenants)}"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with shared("postgres") as pg:
        yield pg


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('md') / 'index.sqlite3'}"
    return new_database(request.getfixturevalue("postgres"), "md")


@pytest.fixture(scope="module")
def md_index(database_url: str) -> Iterator[MetadataIndex]:
    db = Database.from_url(database_url)
    yield MetadataIndex(db, max_query_limit=1000)
    db.dispose()


@pytest.fixture(scope="module")
def grpc_interceptors(database_url: str) -> None:
    """Tied to the database parameter so pytest-grpc builds a new server for
    each (a stopped grpc.Server cannot start again)."""
    return None


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Any:
    return md_grpc.add_MetadataServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(md_index: MetadataIndex) -> MetadataService:
    return MetadataService(md_index)


@pytest.fixture(scope="module")
def grpc_stub_cls(grpc_channel: grpc.Channel) -> Any:
    return md_grpc.MetadataServiceStub
