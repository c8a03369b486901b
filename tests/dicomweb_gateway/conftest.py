"""Fixtures: the real StorageService and MetadataService on a temp folder and
SQLite file, on one gRPC server, and the app over them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from starlette.testclient import TestClient

from auth_svc.policy import Policy
from auth_svc.service import AuthService
from auth_svc.settings import AuthSettings
from common.gen.dicomserver.v1 import (
    auth_service_pb2_grpc as auth_grpc,
)
from common.gen.dicomserver.v1 import (
    metadata_service_pb2_grpc as md_grpc,
)
from common.gen.dicomserver.v1 import (
    storage_service_pb2_grpc as st_grpc,
)
from common.grpc_server import build_server
from dicomweb_gateway.app import create_app
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from storage_svc.filesystem import FilesystemStore
from storage_svc.service import StorageService
from tests.dicomweb_gateway.gateway_support import Backend, RecordingMetadata, make_settings


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    db = Database.from_url(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    metadata = RecordingMetadata(MetadataIndex(db))
    store = StorageService(FilesystemStore(tmp_path / "objects", fsync=False))
    # auth_svc as the embedded run has it: authentication off, default tenant.
    auth = AuthService(Policy(AuthSettings(data_dir=tmp_path)))

    def register(server: grpc.Server) -> None:
        st_grpc.add_StorageServiceServicer_to_server(store, server)
        md_grpc.add_MetadataServiceServicer_to_server(metadata, server)
        auth_grpc.add_AuthServiceServicer_to_server(auth, server)

    server, _health, port = build_server(
        register,
        ["dicomserver.v1.StorageService", "dicomserver.v1.MetadataService", "dicomserver.v1.AuthService"],
        "127.0.0.1:0",
    )
    yield Backend(f"127.0.0.1:{port}", metadata, tmp_path / "objects")
    server.stop(None)
    db.dispose()


@pytest.fixture
def client(backend: Backend) -> Iterator[TestClient]:
    app = create_app(make_settings(backend))
    with TestClient(app, base_url="http://testserver") as c:
        yield c
