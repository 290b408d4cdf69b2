"""Who is calling: the address that failed sign-ins are counted by.

The connection's peer, unless the peer is one of the operator's proxies
(``trusted_proxies``): then the ``X-Forwarded-For`` entry that proxy appended, walking
right to left past every trusted proxy. A forwarded address from anyone else is ignored,
since a client can write anything there. An IPv6 client is counted by its /64, which one
host commonly holds whole.
"""

from __future__ import annotations

import ipaddress

from starlette.requests import HTTPConnection

from cmek.platform.addresses import IPAddress, IPNetwork, parse_address


def _address(text: str | None) -> IPAddress | None:
    try:
        return parse_address(text or "")
    except ValueError:
        return None


def _counted(ip: IPAddress) -> str:
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: tuple[IPNetwork, ...]) -> str:
    current = _address(peer)
    if current is None:
        return "unknown"
    hops = [h for h in (forwarded_for or "").split(",") if h.strip()]
    while hops and any(current in net for net in trusted):
        forwarded = _address(hops.pop())
        if forwarded is None:
            break  # a proxy we trust wrote something unreadable: count the proxy
        current = forwarded
    return _counted(current)


def of_request(request: HTTPConnection, trusted: tuple[IPNetwork, ...]) -> str:
    return client_address(request.client.host if request.client else None,
                          request.headers.get("x-forwarded-for"), trusted)
