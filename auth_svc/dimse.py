"""DIMSE peers to principals: the calling AE title and the peer's address
against the configured rules, first match wins."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from auth_svc.settings import DimseRule, Network

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def peer_ip(address: str) -> Address | None:
    """The IP of "10.1.2.3", "10.1.2.3:104", "fd00::5", "[fd00::5]:104";
    an IPv4-mapped IPv6 address as its IPv4 address; None if unparseable."""
    text = address.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class _Rule:
    ae_title: str
    networks: tuple[Network, ...]
    source: DimseRule

    def admits(self, calling_ae_title: str, ip: Address | None) -> bool:
        if not calling_ae_title or self.ae_title not in ("*", calling_ae_title):
            return False
        if not self.networks:
            return True
        return ip is not None and any(ip in network for network in self.networks)


class DimseRules:
    def __init__(self, rules: Sequence[DimseRule]) -> None:
        self._rules = [_Rule(r.calling_ae_title, tuple(r.parsed_networks()), r) for r in rules]

    def match(self, calling_ae_title: str, peer_address: str) -> DimseRule | None:
        """The first rule admitting this calling AE title from this address."""
        ip = peer_ip(peer_address)
        return next((r.source for r in self._rules if r.admits(calling_ae_title, ip)), None)
