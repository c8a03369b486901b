"""The StorageService contract, run per backend by test_storage_<backend>.py:
in-process through pytest-grpc's fixtures (module-scoped, so one module per
backend rather than parametrized fixtures, which pytest-grpc cannot rebuild)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from common.clients import StorageClient
from common.errors import InvalidArgument, NotFound
from common.gen.dicomserver.v1 import dicom_pb2, storage_service_pb2 as pb, storage_service_pb2_grpc as pb_grpc
from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3
from storage_svc.backend import ObjectStore, open_store
from storage_svc.filesystem import FilesystemStore
from storage_svc.settings import StorageSettings
from storage_svc.service import StorageService

REF = dicom_pb2.InstanceRef(
    tenant="default", study_instance_uid="1.2.3", series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("objects")


@pytest.fixture(scope="module")
def seaweed(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3 | None]:
    if backend != "s3":
        yield None
        return
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store(backend: str, root: Path, seaweed: SeaweedS3 | None) -> ObjectStore:
    if seaweed is not None:
        return open_store(StorageSettings(
            storage_backend="s3", s3_endpoint_url=seaweed.endpoint, s3_bucket=seaweed.bucket,
            s3_access_key_id=ACCESS_KEY, s3_secret_access_key=SECRET_KEY,
        ))
    return FilesystemStore(root)


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def grpc_add_to_server():  # type: ignore[no-untyped-def]
    return pb_grpc.add_StorageServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(store: ObjectStore) -> StorageService:
    return StorageService(store)


@pytest.fixture(scope="module")
def grpc_stub_cls(grpc_channel):  # type: ignore[no-untyped-def]
    return pb_grpc.StorageServiceStub


@pytest.fixture(scope="module")
def client(grpc_channel: grpc.Channel) -> StorageClient:
    return StorageClient(grpc_channel)


def payload(size: int) -> bytes:
    return os.urandom(size)


def test_put_get_round_trip_across_chunks(client: StorageClient, root: Path, backend: str) -> None:
    data = payload(19 * 1024 * 1024 + 17)  # several S3 multipart parts
    put = client.put(REF, [data], expected_size=len(data))
    assert put.size == len(data)
    assert put.sha256 == hashlib.sha256(data).hexdigest()
    assert re.fullmatch(r"default/1\.2\.3/1\.2\.3\.4/1\.2\.3\.4\.5_[0-9a-f]{16}\.dcm", put.object_key)
    assert client.get_bytes(put.object_key) == data
    assert client.stat(put.object_key).size == len(data)
    if backend == "filesystem":
        assert (root / put.object_key).read_bytes() == data
        assert not list((root / ".tmp").iterdir())


def test_range_reads(client: StorageClient) -> None:
    data = payload(2 * 1024 * 1024)
    key = client.put(REF, [data]).object_key
    assert b"".join(client.get(key, offset=1000, length=5000)) == data[1000:6000]
    assert b"".join(client.get(key, offset=len(data) - 10)) == data[-10:]
    with pytest.raises(InvalidArgument):
        list(client.get(key, offset=len(data) + 1))


def test_each_put_gets_its_own_generation(client: StorageClient) -> None:
    first = client.put(REF, [b"first"]).object_key
    second = client.put(REF, [b"second"]).object_key
    assert first != second
    assert client.get_bytes(first) == b"first"
    assert client.get_bytes(second) == b"second"


def test_stat_and_delete(client: StorageClient, root: Path) -> None:
    key = client.put(REF, [b"abc"]).object_key
    assert client.stat(key).size == 3
    assert client.delete(key) is True
    assert client.delete(key) is False
    with pytest.raises(NotFound):
        client.stat(key)
    with pytest.raises(NotFound):
        client.get_bytes(key)


def test_size_mismatch_leaves_nothing(client: StorageClient, root: Path, store: ObjectStore, backend: str) -> None:
    before = files_under(root) if backend == "filesystem" else _bucket_keys(store)
    with pytest.raises(InvalidArgument):
        client.put(REF, [b"12345"], expected_size=6)
    with pytest.raises(InvalidArgument):
        client.put(REF, [payload(9 * 1024 * 1024)], expected_size=1)  # after a multipart part
    after = files_under(root) if backend == "filesystem" else _bucket_keys(store)
    assert after == before


def _bucket_keys(store: ObjectStore) -> list[str]:
    s3 = store.client  # type: ignore[attr-defined]
    listed = s3.list_objects_v2(Bucket=store.bucket).get("Contents", [])  # type: ignore[attr-defined]
    uploads = s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])  # type: ignore[attr-defined]
    return sorted(o["Key"] for o in listed) + sorted(u["Key"] for u in uploads)


@pytest.mark.parametrize(
    "ref",
    [
        dicom_pb2.InstanceRef(tenant="../etc", study_instance_uid="1", series_instance_uid="1", sop_instance_uid="1"),
        dicom_pb2.InstanceRef(tenant="default", study_instance_uid="..", series_instance_uid="1", sop_instance_uid="1"),
        dicom_pb2.InstanceRef(tenant="default", study_instance_uid="1", series_instance_uid="1/2", sop_instance_uid="1"),
        dicom_pb2.InstanceRef(tenant="default", study_instance_uid="1", series_instance_uid="1", sop_instance_uid="1" * 65),
    ],
)
def test_bad_refs_are_refused(client: StorageClient, ref: dicom_pb2.InstanceRef) -> None:
    with pytest.raises(InvalidArgument):
        client.put(ref, [b"x"])


@pytest.mark.parametrize("key", ["../x", "default/1/2/3/../../../../etc/passwd", "/etc/passwd", ""])
def test_bad_keys_are_refused(client: StorageClient, key: str) -> None:
    with pytest.raises(InvalidArgument):
        client.get_bytes(key)
    with pytest.raises(InvalidArgument):
        client.delete(key)


def test_header_must_come_first(grpc_stub: pb_grpc.StorageServiceStub) -> None:
    def requests() -> Iterator[pb.PutRequest]:
        yield pb.PutRequest(chunk=b"x")

    with pytest.raises(grpc.RpcError) as err:
        grpc_stub.Put(requests())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_deleting_the_last_object_removes_emptied_folders(client: StorageClient, root: Path, backend: str) -> None:
    ref = dicom_pb2.InstanceRef(
        tenant="emptied", study_instance_uid="9.8", series_instance_uid="9.8.7", sop_instance_uid="9.8.7.6"
    )
    first, second = client.put(ref, [b"a"]).object_key, client.put(ref, [b"b"]).object_key
    assert client.delete(first)
    if backend == "filesystem":
        assert (root / "emptied/9.8/9.8.7").is_dir()  # the series still holds an object
    assert client.delete(second)
    if backend == "filesystem":
        assert not (root / "emptied/9.8").exists()
        assert (root / "emptied").is_dir()
    # A new object in the same series after its folder went away.
    assert client.get_bytes(client.put(ref, [b"c"]).object_key) == b"c"
