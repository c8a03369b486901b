"""C-MOVE and C-GET on the pynetdicom path (EVT_C_MOVE, EVT_C_GET): which
instances, and the stored objects on their way out, are
ingest_svc.retrieval's, shared with the lean path (ingest_svc.query_retrieve)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ingest_svc import send_stored
from ingest_svc.retrieval import Retriever, contexts_for

log = logging.getLogger(__name__)


def handle_move(event: evt.Event, retriever: Retriever) -> Iterator[Any]:
    peer = retriever.destination(event)
    if peer is None:
        log.info("C-MOVE to an unknown destination refused")
        yield None, None  # pynetdicom answers 0xA801, destination unknown
        return
    status, locations = retriever.request(event)
    if status:
        # pynetdicom reports a failure only once it has associated with
        # the destination, which takes a presentation context to
        # propose (without one it answered 0xC515 instead of `status`).
        yield send_stored.destination(peer.host, peer.port, [build_context(Verification)])
        yield 1
        yield status, None
        return
    yield send_stored.destination(peer.host, peer.port, contexts_for(locations))
    yield len(locations)
    yield from retriever.sub_operations(event, locations)


def handle_get(event: evt.Event, retriever: Retriever) -> Iterator[Any]:
    status, locations = retriever.request(event)
    if status:
        yield 1
        yield status, None
        return
    send_stored.send_from_files(event.assoc)
    yield len(locations)
    yield from retriever.sub_operations(event, locations)
