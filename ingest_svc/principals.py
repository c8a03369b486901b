"""Who each DIMSE association is: the association policy both paths share
(pynetdicom's and ingest_svc.lean_acceptor's).

auth_svc is asked once, when the association is requested; each operation
then checks the action it needs, once per association and action. Any
object can stand for an association (a pynetdicom Association or a
LeanAssociation): the records are weakly keyed by it.

auth_svc's grants are reused for DICOMSERVER_AUTH_CACHE_SECONDS (2 s, as the
gateway reuses them): the peer (calling and called AE title, address) a
principal was authenticated for, and the (principal, action, tenant) it was
authorized for. Asking costs two calls (~2.7 ms) per association, and peers
open associations in bursts: a PACS querying then retrieving, findscu in a
loop. Refusals are never reused; a rule removed holds after at most the TTL."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynetdicom import evt

from common import errors
from common.clients import AuthClient
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from ingest_svc.settings import IngestSettings

if TYPE_CHECKING:
    from ingest_svc.audit_trail import DimseAudit

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4.
Rejection = tuple[int, int, int]
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
REJECT_CONGESTION = (0x02, 0x03, 0x01)
REJECT_LIMIT = (0x02, 0x03, 0x02)


class Recent:
    """Answers kept for `ttl` seconds (none when 0), at most MAX_ENTRIES."""

    MAX_ENTRIES = 10000

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._entries: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        if self.ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: Any, value: Any) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = (time.monotonic() + self.ttl, value)


def source_of(assoc: Any) -> str:
    """'address:port' of a pynetdicom association's requestor."""
    requestor = assoc.requestor
    return f"{requestor.address}:{requestor.port}"


class Principals:
    """`active` counts the associations of this process, whichever path
    serves them, for the association limit."""

    def __init__(self, auth: AuthClient, settings: IngestSettings, active: Callable[[], int] | None = None) -> None:
        self._auth = auth
        self._settings = settings
        self.active = active
        self.audit: DimseAudit | None = None
        self._lock = threading.Lock()
        self._by_assoc: weakref.WeakKeyDictionary[Any, auth_pb.Principal] = weakref.WeakKeyDictionary()
        self._decisions: weakref.WeakKeyDictionary[Any, dict[int, str | None]] = weakref.WeakKeyDictionary()
        self._principals = Recent(settings.auth_cache_seconds)  # by (calling, called, address)
        self._grants = Recent(settings.auth_cache_seconds)  # by (principal, action, tenant)

    def admit(self, assoc: Any, calling: str, called: str, address: str, source: str) -> Rejection | None:
        """The A-ASSOCIATE-RJ for a request, or None to accept it; checked in
        the order pynetdicom's acceptor checks (a later reason replaces an
        earlier one, except auth_svc's refusals, which end it).

        `calling` and `called` are the AE titles as received (pynetdicom
        strips trailing spaces), `source` the peer's 'address:port'."""
        settings = self._settings
        if not (settings.require_called_ae_title and called.strip() != settings.ae_title):
            calling_title = calling.strip()
            key = (calling_title, called.strip(), address)
            principal = self._principals.get(key)
            try:
                if principal is None:
                    peer = auth_pb.DimsePeer(
                        calling_ae_title=calling_title, called_ae_title=called.strip(), peer_address=address
                    )
                    principal = self._auth.authenticate(auth_pb.AuthenticateRequest(dimse_peer=peer))
                    if principal.tenants:
                        self._principals.put(key, principal)
            except errors.Unauthenticated as exc:
                log.warning("association from calling AE '%s' rejected: %s", calling_title, exc)
                return self._refused(source, calling_title, str(exc), REJECT_CALLING_AE)
            except errors.ServiceError as exc:
                log.warning("auth_svc unavailable, association rejected: %s", exc)
                return self._refused(
                    source, calling_title, "the authorization service is unavailable", REJECT_CONGESTION
                )
            if not principal.tenants:
                return self._refused(source, calling_title, "the principal holds no tenant", REJECT_CALLING_AE)
            with self._lock:
                self._by_assoc[assoc] = principal
        rejection: Rejection | None = None
        if settings.require_called_ae_title and called != settings.ae_title.strip():
            rejection = REJECT_CALLED_AE
        # pynetdicom counts the association being negotiated too.
        if self.active is not None and self.active() > settings.max_associations:
            rejection = REJECT_LIMIT
        return rejection

    def _refused(self, source: str, calling: str, reason: str, rejection: Rejection) -> Rejection:
        if self.audit is not None:
            self.audit.rejected(source, calling, reason)
        return rejection

    def on_requested(self, event: evt.Event) -> None:
        """EVT_REQUESTED of the pynetdicom path: rejects before negotiation.
        Accepted requests go on to pynetdicom's own checks, which then agree."""
        assoc = event.assoc
        rq = assoc.requestor.primitive
        assert rq is not None  # set before EVT_REQUESTED is triggered
        rejection = self.admit(
            assoc, str(rq.calling_ae_title), str(rq.called_ae_title), assoc.requestor.address, source_of(assoc)
        )
        if rejection is not None:
            assoc.acse.send_reject(*rejection)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()

    def principal(self, assoc: Any) -> auth_pb.Principal | None:
        with self._lock:
            return self._by_assoc.get(assoc)

    def tenant(self, assoc: Any, action: auth_pb.Action.ValueType) -> str | None:
        """The association's tenant if it may do `action` there, else None.
        Raises errors.ServiceError when auth_svc cannot answer."""
        with self._lock:
            principal = self._by_assoc.get(assoc)
            cached = self._decisions.setdefault(assoc, {}) if principal is not None else {}
            if action in cached:
                return cached[action]
        if principal is None:
            return None
        tenant = principal.tenants[0]
        key = (principal.SerializeToString(deterministic=True), action, tenant)
        allowed = self._grants.get(key) is not None or self._auth.authorize(principal, action, tenant).allowed
        if allowed:
            self._grants.put(key, True)
        with self._lock:
            cached[action] = tenant if allowed else None
        return tenant if allowed else None
