"""Event targets registered at run time (the EventBridge PutRule/PutTargets stand-in),
their ``resources`` filter, and which failed deliveries are retried.

kmslocal only (dev routes). Each target's deliveries leave the outbox one at a time, in
the order the events were queued (targets are served side by side); so once a receiver
got an event, it already got every earlier event meant for it, and a test proves that
something was not delivered by waiting for a later marker event instead of for time to
pass.
"""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kmslocal import config as kmslocal_config
from tests.kmslocal_harness import (
    CUSTOMER,
    EVENT_SECRET,
    REGION,
    Delivery,
    EventSink,
    KmsLocal,
    about,
    event_name,
    free_port,
    has_events,
    header,
    write_config,
)
from tests.platform_harness import wait_until

ACCOUNT = "222222222222"
ROUTE = "/_kmslocal/event-targets"
CODE = "invalid_event_target"


def _target(url: str, secret: str = "", **extra: Any) -> dict[str, Any]:
    return {"account": ACCOUNT, "url": url, "secret_header": "X-Cmek-Event-Secret",
            "secret": secret, **extra}


def _http(server: KmsLocal, method: str, path: str, body: Any = None) -> httpx.Response:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    with httpx.Client(base_url=server.url, trust_env=False, timeout=10) as http:
        return http.request(method, path, content=content)


def _listing(server: KmsLocal) -> dict[str, Any]:
    response = _http(server, "GET", ROUTE)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _keys(got: list[Delivery]) -> list[tuple[str, str]]:
    """(key ARN, event name) of each delivery, in arrival order."""
    return [(e["resources"][0], event_name(e)) for _, e in got]


@pytest.fixture(scope="module")
def config_sink() -> Iterator[EventSink]:
    sink = EventSink()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, config_sink: EventSink
) -> Iterator[KmsLocal]:
    """A server of this module's own, whose config file has one target (every event of
    the customer account, to ``config_sink``)."""
    base = tmp_path_factory.mktemp("kmslocal-targets")
    local = KmsLocal(base / "data", write_config(base / "kmslocal.toml", config_sink.url))
    local.start()
    yield local
    local.stop()


@pytest.fixture
def sinks(server: KmsLocal) -> Iterator[list[EventSink]]:
    """Three receivers; the run-time targets are cleared afterwards."""
    made = [EventSink() for _ in range(3)]
    yield made
    server.set_event_targets([])
    for sink in made:
        sink.close()


def test_run_time_targets_receive_events_beside_config_targets(
    server: KmsLocal, config_sink: EventSink, sinks: list[EventSink]
) -> None:
    tenant_a, tenant_b, _ = sinks
    server.set_event_targets([_target(tenant_a.url, "secret-a")])
    server.add_event_target(
        {"account": ACCOUNT, "url": tenant_b.url, "secret_header": "X-Tenant-Secret",
         "secret": "secret-b"}
    )
    assert [t["url"] for t in _listing(server)["targets"]] == [tenant_a.url, tenant_b.url]
    customer = server.client(CUSTOMER)
    arn = customer.create_key()["KeyMetadata"]["Arn"]
    customer.disable_key(KeyId=arn)

    headers, event = tenant_a.collect(has_events("DisableKey"), about(arn))[0]
    assert header(headers) == "secret-a"
    assert (event["source"], event["account"], event["resources"]) == ("aws.kms", ACCOUNT, [arn])
    headers, _ = tenant_b.collect(has_events("DisableKey"), about(arn))[0]
    assert header(headers, "X-Tenant-Secret") == "secret-b"
    assert header(headers) is None
    headers, _ = config_sink.collect(has_events("DisableKey"), about(arn))[0]
    assert header(headers) == EVENT_SECRET  # the config file's target stays in effect

    # POST with a registered url replaces that target; PUT replaces the whole list.
    server.add_event_target(_target(tenant_a.url, "secret-a2"))
    assert [t["url"] for t in _listing(server)["targets"]] == [tenant_b.url, tenant_a.url]
    customer.enable_key(KeyId=arn)
    headers, _ = tenant_a.collect(has_events("EnableKey"), about(arn))[0]
    assert header(headers) == "secret-a2"
    server.set_event_targets([])
    assert _listing(server)["targets"] == []
    customer.disable_key(KeyId=arn)
    config_sink.collect(has_events("EnableKey", "DisableKey"), about(arn))


def test_resources_filter_delivers_only_events_about_those_keys(
    server: KmsLocal, sinks: list[EventSink]
) -> None:
    customer = server.client(CUSTOMER)
    k1, k2, k3, marker = (customer.create_key()["KeyMetadata"]["Arn"] for _ in range(4))
    only_k1, only_k2, everything = sinks
    server.set_event_targets([
        _target(only_k1.url, "s1", resources=[k1, marker]),
        _target(only_k2.url, "s2", resources=[k2, marker]),
        _target(everything.url, "s3"),
    ])
    for arn in (k1, k2, k3, marker):
        customer.disable_key(KeyId=arn)

    done = has_events("DisableKey")
    is_marker = about(marker)
    assert _keys(only_k1.collect(lambda got: any(is_marker(e) for _, e in got))) == [
        (k1, "DisableKey"), (marker, "DisableKey")
    ]
    assert _keys(only_k2.collect(lambda got: any(is_marker(e) for _, e in got))) == [
        (k2, "DisableKey"), (marker, "DisableKey")
    ]
    for arn in (k1, k2, k3, marker):
        everything.collect(done, about(arn))


def test_config_file_accepts_resources(tmp_path: Path) -> None:
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    path = tmp_path / "kmslocal.toml"
    path.write_text(
        f'region = "{REGION}"\n\n[[event_targets]]\naccount = "{ACCOUNT}"\n'
        f'url = "http://127.0.0.1:9/v1/tenants/acme/key-events"\nsecret = "s"\n'
        f'resources = ["{arn}"]\n'
    )
    (target,) = kmslocal_config.load(path).event_targets
    assert target.resources == (arn,)
    assert target.wants(ACCOUNT, [arn])
    assert not target.wants(ACCOUNT, [arn.replace("1234abcd", "99999999")])
    assert not target.wants("333333333333", [arn])


@pytest.mark.parametrize("status", [401, 407, 409, 429, 500, 503])
def test_retried_statuses_are_retried(
    server: KmsLocal, sinks: list[EventSink], status: int
) -> None:
    sink = sinks[0]
    sink.fail_status, sink.fail_next = status, 1
    server.set_event_targets([_target(sink.url, "s")])
    customer = server.client(CUSTOMER)
    arn = customer.create_key()["KeyMetadata"]["Arn"]
    customer.disable_key(KeyId=arn)
    _, event = sink.collect(has_events("DisableKey"), about(arn))[0]
    assert [(s, e["id"]) for s, e in sink.refused] == [(status, event["id"])]


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_other_4xx_drop_the_event_with_a_warning(
    server: KmsLocal, sinks: list[EventSink], status: int
) -> None:
    sink, secret = sinks[0], f"secret-never-logged-{status}"
    sink.fail_status, sink.fail_next = status, 1
    server.set_event_targets([_target(sink.url, secret)])
    customer = server.client(CUSTOMER)
    arn = customer.create_key()["KeyMetadata"]["Arn"]
    customer.disable_key(KeyId=arn)
    warning = f"dropped an event for {sink.url}: HTTP {status} is not retried"
    wait_until(lambda: any(warning in line for line in list(server.output)))
    customer.enable_key(KeyId=arn)  # the marker: delivered, and the dropped one never is

    got = sink.collect(has_events("EnableKey"), about(arn))
    assert [event_name(e) for _, e in got] == ["EnableKey"]
    assert [(s, event_name(e)) for s, e in sink.refused] == [(status, "DisableKey")]
    assert not [line for line in list(server.output) if secret in line]


def test_unreachable_target_is_retried(server: KmsLocal, sinks: list[EventSink]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/tenants/acme/key-events"
    server.set_event_targets([_target(url, "s")])
    customer = server.client(CUSTOMER)
    arn = customer.create_key()["KeyMetadata"]["Arn"]
    customer.disable_key(KeyId=arn)

    def refused_once() -> bool:
        db = sqlite3.connect(server.data_dir / "kmslocal.sqlite3")
        try:
            rows = db.execute("SELECT attempts FROM outbox WHERE url=?", (url,)).fetchall()
        finally:
            db.close()
        return bool(rows) and rows[0][0] >= 1

    wait_until(refused_once)
    late = EventSink(port)  # the receiver comes up after the first attempt failed
    try:
        late.collect(has_events("DisableKey"), about(arn))
    finally:
        late.close()


def attempts(server: KmsLocal, url: str) -> list[int]:
    """The delivery attempts of the events still waiting for ``url``."""
    db = sqlite3.connect(server.data_dir / "kmslocal.sqlite3")
    try:
        return [int(a) for (a,) in db.execute("SELECT attempts FROM outbox WHERE url=?",
                                                (url,))]
    finally:
        db.close()


def test_a_target_that_never_answers_holds_back_no_other(
    server: KmsLocal, sinks: list[EventSink]
) -> None:
    """A target that accepts and never answers: the other target gets its events while
    the first attempt at the silent one is still waiting for an answer (the 5 s delivery
    timeout has not run out; a sink on loopback answers within milliseconds)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # connections complete in the backlog; nothing ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/tenants/acme/key-events"
        sink = sinks[0]
        server.set_event_targets([_target(url, "s"), _target(sink.url, "s")])
        customer = server.client(CUSTOMER)
        arn = customer.create_key()["KeyMetadata"]["Arn"]
        customer.disable_key(KeyId=arn)
        sink.collect(has_events("DisableKey"), about(arn))
        assert attempts(server, url) == [0]  # still the first attempt, in flight
        server.remove_event_target(url)


def test_removing_a_target(server: KmsLocal, config_sink: EventSink,
                           sinks: list[EventSink]) -> None:
    kept, removed, _ = sinks
    server.set_event_targets([_target(kept.url, "k"), _target(removed.url, "r")])
    server.remove_event_target(removed.url)
    assert [t["url"] for t in _listing(server)["targets"]] == [kept.url]
    for url, why in ((removed.url, "no run-time target"),
                     (config_sink.url, "config file")):
        refused = _http(server, "DELETE", f"{ROUTE}?url={url}")
        assert refused.status_code == 400
        assert refused.json()["code"] == CODE
        assert why in refused.json()["error"]
    customer = server.client(CUSTOMER)
    arn, marker = (customer.create_key()["KeyMetadata"]["Arn"] for _ in range(2))
    customer.disable_key(KeyId=arn)
    kept.collect(has_events("DisableKey"), about(arn))
    server.add_event_target(_target(removed.url, "r", resources=[marker]))
    customer.disable_key(KeyId=marker)  # what the removed target gets first, if anything
    is_marker = about(marker)
    got = removed.collect(lambda got: any(is_marker(e) for _, e in got))
    assert _keys(got) == [(marker, "DisableKey")]


def test_run_time_targets_survive_restart(tmp_path: Path) -> None:
    sink = EventSink()
    local = KmsLocal(tmp_path / "data", write_config(tmp_path / "kmslocal.toml", None))
    local.start()
    try:
        customer = local.client(CUSTOMER)
        arn = customer.create_key()["KeyMetadata"]["Arn"]
        local.set_event_targets([_target(sink.url, "kept-secret", resources=[arn])])
        before = _listing(local)
        local.restart()
        assert _listing(local) == before
        assert before["targets"] == [
            {"account": ACCOUNT, "url": sink.url, "secret_header": "X-Cmek-Event-Secret",
             "secret": "***", "resources": [arn]}
        ]
        local.client(CUSTOMER).disable_key(KeyId=arn)
        headers, _ = sink.collect(has_events("DisableKey"), about(arn))[0]
        assert header(headers) == "kept-secret"
    finally:
        local.stop()
        sink.close()


def test_event_target_routes_absent_without_dev(tmp_path: Path) -> None:
    local = KmsLocal(tmp_path / "data", write_config(tmp_path / "kmslocal.toml", None), dev=False)
    local.start()
    try:
        assert _http(local, "GET", ROUTE).status_code == 404
        body = {"targets": [_target("http://127.0.0.1:9/x", "s")]}
        assert _http(local, "PUT", ROUTE, body).status_code == 404
        assert _http(local, "POST", ROUTE, body["targets"][0]).status_code == 404
        assert _http(local, "GET", "/_kmslocal/health").status_code == 200
    finally:
        local.stop()


_GOOD = _target("http://127.0.0.1:9/v1/tenants/acme/key-events", "bad-body-secret-1f2e")
_ARN = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BAD_BODIES: dict[str, tuple[str, Any, str]] = {
    "not-json": ("PUT", b'{"targets": [', "body must be"),
    "not-an-object": ("PUT", [_GOOD], "body must be"),
    "no-targets": ("PUT", {}, "body must be"),
    "extra-field": ("PUT", {"targets": [], "rules": []}, "body must be"),
    "targets-not-a-list": ("PUT", {"targets": _GOOD}, "targets: must be a list"),
    "target-not-an-object": ("PUT", {"targets": ["http://x"]}, "targets[0]: must be a table"),
    "unknown-field": ("PUT", {"targets": [{**_GOOD, "resource": [_ARN]}]}, "'resource'"),
    "no-account": ("PUT", {"targets": [{"url": _GOOD["url"]}]}, "'account'"),
    "short-account": ("PUT", {"targets": [{**_GOOD, "account": "2222"}]}, "12 digits"),
    "url-not-http": ("PUT", {"targets": [{**_GOOD, "url": "ftp://x/y"}]}, "http(s)"),
    "url-not-a-string": ("PUT", {"targets": [{**_GOOD, "url": 80}]}, "'url'"),
    "header-not-a-name": (
        "PUT", {"targets": [{**_GOOD, "secret_header": "X Secret:"}]}, "header name"
    ),
    "secret-not-a-string": ("PUT", {"targets": [{**_GOOD, "secret": 7}]}, "'secret'"),
    "resources-empty": ("PUT", {"targets": [{**_GOOD, "resources": []}]}, "non-empty list"),
    "resources-not-a-list": ("PUT", {"targets": [{**_GOOD, "resources": _ARN}]}, "list"),
    "resource-of-another-account": (
        "PUT", {"targets": [{**_GOOD, "resources": [_ARN.replace(ACCOUNT, "333333333333")]}]},
        "resources[0]",
    ),
    "resource-in-another-region": (
        "PUT", {"targets": [{**_GOOD, "resources": [_ARN.replace(REGION, "eu-west-1")]}]},
        "resources[0]",
    ),
    "resource-an-alias": (
        "PUT",
        {"targets": [{**_GOOD, "resources": [_ARN, f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/a"]}]},
        "resources[1]",
    ),
    "duplicate-url": ("PUT", {"targets": [_GOOD, {**_GOOD, "secret": "x"}]}, "targets[1]: url"),
    "post-not-an-object": ("POST", [_GOOD], "target: must be a table"),
    "post-short-account": ("POST", {**_GOOD, "account": "x"}, "target: account"),
}


def _assert_refused(response: httpx.Response, mention: str) -> None:
    assert response.status_code == 400, response.text
    body = response.json()
    assert set(body) == {"error", "code"}
    assert body["code"] == CODE
    assert mention in body["error"]
    assert "\n" not in body["error"]
    assert "Traceback" not in response.text
    assert str(_GOOD["secret"]) not in response.text


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_bad_bodies_are_refused_with_a_one_line_error(
    server: KmsLocal, sinks: list[EventSink], case: str
) -> None:
    server.set_event_targets([_target(sinks[0].url, "s")])
    before = _listing(server)
    method, body, mention = BAD_BODIES[case]
    _assert_refused(_http(server, method, ROUTE, body), mention)
    assert _listing(server) == before  # nothing changed


def test_a_config_file_target_cannot_be_registered_again(
    server: KmsLocal, config_sink: EventSink, sinks: list[EventSink]
) -> None:
    before = _listing(server)
    again = {**_GOOD, "url": config_sink.url}
    _assert_refused(_http(server, "PUT", ROUTE, {"targets": [again]}), "targets[0]: url")
    _assert_refused(_http(server, "POST", ROUTE, again), "target: url")
    assert _listing(server) == before


def test_config_file_and_dev_route_refuse_alike(tmp_path: Path, server: KmsLocal) -> None:
    """One validator: the same target is refused with the same words by both."""
    bad = {**_GOOD, "resources": [_ARN.replace(ACCOUNT, "333333333333")]}
    path = tmp_path / "kmslocal.toml"
    lines = [f'region = "{REGION}"', "", "[[event_targets]]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in bad.items()]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(kmslocal_config.ConfigError) as caught:
        kmslocal_config.load(path)
    response = _http(server, "PUT", ROUTE, {"targets": [bad]})
    assert response.status_code == 400
    assert str(caught.value).removeprefix("event_targets") == (
        response.json()["error"].removeprefix("targets")
    )


def test_listings_never_show_secrets(
    server: KmsLocal, sinks: list[EventSink]
) -> None:
    secrets = ["tenant-secret-9c1d", "tenant-secret-4b7e"]
    replaced = _http(server, "PUT", ROUTE, {"targets": [_target(sinks[0].url, secrets[0])]})
    added = _http(server, "POST", ROUTE, _target(sinks[1].url, secrets[1]))
    no_secret = _http(server, "POST", ROUTE, {"account": ACCOUNT, "url": sinks[2].url})
    listed = _http(server, "GET", ROUTE)
    for response in (replaced, added, no_secret, listed):
        assert response.status_code == 200, response.text
        for secret in [*secrets, EVENT_SECRET]:
            assert secret not in response.text
    body = listed.json()
    assert [t["secret"] for t in body["targets"]] == ["***", "***", ""]
    assert [t["secret"] for t in body["config_targets"]] == ["***"]
    assert body == no_secret.json()
