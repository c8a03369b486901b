"""Probes for orchestrators, at the root (outside the DICOMweb base path):
/healthz answers while the process serves HTTP; /readyz only while storage_svc,
metadata_svc and auth_svc report SERVING on their gRPC health service (without
auth_svc every request would be refused)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common.clients import channel
from dicomweb_gateway.context import gateway

_TIMEOUT = 2.0


async def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _serving(address: str) -> bool:
    with channel(address) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=_TIMEOUT)
        except grpc.RpcError:
            return False
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def _check(addresses: dict[str, str]) -> dict[str, bool]:
    return {name: _serving(address) for name, address in addresses.items()}


async def readyz(request: Request) -> Response:
    settings = gateway(request).settings
    checks = await run_in_threadpool(
        _check, {"storage": settings.storage_addr, "metadata": settings.metadata_addr, "auth": settings.auth_addr}
    )
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks}, status_code=200 if ready else 503
    )
