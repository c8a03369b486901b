"""The DIMSE edge: a pynetdicom AE with thin handlers bound to the pipeline."""

from __future__ import annotations

import io
import logging
import weakref
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification
from pynetdicom.presentation import AllStoragePresentationContexts

from common import errors
from common.clients import AuthClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb, ingest_service_pb2 as ingest_pb
from common.ingest import IngestPipeline, OUT_OF_RESOURCES
from ingest_svc.settings import IngestSettings

log = logging.getLogger(__name__)

NOT_AUTHORIZED = 0x0124


class Principals:
    """The tenant of each association, asked of auth_svc once per association."""

    def __init__(self, auth: AuthClient) -> None:
        self._auth = auth
        self._by_assoc: weakref.WeakKeyDictionary[Association, str | None] = weakref.WeakKeyDictionary()

    def tenant(self, assoc: Association) -> str | None:
        if assoc not in self._by_assoc:
            req = auth_pb.AuthenticateRequest(
                dimse_peer=auth_pb.DimsePeer(
                    calling_ae_title=assoc.requestor.ae_title,
                    called_ae_title=assoc.acceptor.ae_title,
                    peer_address=assoc.requestor.address,
                )
            )
            try:
                principal = self._auth.authenticate(req)
                allowed = self._auth.authorize(principal, auth_pb.ACTION_WRITE, principal.tenants[0])
                self._by_assoc[assoc] = principal.tenants[0] if allowed.allowed else None
            except errors.Unauthenticated:
                self._by_assoc[assoc] = None
        return self._by_assoc[assoc]


def handle_store(event: evt.Event, pipeline: IngestPipeline, principals: Principals) -> Any:
    try:
        tenant = principals.tenant(event.assoc)
    except errors.ServiceError as exc:
        log.warning("auth_svc unavailable: %s", exc)
        return OUT_OF_RESOURCES
    if tenant is None:
        return NOT_AUTHORIZED
    data = event.encoded_dataset(include_meta=True)
    outcome = pipeline.store(
        io.BytesIO(data),
        len(data),
        tenant,
        expected_sop_class=str(event.request.AffectedSOPClassUID or ""),
    )
    if outcome.status == ingest_pb.STORE_STATUS_FAILED:
        log.info("C-STORE failed with 0x%04X: %s", outcome.dicom_status, outcome.reason)
    return outcome.dicom_status


def build_ae(settings: IngestSettings) -> AE:
    _config.UNRESTRICTED_STORAGE_SERVICE = settings.accept_unknown_sop_classes
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.require_called_aet = settings.require_called_ae_title
    # Accept every transfer syntax as proposed: we store what was sent.
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes)
    ae.add_supported_context(Verification, AllTransferSyntaxes)
    return ae


def start_scp(settings: IngestSettings, pipeline: IngestPipeline, auth: AuthClient) -> Any:
    """Starts the SCP in its own threads; returns the server to shut down."""
    ae = build_ae(settings)
    handlers = [(evt.EVT_C_STORE, handle_store, [pipeline, Principals(auth)])]
    return ae.start_server((settings.dimse_host, settings.dimse_port), block=False, evt_handlers=handlers)
