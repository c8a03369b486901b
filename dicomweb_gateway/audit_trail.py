"""Audit records of the DICOMweb edge: one per request that reached the
authentication step (who, what, when, from where, with which outcome).

Records name the route template and the UIDs in the path, never the query
string (QIDO parameters can carry patient names)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Protocol

from common import observability
from common.gen.dicomserver.v1 import events_pb2

Record = events_pb2.AuditRecord


class AuditSink(Protocol):
    """Where records go (common.audit.AuditLog): never blocks, never raises,
    and cuts fields to what the outbox takes."""

    def record(self, record: events_pb2.AuditRecord) -> None: ...

    def close(self, timeout: float) -> None: ...


_ACTIONS = {
    "GET": Record.ACTION_READ,
    "HEAD": Record.ACTION_READ,
    "POST": Record.ACTION_WRITE,
    "DELETE": Record.ACTION_DELETE,
}


def _source(scope: MutableMapping[str, Any]) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else ""


def refused(sink: AuditSink, scope: MutableMapping[str, Any], status: int, reason: str) -> None:
    """A request turned away before any handler ran."""
    denied = status in (401, 403)
    sink.record(
        Record(
            source_address=_source(scope),
            edge="dicomweb",
            action=Record.ACTION_AUTHENTICATE
            if status == 401
            else _ACTIONS.get(scope["method"], Record.ACTION_UNSPECIFIED),
            operation=f"{scope['method']} {scope['path']}",
            outcome=Record.OUTCOME_DENIED if denied else Record.OUTCOME_FAILURE,
            status=status,
            detail=reason,
            request_id=observability.request_id.get(),
        )
    )


def served(sink: AuditSink, scope: MutableMapping[str, Any], tenant: str, subject: str, status: int) -> None:
    """A request a handler answered, whatever the status, for `subject` in `tenant`."""
    route = getattr(scope.get("route"), "path", None)
    params = scope.get("path_params") or {}
    sink.record(
        Record(
            tenant=tenant,
            subject=subject,
            source_address=_source(scope),
            edge="dicomweb",
            action=_ACTIONS.get(scope["method"], Record.ACTION_UNSPECIFIED),
            operation=f"{scope['method']} {route or 'unmatched'}",
            outcome=Record.OUTCOME_SUCCESS if status < 400 else Record.OUTCOME_FAILURE,
            status=status,
            study_instance_uid=str(params.get("study", "")),
            series_instance_uid=str(params.get("series", "")),
            sop_instance_uid=str(params.get("sop", "")),
            request_id=observability.request_id.get(),
        )
    )
