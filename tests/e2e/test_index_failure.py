"""The index failing after storage has taken the bytes: PostgreSQL turned
read-only under a running archive (as after a failover to a standby). A
STOW-RS request and a C-STORE of new objects get failure statuses, nothing
of them is listed or served, storage's sweep removes their bytes, and once
the database takes writes again the same objects store normally."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, text

from common.clients import StorageClient, channel
from testbed.servers import Postgres, new_database, shared
from tests.support import Archive, c_store_ct, small_ct

# What a failed index write may answer: out of resources (the index is
# unavailable) or a processing failure.
FAILURES = {0xA700, 0x0110}


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with shared("postgres") as pg:
        yield pg


def read_only(pg: Postgres, url: str, on: bool) -> None:
    """The database refuses writes (or takes them again), for new and open sessions alike."""
    name = url.rsplit("/", 1)[1]
    engine = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = {"on" if on else "off"}'))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        )
    engine.dispose()


def c_store(archive: Archive, data: bytes) -> int:
    return c_store_ct(archive, data, "IDXFAIL")


def test_an_index_that_fails_after_storage_leaves_nothing(postgres: Postgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = new_database(postgres, "index_failure")
    archive = Archive(tmp_path, extra_env={"DICOMSERVER_DATABASE_URL": url})
    archive.start()
    try:
        kept_ds, kept = small_ct()
        assert (
            httpx.post(
                f"{archive.dicomweb}/studies", content=kept, headers={"Content-Type": "application/dicom"}
            ).status_code
            == 200
        )
        before_files = archive.stored_files()

        read_only(postgres, url, True)
        (stow_ds, stow_data), (dimse_ds, dimse_data) = small_ct(), small_ct()
        r = httpx.post(
            f"{archive.dicomweb}/studies", content=stow_data, headers={"Content-Type": "application/dicom"}, timeout=120
        )
        assert r.status_code in (409, 503), r.text
        if r.status_code == 409:
            (failed,) = r.json()["00081198"]["Value"]
            assert failed["00081155"]["Value"] == [stow_ds.SOPInstanceUID]
            assert failed["00081197"]["Value"][0] in FAILURES
        assert c_store(archive, dimse_data) in FAILURES

        # Storage took the bytes before the index failed (the index may have
        # committed before its answer was lost, so the edge does not delete
        # them): the sweep finds them.
        assert len(set(archive.stored_files()) - set(before_files)) == 2
        time.sleep(1.1)
        StorageClient(channel(archive.grpc_addrs["storage"])).sweep(min_age_seconds=1)
        read_only(postgres, url, False)
        assert set(archive.listed()) == {kept_ds.SOPInstanceUID}
        assert archive.stored_files() == before_files
        assert httpx.get(f"{archive.dicomweb}/studies/{stow_ds.StudyInstanceUID}").status_code == 404

        # Writes again: the same objects go in.
        assert (
            httpx.post(
                f"{archive.dicomweb}/studies", content=stow_data, headers={"Content-Type": "application/dicom"}
            ).status_code
            == 200
        )
        assert c_store(archive, dimse_data) == 0x0000
        assert set(archive.listed()) == {kept_ds.SOPInstanceUID, stow_ds.SOPInstanceUID, dimse_ds.SOPInstanceUID}
    finally:
        read_only(postgres, url, False)
        assert archive.stop() == 0
