"""Where a tenant's warehouse connection may lead: the egress policy, with a resolver
the tests control (as a hostile DNS server would answer)."""

from __future__ import annotations

import pytest

from cmek.platform.warehouse.egress import DENIED, EgressPolicy, database_endpoints
from cmek.platform.warehouse.errors import EgressDenied, InvalidConnection, WarehouseUnreachable


class Dns:
    """A resolver answering from a table, counting lookups."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        name = host.lower().rstrip(".")
        if name in self.answers:
            return self.answers[name]
        try:
            import ipaddress

            return [str(ipaddress.ip_address(host))]
        except ValueError:
            return []


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.1.2.3", "::1", "0.0.0.0", "::",  # noqa: S104 - addresses, not a bind "10.1.2.3", "172.16.0.9",
    "192.168.1.1", "169.254.169.254", "fd00:ec2::254", "100.100.100.200", "100.64.0.1",
    "192.0.0.192", "224.0.0.1", "239.255.255.250", "ff02::1", "240.0.0.1",
    "255.255.255.255", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "2002:7f00:1::1",
    "64:ff9b::7f00:1", "fe80::1", "198.51.100.7",
])
def test_the_platforms_own_networks_are_refused(address: str) -> None:
    policy = EgressPolicy.parse([], resolve=Dns({"db.example.com": [address]}))
    for host in (address, "db.example.com"):
        with pytest.raises(EgressDenied) as info:
            policy.pin(host, 5432)
        assert info.value.code == "egress_denied"
        assert str(info.value) == DENIED  # one answer, whatever the reason: no map


@pytest.mark.parametrize("address", ["8.8.8.8", "2606:4700:4700::1111", "93.184.216.34"])
def test_public_addresses_are_reachable_and_pinned(address: str) -> None:
    dns = Dns({"db.example.com": [address]})
    policy = EgressPolicy.parse([], resolve=dns)
    assert policy.pin("db.example.com", 5432) == address
    assert dns.lookups == ["db.example.com"]  # resolved once: the address is what is used


def test_every_address_of_a_name_must_be_allowed() -> None:
    """A name answering a public and a private address (a rebinding trick) is refused."""
    dns = Dns({"mixed.example.com": ["8.8.8.8", "127.0.0.1"],
               "twice.example.com": ["8.8.4.4", "8.8.8.8", "8.8.4.4"]})
    policy = EgressPolicy.parse([], resolve=dns)
    with pytest.raises(EgressDenied):
        policy.pin("mixed.example.com", 5432)
    assert policy.pin("twice.example.com", 5432) == "8.8.4.4"


def test_the_operator_allows_networks_and_names() -> None:
    dns = Dns({"wh.internal": ["10.9.8.7"], "other.internal": ["10.9.8.8"],
               "named.internal": ["192.168.5.5"]})
    policy = EgressPolicy.parse(["10.9.8.7/32", "named.internal", "fd12::/16"], resolve=dns)
    assert policy.pin("wh.internal", 5432) == "10.9.8.7"
    assert policy.pin("NAMED.internal.", 5432) == "192.168.5.5"
    assert policy.pin("fd12::5", 5432) == "fd12::5"
    with pytest.raises(EgressDenied):
        policy.pin("other.internal", 5432)


def test_the_control_plane_database_is_never_reachable() -> None:
    """Even inside a range the operator allows, the platform's own database is blocked,
    on its port; other ports of the same host stay as the allow list says."""
    blocked = database_endpoints("postgresql://cmek@127.0.0.1:5432/cmek")
    policy = EgressPolicy.parse(["127.0.0.0/8"], blocked)
    for host in ("127.0.0.1", "127.0.0.2", "::ffff:127.0.0.1"):
        with pytest.raises(EgressDenied):
            policy.pin(host, 5432)
    assert policy.pin("127.0.0.1", 6543) == "127.0.0.1"


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql:///cmek?host=/var/run/postgresql", [("127.0.0.0/8", 5432), ("::1/128", 5432)]),
    ("postgresql://localhost:6000/cmek", [("127.0.0.0/8", 6000), ("::1/128", 6000)]),
    ("postgresql://db.internal/cmek", [("10.0.0.5", 5432)]),
    ("sqlite:////var/lib/cmek/control.sqlite3", []),
])
def test_database_endpoints(url: str, expected: list[tuple[str, int]]) -> None:
    assert database_endpoints(url, Dns({"db.internal": ["10.0.0.5"]})) == expected


@pytest.mark.parametrize("host", ["/var/run/postgresql", "@pg", "a,b", "db:5432", "fe80::1%lo",
                                  "-db.example.com", "db..example.com", "a b", "x" * 254])
def test_hosts_that_are_not_one_name_or_address_are_invalid(host: str) -> None:
    with pytest.raises(InvalidConnection) as info:
        EgressPolicy.parse([], resolve=Dns({})).pin(host, 5432)
    assert info.value.code == "invalid_connection"


def test_a_name_that_does_not_resolve_is_unreachable() -> None:
    with pytest.raises(WarehouseUnreachable):
        EgressPolicy.parse([], resolve=Dns({})).pin("nowhere.example.com", 5432)


def test_an_invalid_allow_entry_is_refused() -> None:
    with pytest.raises(InvalidConnection):
        EgressPolicy.parse(["10.0.0.0/8", "not a host"])
