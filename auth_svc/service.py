"""AuthService over the policy."""

from __future__ import annotations

import grpc

from auth_svc.policy import NotAuthenticated, Policy
from common.gen.dicomserver.v1 import auth_service_pb2 as pb, auth_service_pb2_grpc as pb_grpc


class AuthService(pb_grpc.AuthServiceServicer):
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def Authenticate(self, request: pb.AuthenticateRequest, context: grpc.ServicerContext) -> pb.AuthenticateResponse:
        try:
            return pb.AuthenticateResponse(principal=self.policy.authenticate(request))
        except NotAuthenticated as exc:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))

    def Authorize(self, request: pb.AuthorizeRequest, context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        return self.policy.authorize(request)
