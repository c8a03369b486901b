"""C-FIND on the pynetdicom path (EVT_C_FIND). The query and its answers are
ingest_svc.queries', shared with the lean path (ingest_svc.query_retrieve)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt

from common.clients import MetadataClient
from dicomcore.status import CANCEL, PENDING
from ingest_svc.queries import pages, response

if TYPE_CHECKING:
    from ingest_svc.principals import Principals


def handle_find(
    event: evt.Event, metadata: MetadataClient, principals: Principals, page_size: int
) -> Iterator[tuple[int, Dataset | None]]:
    """EVT_C_FIND of the pynetdicom path."""
    syntax = UID(event.context.transfer_syntax)
    for status, query, matches in pages(event, metadata, principals, page_size):
        if status != PENDING:
            yield status, None
            return
        assert query is not None
        for match in matches:
            if event.is_cancelled:
                yield CANCEL, None
                return
            yield PENDING, response(query, match, syntax)
