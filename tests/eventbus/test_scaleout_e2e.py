"""The whole server on PostgreSQL + Redis + Kafka, started by the launcher:
STOW-RS and C-STORE ingest → events on Kafka keyed and ordered per study →
the metadata consumer's precomputed series served by /metadata → the change
feed lists them; and Redis stopped during queries changes no answer."""

from __future__ import annotations

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import create_engine, text

from common.gen.dicomserver.v1 import events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc
from testbed.servers import Kafka, Postgres, Redis, new_database
from tests.eventbus.bus_support import read_topic, wait_until
from tests.support import Archive


@pytest.fixture(scope="module")
def own_redis() -> Iterator[Redis]:
    server = Redis()  # its own: the test stops it
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def scaled(
    tmp_path_factory: pytest.TempPathFactory, postgres: Postgres, kafka: Kafka, own_redis: Redis
) -> Iterator[tuple[Archive, dict[str, str]]]:
    env = {
        "DICOMSERVER_DATABASE_URL": new_database(postgres, "e2e"),
        "DICOMSERVER_REDIS_URL": own_redis.url,
        "DICOMSERVER_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "DICOMSERVER_KAFKA_TOPIC": f"e2e-{uuid.uuid4().hex[:8]}",
        "DICOMSERVER_KAFKA_PARTITIONS": "3",
    }
    server = Archive(tmp_path_factory.mktemp("scaled"))
    with mock.patch.dict(os.environ, env):
        server.start()
    yield server, env
    assert server.stop() == 0, "".join(server.output)


def new_ct(out: Path, study: str, series: str, sop: str, number: int) -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.InstanceNumber = number
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.save_as(out, enforce_file_format=True)
    return ds


def uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def stow(archive: Archive, path: Path) -> None:
    r = httpx.post(
        f"{archive.dicomweb}/studies",
        content=path.read_bytes(),
        headers={"Content-Type": "application/dicom"},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def qido_studies(archive: Archive) -> list[str]:
    r = httpx.get(f"{archive.dicomweb}/studies", params={"limit": "100"}, timeout=30)
    assert r.status_code == 200, r.text
    return sorted(s["0020000D"]["Value"][0] for s in r.json())


def test_ingest_to_kafka_to_metadata_and_change_feed(
    scaled: tuple[Archive, dict[str, str]], kafka: Kafka, tmp_path: Path
) -> None:
    archive, env = scaled
    study_a, series_a, study_b, series_b = uid(), uid(), uid(), uid()
    sops_a = [uid() for _ in range(3)]
    # STOW-RS: one study, three instances sent out of order.
    for n, sop in zip((3, 1, 2), sops_a, strict=False):
        new_ct(tmp_path / "a.dcm", study_a, series_a, sop, n)
        stow(archive, tmp_path / "a.dcm")
    # C-STORE: another study, two instances.
    sops_b = [uid(), uid()]
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage, pydicom.uid.ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", archive.dimse_port, ae_title=archive.ae_title)
    assert assoc.is_established
    for n, sop in enumerate(sops_b, 1):
        ds = new_ct(tmp_path / f"b{n}.dcm", study_b, series_b, sop, n)
        assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()

    # Events on Kafka: keyed by study, in order within each study.
    messages = read_topic(kafka, env["DICOMSERVER_KAFKA_TOPIC"], 5)
    by_study: dict[str, list[events_pb2.Event]] = defaultdict(list)
    for m in messages:
        by_study[m.key().decode()].append(events_pb2.Event.FromString(m.value()))
    assert set(by_study) == {study_a, study_b}
    for events in by_study.values():
        assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert [e.instance_stored.location.ref.sop_instance_uid for e in by_study[study_a]] == sops_a
    assert [e.instance_stored.location.ref.sop_instance_uid for e in by_study[study_b]] == sops_b

    # The metadata consumer's precomputed series is what /metadata serves.
    db = create_engine(env["DICOMSERVER_DATABASE_URL"])
    current = text(
        "SELECT m.payload FROM series s JOIN series_metadata m ON m.series_pk = s.id "
        "AND m.revision = s.revision WHERE s.series_instance_uid = :uid"
    )

    def precomputed(series: str) -> Any:
        with db.connect() as conn:
            return conn.execute(current, {"uid": series}).scalar()

    wait_until("series metadata precomputed", lambda: precomputed(series_a) and precomputed(series_b))
    stored = md_pb.GetMetadataResponse.FromString(precomputed(series_a))
    r = httpx.get(f"{archive.dicomweb}/studies/{study_a}/series/{series_a}/metadata", timeout=30)
    assert r.status_code == 200, r.text
    served = [m["00080018"]["Value"][0] for m in r.json()]
    assert served == [sops_a[1], sops_a[2], sops_a[0]]  # instance number order
    assert [json.loads(h)["00080018"]["Value"][0] for h in stored.instances] == served
    db.dispose()

    # The change feed lists them in the order of the outbox, numbered by the
    # tenant's own count of changes.
    with grpc.insecure_channel(archive.grpc_addrs["metadata"]) as ch:
        feed = md_grpc.MetadataServiceStub(ch).ReadChangeFeed(
            md_pb.ReadChangeFeedRequest(tenant="default", after_sequence=0, limit=100)
        )
    listed = [e.instance_stored.location.ref.sop_instance_uid for e in feed.events]
    in_outbox_order = [
        e.instance_stored.location.ref.sop_instance_uid
        for e in sorted((e for m in by_study.values() for e in m), key=lambda e: e.sequence)
    ]
    assert listed == in_outbox_order and sorted(listed) == sorted(sops_a + sops_b)
    assert [e.sequence for e in feed.events] == list(range(1, len(listed) + 1))


def test_redis_stopped_during_queries_answers_stay_correct(
    scaled: tuple[Archive, dict[str, str]], own_redis: Redis, tmp_path: Path
) -> None:
    archive, _ = scaled
    before = qido_studies(archive)
    assert qido_studies(archive) == before  # cached now
    study = uid()
    own_redis.stop()
    try:
        assert qido_studies(archive) == before
        new_ct(tmp_path / "c.dcm", study, uid(), uid(), 1)
        stow(archive, tmp_path / "c.dcm")
        assert qido_studies(archive) == sorted(before + [study])
        r = httpx.get(f"{archive.dicomweb}/studies/{study}/metadata", timeout=30)
        assert r.status_code == 200 and len(r.json()) == 1
    finally:
        own_redis.start()
    for _ in range(3):
        assert qido_studies(archive) == sorted(before + [study])
