"""Fixtures for the event bus: the session's Kafka, PostgreSQL and Redis
servers (testbed/servers.py), and an in-process MetadataService on a fresh
database that the eventbus code and processes call over gRPC."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from common.gen.dicomserver.v1 import metadata_service_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from common.grpc_server import build_server
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from metadata_svc.service import MetadataService
from testbed.servers import Kafka, Postgres, Redis, new_database, shared


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    with shared("postgres") as pg:
        yield pg


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    with shared("redis") as r:
        yield r


@pytest.fixture(scope="session")
def kafka() -> Iterator[Kafka]:
    with shared("kafka") as k:
        yield k


@dataclass
class MetadataServer:
    index: MetadataIndex
    addr: str
    server: grpc.Server


def start_metadata(url: str) -> MetadataServer:
    index = MetadataIndex(Database.from_url(url))
    server, _health, port = build_server(
        lambda s: md_grpc.add_MetadataServiceServicer_to_server(MetadataService(index), s),
        [metadata_service_pb2.DESCRIPTOR.services_by_name["MetadataService"].full_name],
        "127.0.0.1:0",
    )
    return MetadataServer(index, f"127.0.0.1:{port}", server)


@pytest.fixture
def metadata_pg(postgres: Postgres) -> Iterator[MetadataServer]:
    """MetadataService on a fresh PostgreSQL database."""
    md = start_metadata(new_database(postgres, "bus"))
    yield md
    md.server.stop(None)
    md.index.db.dispose()


@pytest.fixture
def metadata_sqlite(tmp_path: Path) -> Iterator[MetadataServer]:
    md = start_metadata(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    yield md
    md.server.stop(None)
    md.index.db.dispose()
