"""The objects of a retrieve, ready in turn (ingest_svc.retrieval.Outgoing):
granted files are sent from where they lie, bucket objects are downloaded
from their presigned URLs one ahead of the object being sent, grants come in
batches, and nothing is left behind, however the retrieve ends."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import storage_service_pb2 as st_pb
from ingest_svc import retrieval
from ingest_svc.retrieval import Outgoing, StoredReader


class Storage:
    """GrantRead over a dict of key -> ReadGrant; remembers each call's keys."""

    def __init__(self, grants: dict[str, st_pb.ReadGrant]) -> None:
        self.grants = grants
        self.calls: list[list[str]] = []

    def grant_read(self, keys: list[str]) -> list[st_pb.ReadGrant]:
        self.calls.append(list(keys))
        return [self.grants[k] for k in keys]


class Bucket(ThreadingHTTPServer):
    """Presigned GETs: /key answers its bytes (after `delay` s), 404 if unknown."""

    def __init__(self, objects: dict[str, bytes], delay: float = 0.0) -> None:
        self.objects = objects
        self.delay = delay
        self.requested: list[str] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{key}"


class _Handler(BaseHTTPRequestHandler):
    server: Bucket

    def do_GET(self) -> None:
        key = self.path.lstrip("/")
        self.server.requested.append(key)
        time.sleep(self.server.delay)
        data = self.server.objects.get(key)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bucket() -> Iterator[Bucket]:
    server = Bucket({f"k{i}": f"object {i}".encode() * 1000 for i in range(4)})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def locations(keys: list[str]) -> list[dicom_pb2.InstanceLocation]:
    return [
        dicom_pb2.InstanceLocation(
            object_key=k,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            ref=dicom_pb2.InstanceRef(sop_instance_uid=f"1.2.3.{i}"),
        )
        for i, k in enumerate(keys)
    ]


def url_grants(bucket: Bucket, keys: list[str]) -> Storage:
    return Storage({k: st_pb.ReadGrant(object_key=k, url=bucket.url(k)) for k in keys})


def test_granted_files_are_sent_from_where_they_lie(tmp_path: Path) -> None:
    files = {f"k{i}": tmp_path / f"{i}.dcm" for i in range(3)}
    for key, path in files.items():
        path.write_bytes(key.encode())
    files["k1"].unlink()  # indexed, but gone from storage
    storage = Storage({k: st_pb.ReadGrant(object_key=k, file_path=str(p)) for k, p in files.items()})
    seen = []
    for obj in Outgoing(StoredReader(storage), locations(list(files)), str(tmp_path)).objects():
        seen.append((obj.SOPInstanceUID, None if obj.path is None else Path(obj.path).read_bytes()))
    assert seen == [("1.2.3.0", b"k0"), ("1.2.3.1", None), ("1.2.3.2", b"k2")]
    assert storage.calls == [["k0", "k1", "k2"]]  # one GrantRead


def test_an_open_file_is_sent_even_if_deleted_meanwhile(tmp_path: Path) -> None:
    path = tmp_path / "0.dcm"
    path.write_bytes(b"bytes")
    storage = Storage({"k0": st_pb.ReadGrant(object_key="k0", file_path=str(path))})
    objects = Outgoing(StoredReader(storage), locations(["k0"]), None).objects()
    obj = next(objects)
    path.unlink()  # a delete while the object is being sent
    assert obj.path is not None and Path(obj.path).read_bytes() == b"bytes"
    objects.close()


def test_grants_come_in_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retrieval, "GRANT_BATCH", 2)
    keys = [f"k{i}" for i in range(5)]
    path = tmp_path / "x.dcm"
    path.write_bytes(b"x")
    storage = Storage({k: st_pb.ReadGrant(object_key=k, file_path=str(path)) for k in keys})
    assert len(list(Outgoing(StoredReader(storage), locations(keys), None).objects())) == 5
    assert storage.calls == [["k0", "k1"], ["k2", "k3"], ["k4"]]


def test_bucket_objects_are_downloaded_one_ahead_and_spools_removed(bucket: Bucket, tmp_path: Path) -> None:
    keys = ["k0", "k1", "missing", "k3"]
    objects = Outgoing(StoredReader(url_grants(bucket, keys)), locations(keys), str(tmp_path)).objects()
    got = []
    for i, obj in enumerate(objects):
        if i + 1 < len(keys):  # the next one is on its way while this one is "sent"
            deadline = time.monotonic() + 10
            while keys[i + 1] not in bucket.requested and time.monotonic() < deadline:
                time.sleep(0.01)
            assert keys[i + 1] in bucket.requested
        got.append(None if obj.path is None else Path(obj.path).read_bytes())
        assert len(os.listdir(tmp_path)) <= 2  # this object's spool and the next one's
    assert got == [bucket.objects["k0"], bucket.objects["k1"], None, bucket.objects["k3"]]
    assert os.listdir(tmp_path) == []


def test_a_retrieve_ended_early_leaves_no_spool_file(bucket: Bucket, tmp_path: Path) -> None:
    bucket.delay = 0.3
    keys = ["k0", "k1", "k2"]
    objects = Outgoing(StoredReader(url_grants(bucket, keys)), locations(keys), str(tmp_path)).objects()
    next(objects)
    objects.close()  # cancelled while k1 downloads
    deadline = time.monotonic() + 10
    while os.listdir(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.listdir(tmp_path) == []
    assert "k2" not in bucket.requested
