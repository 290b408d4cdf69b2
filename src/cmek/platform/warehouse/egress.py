"""Where a tenant's warehouse connection may lead.

A tenant admin is an adversary here: a host name is its choice, so it must never reach
the platform's own host or network (loopback, private and link-local ranges, cloud
metadata addresses, Unix sockets) unless the operator allows that destination. A name is
resolved once; every address it resolves to must be allowed, and the connection is then
pinned to the first, so that a second lookup (DNS rebinding) cannot move it elsewhere.
The control plane's own database is never reachable, even inside an allowed range.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from cmek.platform.addresses import IPAddress, IPNetwork, parse_address
from cmek.platform.warehouse.errors import EgressDenied, InvalidConnection, WarehouseUnreachable

Resolver = Callable[[str, int], list[str]]

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(?:\.{_LABEL})*\.?$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Not globally routable, whatever the Python version's tables say: IETF protocol
# assignments (192.0.0.192 is a cloud metadata address there).
_NOT_PUBLIC = (ipaddress.IPv4Network("192.0.0.0/24"),)
DENIED = "config.host is not an address the platform lets tenants reach"


def host_syntax(host: str) -> str:
    """A single DNS name or IP literal: never a socket path, a list, a port or an interface
    zone (which names this host's own link)."""
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    if "%" in host or not (literal or _HOST_NAME.match(host)):
        raise InvalidConnection("config.host must be one DNS name or IP address "
                                "(no socket path, list, port or zone)")
    return host


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped, 6to4, Teredo or NAT64 IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_public(ip: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local (169.254.169.254, the
    cloud metadata address, is one), shared, reserved, unspecified or multicast."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            return is_public(inner)
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                 or any(ip in net for net in _NOT_PUBLIC))


def _getaddrinfo(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class EgressPolicy:
    """Public addresses, plus what the operator allows; minus what is always blocked."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    allowed_hosts: frozenset[str] = frozenset()
    blocked: tuple[tuple[IPNetwork, int], ...] = ()
    resolve: Resolver = field(default=_getaddrinfo, compare=False)

    @classmethod
    def parse(cls, allow: Iterable[str], blocked: Iterable[tuple[str, int]] = (),
              resolve: Resolver = _getaddrinfo) -> EgressPolicy:
        """``allow``: CIDRs, IP addresses or host names (a name is allowed whatever it
        resolves to: the operator vouches for it)."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in allow:
            entry = entry.strip()
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(host_syntax(entry).lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts),
                   tuple((ipaddress.ip_network(n, strict=False), p) for n, p in blocked),
                   resolve)

    def allows(self, host: str, ip: IPAddress, port: int) -> bool:
        if any(port == p and ip in net for net, p in self.blocked):
            return False
        if host.lower().rstrip(".") in self.allowed_hosts:
            return True
        return is_public(ip) or any(ip in net for net in self.allowed_networks)

    def pin(self, host: str, port: int) -> str:
        """The address to connect to: every address of ``host`` checked, the first used.
        One message for every refusal, so the answer maps nothing of the network."""
        host_syntax(host)
        found = self.resolve(host, port)
        if not found:
            raise WarehouseUnreachable("config.host does not resolve")
        addresses = [parse_address(a) for a in dict.fromkeys(found)]
        if not all(self.allows(host, ip, port) for ip in addresses):
            raise EgressDenied(DENIED)
        return str(addresses[0])


def database_endpoints(url: str, resolve: Resolver = _getaddrinfo) -> list[tuple[str, int]]:
    """The control plane's PostgreSQL server as (network, port) pairs, to block them. A
    server reached by socket or on loopback answers on every loopback address."""
    if not url.startswith("postgresql://"):
        return []
    parts = urlsplit(url)
    port = parts.port or 5432
    host = parts.hostname
    found = [] if host is None or host.startswith("/") else resolve(host, port)
    if host is None or host.startswith("/") or host == "localhost" or any(
            parse_address(a).is_loopback for a in found):
        return [("127.0.0.0/8", port), ("::1/128", port)]
    return [(a, port) for a in found]
