"""IngestService.ListPeers and SendToPeer: a study (or series) sent to a
DIMSE peer of DICOMSERVER_DIMSE_PEERS on request (the console's "send"),
the way a C-MOVE to that peer sends it: the same presentation contexts
(stored syntax first), the stored bytes from where storage grants them
(retrieval.Outgoing), pynetdicom sending from files (send_stored). A peer
bound to other tenants is as unknown as a peer that does not exist."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pynetdicom import AE

from common import errors
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import ingest_service_pb2 as pb
from common.validation import InvalidValue, check_tenant, check_uid
from dicomcore.status import STORE_WARNINGS, SUCCESS
from ingest_svc import send_stored
from ingest_svc.retrieval import Outgoing, StoredReader, contexts_for
from ingest_svc.settings import IngestSettings, Peer

log = logging.getLogger(__name__)


class PeerSender:
    def __init__(self, settings: IngestSettings, storage: StorageClient, metadata: MetadataClient) -> None:
        self._settings = settings
        self._reader = StoredReader(storage)
        self._metadata = metadata

    def _allowed(self, tenant: str) -> dict[str, Peer]:
        return {
            title: peer
            for title, peer in self._settings.dimse_peers.items()
            if not peer.tenants or tenant in peer.tenants
        }

    def peers(self, tenant: str) -> list[pb.PeerInfo]:
        """Raises InvalidValue for a malformed tenant."""
        check_tenant(tenant)
        return [
            pb.PeerInfo(ae_title=title, host=peer.host, port=peer.port)
            for title, peer in sorted(self._allowed(tenant).items())
        ]

    def send(self, request: pb.SendToPeerRequest) -> Iterator[pb.SendToPeerResponse]:
        """Raises InvalidValue (bad request), errors.NotFound (no such peer
        for the tenant, or no such study) or another ServiceError before
        the first message; afterwards failures are reported in messages."""
        check_tenant(request.tenant)
        check_uid(request.study_instance_uid, "Study Instance UID")
        if request.series_instance_uid:
            check_uid(request.series_instance_uid, "Series Instance UID")
        peer = self._allowed(request.tenant).get(request.ae_title)
        if peer is None:
            raise errors.NotFound("no such DIMSE peer")
        locations = self._metadata.locate(request.tenant, request.study_instance_uid, request.series_instance_uid)
        if not locations:
            raise errors.NotFound("no such study")
        if len(locations) > self._settings.max_retrieve_instances:
            raise InvalidValue(
                f"{len(locations)} instances: more than the {self._settings.max_retrieve_instances} one send may carry"
            )
        progress = pb.SendToPeerResponse(total=len(locations))
        ae = AE(ae_title=self._settings.ae_title)
        ae.acse_timeout = self._settings.acse_timeout
        ae.dimse_timeout = self._settings.dimse_timeout
        ae.network_timeout = self._settings.network_timeout
        ae.connection_timeout = self._settings.acse_timeout
        ae.maximum_pdu_size = self._settings.max_pdu_size
        host, port, options = send_stored.destination(peer.host, peer.port, contexts_for(locations))
        assoc = ae.associate(host, port, ae_title=request.ae_title, **options)
        established = assoc.is_established  # a local: the loop below asks the association again
        if not established:
            log.info("send to a DIMSE peer: the association was not accepted")
            progress.failed = progress.total
            progress.done = True
            progress.error = f"{request.ae_title} did not accept the association"
            yield progress
            return
        yield progress
        spool = str(self._settings.retrieve_spool_dir) if self._settings.retrieve_spool_dir else None
        objects = Outgoing(self._reader, locations, spool).objects()
        try:
            for obj in objects:
                reason = ""
                try:
                    status = assoc.send_c_store(obj.dataset())  # pynetdicom sends a Dataset or file
                    code = int(status.Status) if status is not None and "Status" in status else -1
                except Exception as exc:  # a failed sub-operation, as C-MOVE counts it
                    code, reason = -1, f"{type(exc).__name__}: {exc}"[:200]
                if code == SUCCESS:
                    progress.completed += 1
                elif code in STORE_WARNINGS:
                    progress.warning += 1
                else:
                    progress.failed += 1
                    progress.error = reason or (
                        f"the peer answered 0x{code:04X}" if code >= 0 else "the peer did not answer"
                    )
                if not assoc.is_established:
                    progress.failed = progress.total - progress.completed - progress.warning
                    progress.error = f"{request.ae_title} ended the association"
                    break
                yield progress
        finally:
            objects.close()
            if assoc.is_established:
                assoc.release()
        progress.done = True
        log.info(
            "sent to a DIMSE peer: %d completed, %d warning, %d failed of %d",
            progress.completed,
            progress.warning,
            progress.failed,
            progress.total,
        )
        yield progress
