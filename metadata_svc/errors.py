"""Errors of the index that the service maps to gRPC status codes (bad
input is common.validation.InvalidValue)."""

from __future__ import annotations


class NotFoundError(LookupError):
    """Nothing in the index matches the request."""
