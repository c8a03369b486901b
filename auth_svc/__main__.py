"""python -m auth_svc

Refuses to start, with one line on stderr and exit status 2, when its
settings are invalid or when authentication is off while its gRPC listener
is reachable from beyond loopback."""

from __future__ import annotations

import sys

from auth_svc.keystore import KeyStore
from auth_svc.policy import Policy
from auth_svc.service import AuthService
from auth_svc.settings import InvalidSettings, exposure_problem, load_settings
from common.gen.dicomserver.v1 import auth_service_pb2, auth_service_pb2_grpc
from common.grpc_server import configure_logging, serve_forever


def refuse(message: str) -> None:
    print(f"auth_svc: refusing to start: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    try:
        settings = load_settings()
    except InvalidSettings as exc:
        refuse(f"invalid settings: {exc}")
        return
    if problem := exposure_problem(settings):
        refuse(problem)
    configure_logging(settings.log_level, settings.log_format)
    keys = KeyStore.open(settings.effective_auth_database_url)
    service = AuthService(Policy(settings, keys))
    serve_forever(
        settings,
        lambda server: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(service, server),
        auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
        settings.auth_addr,
        on_stop=keys.close,
    )


if __name__ == "__main__":
    main()
