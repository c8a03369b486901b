"""Storage Commitment Push Model SCP (PS3.4 J.3): N-ACTION asks, an
N-EVENT-REPORT answers from what is durable (indexed, and its object present
in storage with the indexed size), on the requester's association while it
is open, else on a new one to the requester's configured address."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, cast

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import N_ACTION
from pynetdicom.presentation import build_context, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel  # type: ignore[attr-defined]  # generated at import time

from common import errors
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from common.gen.dicomserver.v1 import dicom_pb2
from common.validation import is_uid
from dicomcore.status import (
    CLASS_INSTANCE_CONFLICT,
    CLASS_NOT_SUPPORTED,
    INVALID_ARGUMENT,
    INVALID_INSTANCE,
    NO_SUCH_ACTION,
    NO_SUCH_INSTANCE,
    NOT_AUTHORIZED,
    PROCESSING_FAILURE,
    RESOURCE_LIMITATION,
    SUCCESS,
)
from ingest_svc.settings import IngestSettings

if TYPE_CHECKING:
    from ingest_svc.principals import Principals

log = logging.getLogger(__name__)

# The well-known SOP Instance of the Storage Commitment Push Model.
WELL_KNOWN_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1
ALL_SUCCEEDED, SOME_FAILED = 1, 2
LOCATE_BATCH = 500
MAX_REFERENCES = 65535


def _item(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


class Commitments:
    def __init__(
        self,
        settings: IngestSettings,
        ae: AE,
        storage: StorageClient,
        metadata: MetadataClient,
        principals: Principals,
    ) -> None:
        self._settings = settings
        self._ae = ae
        self._storage = storage
        self._metadata = metadata
        self._principals = principals

    def handle_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        req = cast(N_ACTION, event.request)  # EVT_N_ACTION's
        if req.RequestedSOPClassUID != StorageCommitmentPushModel:
            return CLASS_NOT_SUPPORTED, None
        if req.RequestedSOPInstanceUID != WELL_KNOWN_INSTANCE:
            return INVALID_INSTANCE, None
        if event.action_type != REQUEST_STORAGE_COMMITMENT:
            return NO_SUCH_ACTION, None
        try:
            tenant = self._principals.tenant(event.assoc, auth_pb.ACTION_READ)
        except errors.ServiceError as exc:
            log.warning("auth_svc unavailable: %s", exc)
            return RESOURCE_LIMITATION, None
        if tenant is None:
            return NOT_AUTHORIZED, None
        try:
            info = event.action_information
            transaction = str(info.TransactionUID)
            refs = [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in info.ReferencedSOPSequence]
        except Exception:
            log.info("storage commitment request without a readable Transaction UID and Referenced SOP Sequence")
            return INVALID_ARGUMENT, None
        if not is_uid(transaction) or not refs or len(refs) > MAX_REFERENCES:
            return INVALID_ARGUMENT, None
        if not all(is_uid(c) and is_uid(i) for c, i in refs):
            return INVALID_ARGUMENT, None
        calling = str(event.assoc.requestor.ae_title).strip()
        threading.Thread(
            target=self._report,
            args=(event.assoc, calling, tenant, transaction, refs),
            name="commitment-report",
            daemon=True,
        ).start()
        return SUCCESS, None

    def result(self, tenant: str, transaction: str, refs: list[tuple[str, str]]) -> Dataset:
        """The event information: which references are durable, which not."""
        located: dict[str, dicom_pb2.InstanceLocation] = {}
        durable: dict[str, bool] = {}
        unavailable = False
        try:
            uids = list(dict.fromkeys(uid for _, uid in refs))
            for i in range(0, len(uids), LOCATE_BATCH):
                for loc in self._metadata.locate_each(tenant, uids[i : i + LOCATE_BATCH]):
                    located[loc.ref.sop_instance_uid] = loc
            for uid, loc in located.items():
                try:
                    durable[uid] = self._storage.stat(loc.object_key).size == loc.size
                except errors.NotFound:
                    durable[uid] = False
        except errors.ServiceError as exc:
            log.warning("storage commitment could not check the archive: %s", exc)
            unavailable = True
        ds = Dataset()
        ds.TransactionUID = transaction
        done, failed = Sequence(), Sequence()
        for sop_class, uid in refs:
            found = located.get(uid)
            if unavailable:
                failed.append(_item(sop_class, uid, PROCESSING_FAILURE))
            elif found is None:
                failed.append(_item(sop_class, uid, NO_SUCH_INSTANCE))
            elif found.sop_class_uid != sop_class:
                failed.append(_item(sop_class, uid, CLASS_INSTANCE_CONFLICT))
            elif not durable.get(uid):
                failed.append(_item(sop_class, uid, PROCESSING_FAILURE))
            else:
                done.append(_item(sop_class, uid))
        ds.ReferencedSOPSequence = done
        if failed:
            ds.FailedSOPSequence = failed
        return ds

    def _report(
        self, assoc: Association, calling: str, tenant: str, transaction: str, refs: list[tuple[str, str]]
    ) -> None:
        ds = self.result(tenant, transaction, refs)
        event_type = SOME_FAILED if "FailedSOPSequence" in ds else ALL_SUCCEEDED
        if self._send_on(assoc, ds, event_type):
            return
        self._send_new(calling, ds, event_type)

    @staticmethod
    def _send_on(assoc: Association, ds: Dataset, event_type: int) -> bool:
        """Sends the report on the request's association if it is still open."""
        if not assoc.is_established:
            return False
        # Pause the association's reactor (it resumes after the N-ACTION
        # response is sent), giving up if the association ends meanwhile:
        # pynetdicom's own wait would spin forever then.
        checkpoint = assoc._reactor_checkpoint
        checkpoint.clear()
        deadline = time.monotonic() + 10
        while not assoc._is_paused:
            if not assoc.is_established or time.monotonic() > deadline:
                checkpoint.set()
                return False
            time.sleep(0.001)
        if assoc.acse.is_release_requested():
            checkpoint.set()  # the requester is leaving: answer on a new association
            return False
        try:
            status, _ = assoc.send_n_event_report(ds, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE)
        except Exception as exc:  # the association ended or has no usable context
            checkpoint.set()
            log.info("storage commitment report not sent on the open association: %s", exc)
            return False
        return getattr(status, "Status", None) == SUCCESS

    def _send_new(self, calling: str, ds: Dataset, event_type: int, attempts: int = 3) -> None:
        peer = self._settings.dimse_peers.get(calling)
        if peer is None:
            log.warning("storage commitment report for AE '%s' dropped: no address configured", calling)
            return
        for attempt in range(attempts):
            assoc = self._ae.associate(
                peer.host,
                peer.port,
                ae_title=calling,
                contexts=[build_context(StorageCommitmentPushModel)],
                ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)],
            )
            if assoc.is_established:
                try:
                    status, _ = assoc.send_n_event_report(
                        ds, event_type, StorageCommitmentPushModel, WELL_KNOWN_INSTANCE
                    )
                    if getattr(status, "Status", None) == SUCCESS:
                        return
                finally:
                    assoc.release()
            time.sleep(2**attempt)
        log.warning("storage commitment report for AE '%s' could not be delivered", calling)
