"""Probes for orchestrators, at the root (outside the DICOMweb base path):
/healthz answers while the process serves HTTP; /readyz only while storage_svc
and metadata_svc report SERVING on their gRPC health service."""

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


def _check(storage_addr: str, metadata_addr: str) -> dict[str, bool]:
    return {"storage": _serving(storage_addr), "metadata": _serving(metadata_addr)}


async def readyz(request: Request) -> Response:
    settings = gateway(request).settings
    checks = await run_in_threadpool(_check, settings.storage_addr, settings.metadata_addr)
    ready = all(checks.values())
    return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks},
                        status_code=200 if ready else 503)
