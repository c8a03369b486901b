"""Domain exceptions the hand-written clients raise instead of raw gRPC errors."""

from __future__ import annotations

import grpc


class ServiceError(Exception):
    """A call to another service failed."""


class NotFound(ServiceError):
    pass


class InvalidArgument(ServiceError):
    pass


class Unauthenticated(ServiceError):
    pass


class PermissionDenied(ServiceError):
    pass


class AlreadyExists(ServiceError):
    pass


class Unavailable(ServiceError):
    """The service could not be reached or is out of resources."""


class Aborted(ServiceError):
    """A concurrent update got there first; the same call may succeed when retried."""


_BY_CODE: dict[grpc.StatusCode, type[ServiceError]] = {
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: Unavailable,
    grpc.StatusCode.ABORTED: Aborted,
}


def from_rpc_error(err: grpc.RpcError) -> ServiceError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return _BY_CODE.get(code, ServiceError)(details or str(code))
