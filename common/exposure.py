"""Authentication may be off only while nothing listens beyond loopback.

An edge calls `require_auth_unless_loopback` before it serves: when any of its
listeners is reachable from the network, it asks auth_svc whether
authentication is on, and refuses to start when it is not."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping

from common import errors
from common.clients import AuthClient


class ExposedWithoutAuth(RuntimeError):
    """The service must not start; the message names the listener."""


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a DNS name or "" (all interfaces) may be reachable from elsewhere


def host_of(address: str) -> str:
    """The host part of "host:port", "[v6]:port" or a bare host."""
    address = address.strip()
    if address.startswith("["):
        return address[1 : address.index("]")]
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    return address


def exposed(listeners: Mapping[str, str]) -> dict[str, str]:
    """The listeners (name -> host or host:port) not bound to loopback."""
    return {name: addr for name, addr in listeners.items() if not is_loopback(host_of(addr))}


def require_auth_unless_loopback(auth: AuthClient, listeners: Mapping[str, str], wait_seconds: float = 60.0) -> None:
    """Returns when every listener is loopback or auth_svc says authentication
    is on; raises ExposedWithoutAuth otherwise, or when auth_svc does not
    answer within `wait_seconds` (failing closed)."""
    outside = exposed(listeners)
    if not outside:
        return
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            policy = auth.describe_policy(timeout=5.0)
            break
        except errors.ServiceError as exc:
            if time.monotonic() >= deadline:
                raise ExposedWithoutAuth(
                    f"refusing to start: {', '.join(f'{n} {a}' for n, a in outside.items())} is not loopback "
                    f"and auth_svc did not say whether authentication is on ({exc})"
                ) from None
            time.sleep(1.0)
    if not policy.auth_enabled:
        raise ExposedWithoutAuth(
            f"refusing to start: authentication is off (DICOMSERVER_AUTH_ENABLED=false in auth_svc) and "
            f"{', '.join(f'{n} {a}' for n, a in outside.items())} is not loopback; "
            "configure authentication or bind to 127.0.0.1"
        )
