"""Grammar checks for values that become keys: UIDs and tenant ids."""

from __future__ import annotations

import re

# PS3.5 9.1: digits and dots, at most 64 characters. Leading zeros inside a
# component are tolerated because real modalities emit them.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_TENANT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class InvalidValue(ValueError):
    """A value that breaks its grammar; the message names it."""


def is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: str, name: str = "UID") -> str:
    if not is_uid(value):
        raise InvalidValue(f"{name} is not a valid UID (digits and dots, at most 64 characters)")
    return value


def check_tenant(value: str) -> str:
    if _TENANT.fullmatch(value) is None:
        raise InvalidValue("tenant must be 1-63 lower-case letters, digits, '-' or '_'")
    return value
