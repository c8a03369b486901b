"""Error responses: every failure is a readable JSON body {"error": "..."}.

Handlers raise ApiError (or let a domain exception escape); the mapping from
domain exceptions to HTTP statuses lives only here."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from common import errors
from common.validation import InvalidValue
from dicomweb_gateway.media import MediaTypeError
from dicomweb_gateway.multipart import MultipartError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def not_acceptable(message: str) -> ApiError:
    return ApiError(406, message)


def unsupported_media_type(message: str) -> ApiError:
    return ApiError(415, message)


_SERVICE_STATUS: dict[type[errors.ServiceError], int] = {
    errors.NotFound: 404,
    errors.InvalidArgument: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.AlreadyExists: 409,
    errors.Unavailable: 503,
}


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=dict(headers or {}))


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message, exc.headers)


async def _http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_response(exc.status_code, exc.detail, exc.headers)


async def _service_error(_request: Request, exc: Exception) -> Response:
    status = next((code for cls, code in _SERVICE_STATUS.items() if isinstance(exc, cls)), 502)
    if status >= 500:
        # The message is about our backend, not about the caller's data.
        log.warning("backend call failed: %s: %s", type(exc).__name__, exc)
        message = "a backend service is unavailable" if status == 503 else "a backend service failed"
        headers = {"Retry-After": "5"} if status == 503 else None
        return error_response(status, message, headers)
    return error_response(status, str(exc))


async def _invalid(_request: Request, exc: Exception) -> Response:
    return error_response(400, str(exc))


async def _internal(_request: Request, _exc: Exception) -> Response:
    # Starlette's ServerErrorMiddleware re-raises afterwards, so the server logs the traceback.
    return error_response(500, "internal server error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    ApiError: _api_error,
    HTTPException: _http_exception,
    errors.ServiceError: _service_error,
    InvalidValue: _invalid,
    MultipartError: _invalid,
    MediaTypeError: _invalid,
    Exception: _internal,
}
