"""C-STORE to a DIMSE peer with pynetdicom's SCU, one association per batch.

Objects go as stored: each (SOP class, stored transfer syntax) is proposed
as a presentation context of its own, so that a peer that accepts it gets
the stored bytes, sent from the file (pynetdicom's STORE_SEND_CHUNKED_DATASET
reads the encoded data set in fragments, without decoding it). Only when the
peer accepted no context for an uncompressed object's stored syntax is the
object decoded for pynetdicom to re-encode, between Explicit and Implicit VR
Little Endian only; other syntaxes are never converted (that delivery fails). This is
how the DIMSE edge sends C-MOVE and C-GET sub-operations
(dicomcore.contexts, ingest_svc/send_stored.py); a service never imports
another, so the sending parts this needs are here.

The association's reactor thread is held paused while we send (see
_HeldReactor): pynetdicom unpauses it after every C-STORE, and when the next
one follows at once the reactor can take that C-STORE's response off the
queue as its own ("Received unexpected C-STORE service message")."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from dicomcore.contexts import FALLBACK_SYNTAXES, proposals
from eventbus.routing.config import DimseDestination
from eventbus.routing.objects import ObjectFile
from eventbus.routing.sending import Outcome

log = logging.getLogger(__name__)


def contexts_for(objects: Sequence[ObjectFile]) -> list[PresentationContext]:
    """dicomcore.contexts' proposals; the fallback is offered for objects
    stored in Explicit or Implicit VR Little Endian (pynetdicom converts
    between those two only)."""
    stored = ((o.location.sop_class_uid, o.location.transfer_syntax_uid) for o in objects)
    return [build_context(c, syntaxes) for c, syntaxes in proposals(stored, FALLBACK_SYNTAXES.__contains__)]


class _HeldReactor(threading.Event):
    """An association's reactor checkpoint that stays cleared while we send.

    pynetdicom's send_c_store clears the checkpoint, waits until the reactor
    says it is paused, sends, takes the response and sets the checkpoint. A
    reactor woken by that set() but not yet running still reads as paused,
    so the next send_c_store goes ahead while the reactor is about to poll
    the DIMSE queue, where it finds that C-STORE's response. Here set() does
    nothing while `sending`: the reactor stays in its wait for the whole
    association; release() and abort() afterwards still wake it."""

    def __init__(self) -> None:
        super().__init__()  # cleared
        self.sending = False

    def set(self) -> None:
        if not self.sending:
            super().set()


def _on_open(event: evt.Event) -> None:
    # Without this every C-STORE waits for a delayed ACK (~40 ms).
    sock = event.assoc.dul.socket
    assert sock is not None and sock.socket is not None  # EVT_CONN_OPEN: connected
    sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _as_indexed(obj: ObjectFile, spool_dir: str | None) -> str | None:
    """A copy of the object whose file meta names the SOP class and instance
    the index has, or None when its own does. pynetdicom takes the C-STORE's
    Affected SOP Class and Instance UIDs from the file meta, and a STOW-RS
    client may have sent a file meta that disagrees with its data set (the
    index has the data set's). The data set's bytes are copied untouched."""
    assert obj.path is not None
    loc = obj.location
    meta, offset = split_dataset(Path(obj.path))
    if (
        meta.get("MediaStorageSOPInstanceUID") == loc.ref.sop_instance_uid
        and meta.get("MediaStorageSOPClassUID") == loc.sop_class_uid
    ):
        return None
    fixed = FileMetaDataset()
    # pydicom types these UID; assigned a str, it makes the UID itself.
    fixed.MediaStorageSOPClassUID = loc.sop_class_uid  # type: ignore[assignment]
    fixed.MediaStorageSOPInstanceUID = loc.ref.sop_instance_uid  # type: ignore[assignment]
    fixed.TransferSyntaxUID = loc.transfer_syntax_uid  # type: ignore[assignment]
    for keyword in ("ImplementationClassUID", "ImplementationVersionName", "SourceApplicationEntityTitle"):
        if keyword in meta:
            setattr(fixed, keyword, meta[keyword].value)
    fd, path = tempfile.mkstemp(suffix=".dcm", dir=spool_dir)
    with os.fdopen(fd, "wb") as out, open(obj.path, "rb") as src:
        out.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(out, fixed, enforce_standard=True)  # type: ignore[arg-type]  # only calls out.write()
        src.seek(offset)
        shutil.copyfileobj(src, out, 1024 * 1024)
    return path


def _alive(assoc: Association) -> bool:
    return bool(assoc.is_established and assoc.dul.is_alive() and not assoc.acse.is_aborted())


class DimseSender:
    def __init__(self, destination: DimseDestination, calling_ae_title: str, spool_dir: str | None = None) -> None:
        self.destination = destination
        self.calling_ae_title = destination.calling_ae_title or calling_ae_title
        self.spool_dir = spool_dir
        # pynetdicom's switch for sending a file as the encoded bytes it holds.
        _config.STORE_SEND_CHUNKED_DATASET = True

    def send(self, objects: Sequence[ObjectFile], stop: threading.Event) -> Outcome:
        dest = self.destination
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = dest.timeout
        outcome = Outcome()
        sendable = [o for o in objects if o.path is not None]
        for o in objects:
            if o.path is None:
                outcome.results[o.location.object_key] = o.error
        if not sendable:
            return outcome
        assoc = ae.associate(
            dest.host,
            dest.port,
            contexts=contexts_for(sendable),
            ae_title=dest.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, _on_open)],
        )
        if not assoc.is_established:
            outcome.down = (
                "the peer rejected the association"
                if assoc.is_rejected
                else "no association with the peer (refused, aborted or timed out)"
            )
            return outcome
        held = _HeldReactor()
        assoc._reactor_checkpoint = held
        copies: list[str] = []
        try:
            for obj in sendable:
                if stop.is_set():
                    break
                if not _alive(assoc):
                    outcome.down = "the peer ended the association"
                    break
                held.sending = True
                try:
                    outcome.results[obj.location.object_key], lost = self._store(assoc, obj, copies)
                finally:
                    held.sending = False
                if lost:
                    outcome.down = lost
                    break
        finally:
            if _alive(assoc):
                assoc.release()
            else:
                held.set()  # wake the reactor so that the association thread ends
                assoc.abort()
            for copy in copies:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(copy)
        return outcome

    def _store(self, assoc: Association, obj: ObjectFile, copies: list[str]) -> tuple[str | None, str]:
        """(None or why the peer did not take it, why the association is lost or "")."""
        loc = obj.location
        assert obj.path is not None
        try:
            copy = _as_indexed(obj, self.spool_dir)
        except (OSError, ValueError, EOFError) as exc:
            return f"the stored object cannot be read ({type(exc).__name__})", ""
        if copy is not None:
            copies.append(copy)
        path = copy or obj.path
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == loc.sop_class_uid and cx.as_scu]
        what: Any = path
        if not any(cx.transfer_syntax[0] == loc.transfer_syntax_uid for cx in accepted):
            if loc.transfer_syntax_uid not in FALLBACK_SYNTAXES:
                return "the peer accepted no context for the object's stored transfer syntax", ""
            if not accepted:
                return "the peer accepted no presentation context for the SOP class", ""
            what = dcmread(path)  # pynetdicom re-encodes it in the other syntax, which the peer accepted
        try:
            status = assoc.send_c_store(what)
        except (ValueError, AttributeError, OSError) as exc:
            return f"the object could not be sent ({type(exc).__name__})", ""
        if "Status" not in status:
            return "no C-STORE response", "the association was lost during a C-STORE"
        code = int(status.Status)
        if code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING):
            return None, ""
        return f"C-STORE failed with status 0x{code:04X}", ""
