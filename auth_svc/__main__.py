"""python -m auth_svc"""

from __future__ import annotations

from auth_svc.policy import Policy
from auth_svc.service import AuthService
from auth_svc.settings import AuthSettings
from common.gen.dicomserver.v1 import auth_service_pb2, auth_service_pb2_grpc
from common.grpc_server import configure_logging, serve_forever


def main() -> None:
    settings = AuthSettings()
    configure_logging(settings.log_level, settings.log_format)
    service = AuthService(Policy(settings))
    serve_forever(
        settings,
        lambda server: auth_service_pb2_grpc.add_AuthServiceServicer_to_server(service, server),
        auth_service_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
        settings.auth_addr,
    )


if __name__ == "__main__":
    main()
