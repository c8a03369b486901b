"""The StorageService contract, run per backend by test_storage_<backend>.py:
in-process through pytest-grpc's fixtures (module-scoped, so one module per
backend rather than parametrized fixtures, which pytest-grpc cannot rebuild)."""

from __future__ import annotations

import hashlib
import os
import re
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import urllib3

from common.blobs import Blobs
from common.clients import StorageClient
from common.errors import InvalidArgument, NotFound
from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import storage_service_pb2 as pb
from common.gen.dicomserver.v1 import storage_service_pb2_grpc as pb_grpc
from storage_svc.backend import ObjectStore, open_store
from storage_svc.filesystem import FilesystemStore
from storage_svc.service import StorageService
from storage_svc.settings import StorageSettings
from storage_svc.sweeper import sweep
from testbed.seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3

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
        return open_store(
            StorageSettings(
                storage_backend="s3",
                s3_endpoint_url=seaweed.endpoint,
                s3_bucket=seaweed.bucket,
                s3_access_key_id=ACCESS_KEY,
                s3_secret_access_key=SECRET_KEY,
                s3_create_bucket=True,
            )
        )
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
        dicom_pb2.InstanceRef(
            tenant="default", study_instance_uid="1", series_instance_uid="1/2", sop_instance_uid="1"
        ),
        dicom_pb2.InstanceRef(
            tenant="default", study_instance_uid="1", series_instance_uid="1", sop_instance_uid="1" * 65
        ),
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


# --- grants: edges write and read the bytes themselves --------------------------------


def _everything(root: Path, store: ObjectStore, backend: str) -> list[str]:
    """Every file (objects, staging, temp parts) or every bucket key and pending upload."""
    if backend == "filesystem":
        return [str(p.relative_to(root)) for p in files_under(root)]
    return _bucket_keys(store)


def _read_granted(client: StorageClient, key: str, start: int = 0, end: int | None = None) -> bytes:
    (grant,) = client.grant_read([key])
    assert grant.object_key == key
    if grant.WhichOneof("location") == "file_path":
        with open(grant.file_path, "rb") as f:
            f.seek(start)
            return f.read(None if end is None else end - start)
    headers = {} if (start, end) == (0, None) else {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
    resp = urllib3.request("GET", grant.url, headers=headers)
    assert resp.status in (200, 206), resp.status
    return resp.data


@pytest.mark.parametrize("size", [0, 5, 9 * 1024 * 1024 + 3])  # the last one goes up in parts on S3
def test_a_staged_write_is_committed_and_read_where_granted(
    client: StorageClient, root: Path, store: ObjectStore, backend: str, size: int
) -> None:
    before = _everything(root, store, backend)
    data = payload(size)
    staged = Blobs(client).stage()
    staged.write(data[: size // 2])
    staged.write(data[size // 2 :])
    key = staged.commit(REF)
    assert re.fullmatch(r"default/1\.2\.3/1\.2\.3\.4/1\.2\.3\.4\.5_[0-9a-f]{16}\.dcm", key)
    assert client.get_bytes(key) == data
    assert _read_granted(client, key) == data
    if size > 10:
        assert _read_granted(client, key, 3, 9) == data[3:9]
    # Only the committed object is new: no staging file, no pending upload.
    assert sorted(set(_everything(root, store, backend)) - set(before)) == [key]


def test_nothing_is_visible_before_commit_and_a_discard_leaves_nothing(
    client: StorageClient, root: Path, store: ObjectStore, backend: str
) -> None:
    before = _everything(root, store, backend)
    with Blobs(client).stage() as staged:
        staged.write(payload(1000))
        assert not [
            k
            for k in set(_everything(root, store, backend)) - set(before)
            if k.endswith(".dcm") and not k.startswith((".staging", ".tmp"))
        ]
    assert _everything(root, store, backend) == before


def test_a_commit_that_does_not_match_the_bytes_is_refused_and_leaves_nothing(
    client: StorageClient, root: Path, store: ObjectStore, backend: str
) -> None:
    before = _everything(root, store, backend)
    data = payload(4096)
    if backend == "filesystem":
        (grant,) = client.grant_write(1).grants
        Path(grant.file_path).write_bytes(data)
        commit = pb.CommitWriteRequest(grant_id=grant.grant_id, ref=REF, size=len(data), crc32=zlib.crc32(data) ^ 1)
        with pytest.raises(InvalidArgument, match="CRC-32"):
            client.commit_write(commit)
        (grant,) = client.grant_write(1).grants
        Path(grant.file_path).write_bytes(data)
        commit = pb.CommitWriteRequest(grant_id=grant.grant_id, ref=REF, size=len(data) + 1, crc32=zlib.crc32(data))
        with pytest.raises(InvalidArgument, match="bytes"):
            client.commit_write(commit)
    else:
        (grant,) = client.grant_write(ref=REF, size=len(data)).grants
        assert urllib3.request("PUT", grant.upload.url, body=data).status == 200
        commit = pb.CommitWriteRequest(
            grant_id=grant.grant_id, ref=REF, size=len(data), etags=['"0123"'], object_key=grant.upload.object_key
        )
        with pytest.raises(InvalidArgument):
            client.commit_write(commit)
    assert _everything(root, store, backend) == before


def test_a_commit_of_nothing_staged_is_not_found(client: StorageClient, backend: str) -> None:
    if backend == "filesystem":
        commit = pb.CommitWriteRequest(grant_id="0" * 32, ref=REF, size=1)
    else:
        commit = pb.CommitWriteRequest(
            grant_id="x",
            ref=REF,
            size=1,
            etags=['"x"'],
            object_key="default/1.2.3/1.2.3.4/1.2.3.4.5_0123456789abcdef.dcm",
        )
    with pytest.raises(NotFound):
        client.commit_write(commit)
    with pytest.raises((NotFound, InvalidArgument)):
        client.commit_write(pb.CommitWriteRequest(grant_id="../../etc/passwd", ref=REF, size=1))


def test_the_sweep_removes_stale_staging_and_unreferenced_objects_only(
    client: StorageClient, root: Path, store: ObjectStore, backend: str
) -> None:
    ref = dicom_pb2.InstanceRef(
        tenant="sweep", study_instance_uid="7.1", series_instance_uid="7.1.2", sop_instance_uid="7.1.2.3"
    )
    kept = client.put(ref, [b"kept"]).object_key
    orphan = client.put(ref, [b"orphan"]).object_key
    stale = Blobs(client).stage()
    stale.write(b"never committed")
    stale.file.flush()
    if backend == "filesystem":
        old = time.time() - 7200
        for path in (Path(stale.path), root / kept, root / orphan):
            os.utime(path, (old, old))
    else:
        time.sleep(1.1)  # S3 LastModified has whole seconds
    in_index = {kept} | {k for k in _everything(root, store, backend) if not k.startswith("sweep/")}
    report = sweep(store, 3600 if backend == "filesystem" else 1, lambda keys: set(keys) & in_index)
    assert report.orphans_removed == 1
    assert client.get_bytes(kept) == b"kept"
    with pytest.raises(NotFound):
        client.get_bytes(orphan)
    if backend == "filesystem":
        assert report.staging_removed == 1 and not Path(stale.path).exists()
    stale.discard()
    client.delete(kept)


def test_the_sweep_removes_nothing_when_most_objects_look_orphaned(
    client: StorageClient, root: Path, store: ObjectStore, backend: str
) -> None:
    """An index that does not belong to this store (an operator's mix-up)
    must not cost the objects."""
    ref = dicom_pb2.InstanceRef(
        tenant="mixup", study_instance_uid="7.2", series_instance_uid="7.2.3", sop_instance_uid="7.2.3.4"
    )
    keys = [client.put(ref, [b"x"]).object_key for _ in range(25)]
    if backend == "filesystem":
        old = time.time() - 7200
        for key in keys:
            os.utime(root / key, (old, old))
    else:
        time.sleep(1.1)
    report = sweep(store, 3600 if backend == "filesystem" else 1, lambda keys: set())
    assert report.orphans_removed == 0
    assert all(client.get_bytes(k) == b"x" for k in keys)
    for key in keys:
        client.delete(key)


def test_commits_in_one_call_are_judged_one_by_one(
    client: StorageClient, root: Path, store: ObjectStore, backend: str
) -> None:
    """CommitWrites: the good writes are committed and the bad ones refused
    each with its own reason, as separate CommitWrite calls would be."""
    before = _everything(root, store, backend)
    good, bad = payload(3000), payload(2000)
    requests = []
    for data, crc in ((good, zlib.crc32(good)), (bad, zlib.crc32(bad) ^ 1)):
        if backend == "filesystem":
            (grant,) = client.grant_write(1).grants
            Path(grant.file_path).write_bytes(data)
            requests.append(pb.CommitWriteRequest(grant_id=grant.grant_id, ref=REF, size=len(data), crc32=crc))
        else:
            (grant,) = client.grant_write(ref=REF, size=len(data)).grants
            put = urllib3.request("PUT", grant.upload.url, body=data)
            etag = put.headers["ETag"] if crc == zlib.crc32(data) else '"0123"'
            requests.append(
                pb.CommitWriteRequest(
                    grant_id=grant.grant_id, ref=REF, size=len(data), etags=[etag], object_key=grant.upload.object_key
                )
            )
    missing = (
        pb.CommitWriteRequest(grant_id="f" * 32, ref=REF, size=1)
        if backend == "filesystem"
        else pb.CommitWriteRequest(
            grant_id="x",
            ref=REF,
            size=1,
            etags=['"x"'],
            object_key="default/1.2.3/1.2.3.4/1.2.3.4.5_fedcba9876543210.dcm",
        )
    )
    ok, refused, unknown = client.commit_writes([*requests, missing])
    assert ok.HasField("committed") and client.get_bytes(ok.committed.object_key) == good
    assert refused.failure == pb.COMMIT_FAILURE_INVALID and not refused.HasField("committed")
    assert unknown.failure == pb.COMMIT_FAILURE_NOT_FOUND
    assert sorted(set(_everything(root, store, backend)) - set(before)) == [ok.committed.object_key]
    client.delete(ok.committed.object_key)
