"""The import itself: items go in batches to worker threads; each batch

1. reads each file's head: its file meta names the SOP instance (not DICOM,
   a DICOMDIR, or unreadable: reported, never fatal);
2. asks the metadata service which of those SOP instances the tenant
   already holds (LocateInstances by SOP Instance UIDs, one call a batch),
   and skips them: an interrupted import is resumed by running it again;
3. sends the rest through one IngestService.StoreInstances stream, each
   file read as it is sent, and turns the outcomes into results.

Why the metadata service: IngestService has no query of its own (its one
RPC stores), and LocateInstances by a list of SOP Instance UIDs is the
batch lookup that storage commitment and C-MOVE already use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import IO, TypeVar

from common import errors
from common.clients import IngestClient, MetadataClient
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import is_uid
from importer.meta import HEAD, MEDIA_STORAGE_DIRECTORY, Meta, NeedMore, NotDicom, read_meta
from importer.sources import Item

log = logging.getLogger(__name__)
T = TypeVar("T")

READ = 1024 * 1024
BATCH_FILES = 64
BATCH_BYTES = 64 * 1024 * 1024
# A batch the archive did not answer (unavailable) is tried again after these pauses.
RETRY_PAUSES = (1.0, 3.0, 10.0)


class Outcome(Enum):
    STORED = "stored"
    STORED_WITH_WARNING = "stored with warning"
    ALREADY_STORED = "already in the archive"
    DUPLICATE = "duplicate in this import"
    FAILED = "failed"
    UNREADABLE = "unreadable"
    NOT_DICOM = "not DICOM"
    MEDIA_INDEX = "DICOMDIR"

    @property
    def went_in(self) -> bool:
        """The object is in the archive (now or from before)."""
        return self in (Outcome.STORED, Outcome.STORED_WITH_WARNING, Outcome.ALREADY_STORED, Outcome.DUPLICATE)

    @property
    def counts(self) -> bool:
        """Whether it is a DICOM object the import should have brought in:
        other files and media indexes are listed, not held against it."""
        return self not in (Outcome.NOT_DICOM, Outcome.MEDIA_INDEX)


@dataclass(frozen=True)
class Result:
    item: Item
    outcome: Outcome
    reason: str = ""
    sop_instance_uid: str = ""


@dataclass
class _Open:
    item: Item
    meta: Meta
    head: bytes
    file: IO[bytes] | None  # None once the whole file is in `head`
    read_error: str = ""


def batches(items: list[Item], max_files: int = BATCH_FILES, max_bytes: int = BATCH_BYTES) -> Iterator[list[Item]]:
    batch: list[Item] = []
    size = 0
    for item in items:
        if batch and (len(batch) == max_files or size + item.size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.size
    if batch:
        yield batch


class Importer:
    def __init__(
        self,
        ingest: IngestClient,
        metadata: MetadataClient,
        tenant: str,
        workers: int = 4,
        on_result: Callable[[Result], None] = lambda r: None,
        retry_pauses: tuple[float, ...] = RETRY_PAUSES,
    ) -> None:
        self.ingest, self.metadata, self.tenant = ingest, metadata, tenant
        self.workers = workers
        self.on_result = on_result
        self.retry_pauses = retry_pauses
        self._lock = threading.Lock()
        self._claimed: dict[str, str] = {}  # SOP Instance UID -> the item that brings it

    def run(self, items: list[Item]) -> list[Result]:
        results: list[Result] = []
        with ThreadPoolExecutor(self.workers, thread_name_prefix="import") as pool:
            for batch_results in pool.map(self._batch, batches(items)):
                results.extend(batch_results)
        return results

    # ---- one batch ------------------------------------------------------

    def _batch(self, items: list[Item]) -> list[Result]:
        results: list[Result] = []
        opened: list[_Open] = []
        try:
            for item in items:
                got = self._open(item)
                if isinstance(got, Result):
                    results.append(self._report(got))
                else:
                    opened.append(got)
            try:
                to_send = self._skip_stored(opened, results)
            except errors.ServiceError as exc:
                results.extend(
                    self._report(
                        Result(o.item, Outcome.FAILED, f"the archive did not answer: {exc}", o.meta.sop_instance_uid)
                    )
                    for o in opened
                )
                return results
            results.extend(self._report(r) for r in self._send(to_send))
        finally:
            for o in opened:
                if o.file is not None:
                    o.file.close()
        return results

    def _report(self, result: Result) -> Result:
        self.on_result(result)
        return result

    def _open(self, item: Item) -> _Open | Result:
        if item.problem:
            return Result(item, Outcome.UNREADABLE, item.problem)
        try:
            f = item.open()
        except OSError as exc:
            return Result(item, Outcome.UNREADABLE, f"cannot read: {exc.strerror or exc}")
        try:
            head = f.read(HEAD)
            while True:
                try:
                    meta = read_meta(head)
                    break
                except NeedMore as more:
                    extra = f.read(more.end - len(head))
                    if not extra:
                        raise NotDicom("the file ends within its file meta information") from None
                    head += extra
        except NotDicom as exc:
            f.close()
            return Result(item, Outcome.NOT_DICOM, str(exc))
        except (OSError, EOFError, ValueError) as exc:  # zip members raise BadZipFile (a ValueError) on a bad CRC
            f.close()
            return Result(item, Outcome.UNREADABLE, f"cannot read: {getattr(exc, 'strerror', None) or exc}")
        if meta.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            f.close()
            return Result(item, Outcome.MEDIA_INDEX, "the index of a medium: its files are imported, not it")
        if len(head) < HEAD:
            f.close()
            return _Open(item, meta, head, None)
        return _Open(item, meta, head, f)

    def _skip_stored(self, opened: list[_Open], results: list[Result]) -> list[_Open]:
        """Drops what the archive holds already and what another item of
        this import brings; closes their files."""
        # A UID the archive would refuse is not asked about: the store reports it.
        uids = [o.meta.sop_instance_uid for o in opened if is_uid(o.meta.sop_instance_uid)]
        stored: set[str] = set()
        if uids:
            stored = {
                loc.ref.sop_instance_uid
                for loc in self._with_retries(lambda: self.metadata.locate_each(self.tenant, uids))
            }
        keep: list[_Open] = []
        for o in opened:
            uid = o.meta.sop_instance_uid
            skipped: Result | None = None
            if uid in stored:
                skipped = Result(o.item, Outcome.ALREADY_STORED, "", uid)
            elif uid:
                with self._lock:
                    first = self._claimed.setdefault(uid, o.item.name)
                if first != o.item.name:
                    skipped = Result(o.item, Outcome.DUPLICATE, f"the same SOP instance as {first}", uid)
            if skipped is None:
                keep.append(o)
                continue
            results.append(self._report(skipped))
            if o.file is not None:
                o.file.close()
                o.file = None
        return keep

    def _send(self, opened: list[_Open]) -> list[Result]:
        if not opened:
            return []
        options = ingest_pb.StoreOptions(tenant=self.tenant, duplicate_policy=md_pb.DUPLICATE_POLICY_KEEP_FIRST)
        try:
            outcomes = self._with_retries(
                lambda: self.ingest.store_chunked(options, (self._pieces(o) for o in opened)), rewind=opened
            )
        except errors.ServiceError as exc:
            return [
                Result(o.item, Outcome.FAILED, f"the archive did not answer: {exc}", o.meta.sop_instance_uid)
                for o in opened
            ]
        if len(outcomes) != len(opened):
            return [
                Result(
                    o.item,
                    Outcome.FAILED,
                    "the archive answered for a different number of objects",
                    o.meta.sop_instance_uid,
                )
                for o in opened
            ]
        return [self._result(o, out) for o, out in zip(opened, outcomes, strict=False)]

    @staticmethod
    def _pieces(o: _Open) -> Iterator[bytes]:
        """The file's bytes as they are read. A read error ends the object
        early (the archive then refuses it as truncated) and is reported."""
        yield o.head
        if o.file is None:
            return
        while True:
            try:
                data = o.file.read(READ)
            except (OSError, EOFError, ValueError) as exc:
                o.read_error = f"cannot read: {getattr(exc, 'strerror', None) or exc}"
                return
            if not data:
                return
            yield data

    @staticmethod
    def _result(o: _Open, out: ingest_pb.InstanceOutcome) -> Result:
        uid = out.ref.sop_instance_uid or o.meta.sop_instance_uid
        if o.read_error:
            return Result(o.item, Outcome.UNREADABLE, o.read_error, uid)
        if out.status == ingest_pb.STORE_STATUS_FAILED:
            return Result(o.item, Outcome.FAILED, f"{out.reason} (0x{out.dicom_status:04X})", uid)
        if out.index_outcome == md_pb.INDEX_OUTCOME_KEPT_EXISTING:
            return Result(o.item, Outcome.ALREADY_STORED, "", uid)  # stored meanwhile by someone else
        if out.status == ingest_pb.STORE_STATUS_STORED_WITH_WARNING:
            return Result(o.item, Outcome.STORED_WITH_WARNING, out.reason, uid)
        return Result(o.item, Outcome.STORED, "", uid)

    def _with_retries(self, call: Callable[[], list[T]], rewind: list[_Open] | None = None) -> list[T]:
        """`call`, tried again while the archive is unavailable; the files of
        a store are read again from where their heads end."""
        for pause in self.retry_pauses:
            try:
                return call()
            except errors.Unavailable as exc:
                log.warning("the archive is unavailable (%s); trying again in %.0f s", exc, pause)
                time.sleep(pause)
                for o in rewind or []:
                    if o.file is not None:
                        o.file.seek(len(o.head))  # files and zip members both seek
                    o.read_error = ""
        return call()
