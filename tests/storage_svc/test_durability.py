"""What makes an acknowledged object durable on a filesystem: its bytes and
the directory entries that name it are fsynced before put() or a commit
returns. A power cut cannot be caused here, so os.fsync is watched (and
still runs): which inodes it reached."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest

from common.gen.dicomserver.v1 import dicom_pb2
from storage_svc.filesystem import FilesystemStore
from storage_svc.keys import CommitRequest

REF = dicom_pb2.InstanceRef(
    tenant="t", study_instance_uid="1.2", series_instance_uid="1.2.3", sop_instance_uid="1.2.3.4"
)


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> set[tuple[int, int]]:
    seen: set[tuple[int, int]] = set()
    real = os.fsync

    def watching(fd: int) -> None:
        st = os.fstat(fd)
        seen.add((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", watching)
    return seen


def inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("fsync", [True, False])
def test_put_fsyncs_the_file_and_every_folder_entry_it_made(tmp_path: Path, fsynced: set, fsync: bool) -> None:
    store = FilesystemStore(tmp_path / "objects", fsync=fsync)
    stored = store.put(REF, [b"x" * 1000, b"y" * 24])
    path = store.path(stored.key)
    assert path.read_bytes() == b"x" * 1000 + b"y" * 24
    made = [p for p in path.parents if p != store.root and store.root in p.parents]  # the new folders
    wanted = {inode(path), inode(path.parent), *(inode(p.parent) for p in made)}
    assert (wanted <= fsynced) if fsync else not fsynced


@pytest.mark.parametrize("fsync", [True, False])
def test_a_commit_fsyncs_the_staged_file_and_its_folder(tmp_path: Path, fsynced: set, fsync: bool) -> None:
    store = FilesystemStore(tmp_path / "objects", fsync=fsync)
    (target,) = store.grant_write(1, REF)
    data = b"staged bytes" * 100
    Path(target.file_path).write_bytes(data)
    (stored,) = store.commit_writes([CommitRequest(target.grant_id, REF, len(data), zlib.crc32(data))])
    path = store.path(stored.key)  # type: ignore[union-attr]
    assert path.read_bytes() == data
    wanted = {inode(path), inode(path.parent), inode(path.parent.parent)}
    assert (wanted <= fsynced) if fsync else not fsynced


def test_a_range_must_lie_in_the_object(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path / "objects", fsync=False)
    key = store.put(REF, [bytes(range(100))]).key
    for offset, length in ((-1, 0), (0, -1), (101, 0)):
        with pytest.raises(ValueError, match="range starts at"):
            store.get(key, offset, length)
    total, chunks = store.get(key, 90)
    assert total == 100 and b"".join(chunks) == bytes(range(90, 100))
    total, chunks = store.get(key, 10, 5)
    assert b"".join(chunks) == bytes(range(10, 15))
