"""Fixtures: an in-process MetadataService (pytest-grpc, one server and one
temp SQLite database per module) and a fresh tenant per test."""

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

_tenants = itertools.count()


@pytest.fixture
def tenant() -> str:
    """A fresh tenant per test: tenants are hard walls, so tests cannot see each other."""
    return f"t{next(_tenants)}"


@pytest.fixture(scope="module")
def md_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetadataIndex]:
    db = Database.from_url(f"sqlite:///{tmp_path_factory.mktemp('md') / 'index.sqlite3'}")
    yield MetadataIndex(db, max_query_limit=1000)
    db.dispose()


@pytest.fixture(scope="module")
def grpc_add_to_server() -> Any:
    return md_grpc.add_MetadataServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(md_index: MetadataIndex) -> MetadataService:
    return MetadataService(md_index)


@pytest.fixture(scope="module")
def grpc_stub_cls(grpc_channel: grpc.Channel) -> Any:
    return md_grpc.MetadataServiceStub
