"""Audit records of the DIMSE edge: refused associations, and one record per
C-STORE, C-FIND, C-MOVE, C-GET and storage commitment request with its final
status. Records carry AE titles and UIDs, never identifier values such as
patient names."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from pynetdicom import evt

from common.gen.dicomserver.v1 import events_pb2
from dicomcore.status import (
    CANNOT_UNDERSTAND,
    MOVE_DESTINATION_UNKNOWN,
    NOT_AUTHORIZED,
    PENDINGS,
    STORE_WARNINGS,
    SUCCESS,
)
from ingest_svc.principals import source_of

if TYPE_CHECKING:
    from ingest_svc.principals import Principals

Record = events_pb2.AuditRecord


class AuditSink(Protocol):
    def record(self, record: events_pb2.AuditRecord) -> None: ...


def _study_of(event: evt.Event) -> str:
    """The Study Instance UID a query/retrieve identifier names, if one."""
    try:
        value = event.identifier.get("StudyInstanceUID", "")
    except Exception:  # an undecodable identifier was answered with a failure status
        return ""
    return str(value)[:64] if isinstance(value, str) else ""


class DimseAudit:
    def __init__(self, sink: AuditSink | None, principals: Principals) -> None:
        self._sink = sink
        self._principals = principals

    def rejected(self, source: str, calling_ae: str, reason: str) -> None:
        """A refused association; `source` is the peer's 'address:port'."""
        if self._sink is None:
            return
        self._sink.record(
            Record(
                subject=f"ae:{calling_ae}"[:128],
                source_address=source,
                edge="dimse",
                action=Record.ACTION_AUTHENTICATE,
                operation="A-ASSOCIATE",
                outcome=Record.OUTCOME_DENIED,
                detail=reason[:500],
            )
        )

    def record(
        self,
        assoc: Any,
        source: str,
        operation: str,
        action: Record.Action.ValueType,
        status: int,
        sop: str = "",
        study: str = "",
    ) -> None:
        """One operation of an association (any object Principals knows)
        with its final status."""
        if self._sink is None:
            return
        principal = self._principals.principal(assoc)
        denied = status == NOT_AUTHORIZED or principal is None
        self._sink.record(
            Record(
                tenant=principal.tenants[0] if principal is not None and principal.tenants else "",
                subject=principal.subject if principal is not None else "",
                source_address=source,
                edge="dimse",
                action=action,
                operation=operation,
                outcome=Record.OUTCOME_DENIED
                if denied
                else Record.OUTCOME_SUCCESS
                if status in (SUCCESS, *STORE_WARNINGS)
                else Record.OUTCOME_FAILURE,
                status=status,
                study_instance_uid=study,
                sop_instance_uid=sop[:64],
            )
        )

    def _emit(
        self,
        event: evt.Event,
        operation: str,
        action: Record.Action.ValueType,
        status: int,
        sop: str = "",
        study: str = "",
    ) -> None:
        self.record(event.assoc, source_of(event.assoc), operation, action, status, sop, study)

    def wrap(self, operation: str, action: Record.Action.ValueType, handler: Callable[..., Any]) -> Callable[..., Any]:
        """The handler, recording its final status when it is done."""
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def generator(event: evt.Event, *args: Any) -> Iterator[Any]:
                status = 0x0000
                try:
                    for item in handler(event, *args):
                        if item == (None, None):  # C-MOVE to an unknown destination
                            status = MOVE_DESTINATION_UNKNOWN
                        elif (
                            isinstance(item, tuple)
                            and len(item) == 2
                            and isinstance(item[0], int)
                            and item[0] not in PENDINGS
                            and (item[1] is None)
                        ):
                            status = item[0]
                        yield item
                finally:
                    self._emit(event, operation, action, status, study=_study_of(event))

            return generator

        @functools.wraps(handler)
        def plain(event: evt.Event, *args: Any) -> Any:
            result = handler(event, *args)
            status = result[0] if isinstance(result, tuple) else result
            sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            self._emit(event, operation, action, int(status) if isinstance(status, int) else CANNOT_UNDERSTAND, sop=sop)
            return result

        return plain
