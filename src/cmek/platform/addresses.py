"""IP addresses as the platform compares them: an IPv4-mapped IPv6 address is the IPv4
address it carries, so that one host never counts as two (for sign-in throttling) and
no mapped form slips past an egress rule."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> IPAddress:
    """``[::1]``, ``fe80::1%eth0`` and ``::ffff:10.0.0.1`` read as their address;
    ValueError if ``text`` is none."""
    ip = ipaddress.ip_address(text.strip().strip("[]").split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs or addresses; ValueError names the first that is neither."""
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries)
