"""AuthService over the policy: refusals become gRPC status codes here."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import grpc

from auth_svc.keystore import StoreUnavailable
from auth_svc.policy import (
    BadRequest,
    Forbidden,
    NoKeyStore,
    NotAuthenticated,
    NotFound,
    Policy,
    Refused,
)
from common.gen.dicomserver.v1 import auth_service_pb2 as pb
from common.gen.dicomserver.v1 import auth_service_pb2_grpc as pb_grpc

T = TypeVar("T")

_CODES: dict[type[Refused], grpc.StatusCode] = {
    NotAuthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    BadRequest: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    NoKeyStore: grpc.StatusCode.FAILED_PRECONDITION,
}


def _answer(context: grpc.ServicerContext, decide: Callable[[], T]) -> T:
    try:
        return decide()
    except StoreUnavailable as exc:
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise
    except Refused as exc:
        # Unknown subclasses fail closed as PERMISSION_DENIED.
        code = next((c for cls, c in _CODES.items() if isinstance(exc, cls)), grpc.StatusCode.PERMISSION_DENIED)
        context.abort(code, str(exc))
        raise  # abort raises; this keeps type checkers honest


class AuthService(pb_grpc.AuthServiceServicer):
    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def Authenticate(self, request: pb.AuthenticateRequest, context: grpc.ServicerContext) -> pb.AuthenticateResponse:
        return _answer(context, lambda: pb.AuthenticateResponse(principal=self.policy.authenticate(request)))

    def Authorize(self, request: pb.AuthorizeRequest, context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        return self.policy.authorize(request)

    def Check(self, request: pb.CheckRequest, context: grpc.ServicerContext) -> pb.CheckResponse:
        return _answer(context, lambda: self.policy.check(request))

    def DescribePolicy(
        self, request: pb.DescribePolicyRequest, context: grpc.ServicerContext
    ) -> pb.DescribePolicyResponse:
        return self.policy.describe()

    def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: grpc.ServicerContext) -> pb.CreateApiKeyResponse:
        return _answer(context, lambda: self.policy.create_api_key(request))

    def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: grpc.ServicerContext) -> pb.RevokeApiKeyResponse:
        return _answer(context, lambda: self.policy.revoke_api_key(request))

    def ListApiKeys(self, request: pb.ListApiKeysRequest, context: grpc.ServicerContext) -> pb.ListApiKeysResponse:
        return _answer(context, lambda: self.policy.list_api_keys(request))
