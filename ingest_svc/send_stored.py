"""Adapter: C-GET and C-MOVE sub-operations send stored objects from their
files, through pynetdicom 3.0's Query/Retrieve service class, on the
pynetdicom path (TLS associations, or all of them with
DICOMSERVER_DIMSE_LEAN_QUERY_RETRIEVE=false; the lean path sends them with
ingest_svc.store_scu).

pynetdicom takes from a C-GET or C-MOVE handler only pydicom Datasets, and
sends each with `assoc.send_c_store(dataset, msg_id=...)` on the
requestor's association (C-GET) or on the one it opens to the destination
(C-MOVE). A handler here yields a StoredObject: a Dataset with the UIDs
pynetdicom reports when the sub-operation fails, and the file to send.
`send_from_files(assoc)` makes one association (and no other) send
StoredObjects with pynetdicom's public file sending: `send_c_store(path)`
with STORE_SEND_CHUNKED_DATASET reads the encoded dataset from the file in
fragments of the peer's maximum PDU length, without decoding it. Only when
the peer accepted no context for the stored transfer syntax, and an
uncompressed stored object can go in another uncompressed syntax, is the
object decoded for pynetdicom to re-encode; a compressed one is refused.

On the association to a C-MOVE destination, the association's reactor
thread stays paused from connection to release (_PausedReactor): pynetdicom
unpauses it after each C-STORE and, when the next one follows at once, the
reactor can take that C-STORE's response off the queue as its own.

What this relies on in pynetdicom (the service class's calls, EVT_CONN_OPEN
on the destination association before its reactor starts, the reactor's
pause, the DUL's idle sleep, the association socket) is pinned by
tests/ingest_svc/test_send_stored.py."""

from __future__ import annotations

import functools
import socket
import threading
from typing import Any

from pydicom import config, dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import _config, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

PYNETDICOM_SERIES = "3.0."
# Seconds the C-MOVE destination association's DUL thread sleeps when idle.
DESTINATION_POLL = 0.0002


_SOP_CLASS, _SOP_INSTANCE = 0x00080016, 0x00080018


class StoredObject(Dataset):
    """A stored object on its way out: its UIDs, its stored transfer syntax
    and the file to send (None when storage could not give it)."""

    def __init__(self, sop_class: str, sop_instance: str, syntax: str, path: str | None) -> None:
        super().__init__()
        # UIDs the index holds, checked when stored: not validated again
        # (pydicom's validation took ~0.1 ms per object).
        self[_SOP_CLASS] = DataElement(_SOP_CLASS, "UI", sop_class, validation_mode=config.IGNORE)
        self[_SOP_INSTANCE] = DataElement(_SOP_INSTANCE, "UI", sop_instance, validation_mode=config.IGNORE)
        object.__setattr__(self, "stored_syntax", UID(syntax))
        object.__setattr__(self, "path", path)


class MissingObject(Exception):
    """The object is indexed but storage has no bytes for it."""


def send_from_files(assoc: Association) -> None:
    """Makes `assoc` send StoredObjects from their files; other datasets go
    through pynetdicom unchanged."""
    # pynetdicom's switch for sending a file path as the encoded bytes it holds.
    _config.STORE_SEND_CHUNKED_DATASET = True
    assoc.send_c_store = functools.partial(_send_c_store, assoc)  # type: ignore[method-assign]


def destination(host: str, port: int, contexts: list[PresentationContext]) -> tuple[str, int, dict[str, Any]]:
    """What a C-MOVE handler yields for its destination: pynetdicom opens the
    association with these arguments; once connected, its socket sends
    without Nagle's delay (each C-STORE would otherwise wait for a delayed
    ACK) and it sends StoredObjects from their files."""
    return host, port, {"contexts": contexts, "evt_handlers": [(evt.EVT_CONN_OPEN, _on_destination_open)]}


def _on_destination_open(event: evt.Event) -> None:
    assoc = event.assoc
    sock = assoc.dul.socket
    assert sock is not None and sock.socket is not None  # EVT_CONN_OPEN: connected
    sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assoc._reactor_checkpoint = _PausedReactor()  # the reactor thread has not started yet
    # The DUL thread sleeps this long whenever it finds nothing to do, so
    # each C-STORE response waited up to 1 ms (pynetdicom's default) before
    # it was read. This association only lives while the C-MOVE sends.
    assoc.dul._run_loop_delay = DESTINATION_POLL
    send_from_files(assoc)


class _PausedReactor(threading.Event):
    """An association reactor's checkpoint that send_c_store does not set.

    pynetdicom 3.0's send_c_store pauses the reactor (clears this, waits for
    `_is_paused`), sends, takes the response and sets this again. When the
    next send_c_store follows at once, as stored objects do, the reactor
    thread may not have run yet: woken but still marked paused, it passes the
    check and polls the DIMSE queue while the next C-STORE is under way, and
    takes its response ("Received unexpected C-STORE service message"; the
    sub-operation then waits out the DIMSE timeout and the association is
    aborted). Measured: 1 C-MOVE in 5 to 60 of 50 objects each. Kept cleared,
    the reactor stays in its wait until the association ends; release(),
    abort() and kill() from other code still wake it."""

    def __init__(self) -> None:
        super().__init__()  # cleared
        self.sending = 0  # the thread in send_c_store, whose set() is skipped

    def set(self) -> None:
        if threading.get_ident() != self.sending:
            super().set()

    def wake(self) -> None:
        super().set()


def takes_as_stored(assoc: Association, obj: StoredObject) -> bool:
    """Whether the peer accepted a context in which we may send the object
    in its stored transfer syntax (pynetdicom then picks that context)."""
    return any(
        cx.abstract_syntax == obj.SOPClassUID and cx.transfer_syntax[0] == obj.stored_syntax and cx.as_scu
        for cx in assoc.accepted_contexts
    )


def _send_c_store(
    assoc: Association,
    dataset: Any,
    msg_id: int = 1,
    priority: int = 2,
    originator_aet: str | None = None,
    originator_id: int | None = None,
) -> Dataset:
    send = functools.partial(
        Association.send_c_store,
        assoc,
        msg_id=msg_id,
        priority=priority,
        originator_aet=originator_aet,
        originator_id=originator_id,
    )
    if not isinstance(dataset, StoredObject):
        return send(dataset)
    # An exception here is a failed sub-operation: pynetdicom lists the SOP Instance UID.
    if dataset.path is None:
        raise MissingObject("the stored object could not be read")
    if takes_as_stored(assoc, dataset):
        return _paused(assoc, send, dataset.path)
    if dataset.stored_syntax.is_compressed:
        raise ValueError("the peer accepted no context for the object's compressed transfer syntax")
    # pynetdicom re-encodes it in an uncompressed syntax the peer accepted.
    return _paused(assoc, send, dcmread(dataset.path))


def _paused(assoc: Association, send: Any, what: Any) -> Dataset:
    """send(what), keeping a _PausedReactor paused; when the peer has gone,
    the reactor is woken to end the association, and nothing is sent."""
    checkpoint = assoc._reactor_checkpoint
    if not isinstance(checkpoint, _PausedReactor):
        return send(what)  # type: ignore[no-any-return]
    if not assoc.dul.is_alive() or assoc.acse.is_aborted():
        checkpoint.wake()
        raise ConnectionError("the destination ended the association")
    checkpoint.sending = threading.get_ident()
    try:
        return send(what)  # type: ignore[no-any-return]
    finally:
        checkpoint.sending = 0
        if not assoc.is_established or not assoc.dul.is_alive() or assoc.acse.is_aborted():
            checkpoint.wake()
