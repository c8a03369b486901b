"""A real AuthService gRPC server on a free loopback port, per settings."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from auth_svc.policy import Policy
from auth_svc.service import AuthService
from auth_svc.settings import AuthSettings
from common.clients import AuthClient, channel
from common.gen.dicomserver.v1 import auth_service_pb2, auth_service_pb2_grpc
from common.grpc_server import build_server

SERVICE_NAME = auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name


@contextmanager
def serving(settings: AuthSettings) -> Iterator[AuthClient]:
    service = AuthService(Policy(settings))
    server, _health, port = build_server(
        lambda s: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(service, s), [SERVICE_NAME], "127.0.0.1:0"
    )
    ch = channel(f"127.0.0.1:{port}")
    try:
        yield AuthClient(ch)
    finally:
        ch.close()
        server.stop(None).wait()
