"""The pages over plain HTTP against a real platform process: cookie flags, CSRF refusals,
no-store, the locked notice, and tenants kept apart. (tests/test_web_browser.py drives the
same pages in Chromium.)"""

from __future__ import annotations

import re
from collections.abc import Iterator
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest

from cmek.platform.web import security
from cmek.platform.web.charts import result_bars, usage_chart
from tests.kmslocal_harness import CUSTOMER
from tests.platform_harness import OPERATOR_TOKEN, wait_until
from tests.reliability import record
from tests.web_support import (
    ADMIN,
    ANALYST,
    Stack,
    Tenant,
    hidden_field,
    key_state,
    seed_tenant,
    start_stack,
)

# Every page of a tenant, with a text it shows when it serves (the key page: the ARN).
PAGES = {"/": "Sales overview", "/liveboards": "Sales overview", "/answers": "Orders by region",
         "/tables": "Revenue by region (", "/models": "Revenue model",
         "/liveboards/overview": " North", "/answers/revenue-by-region": "2,400",
         "/tables/sales": "revenue_usd", "/models/revenue": 'href="/t/{t}/tables/sales"',
         "/search?q=revenue": "Revenue by region", "/key": "{arn}"}


class Visitor:
    """An HTTP client that keeps cookies as a browser on a secure context does: httpx's
    own jar would not send Secure cookies over http://127.0.0.1."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30, trust_env=False)
        self.cookies: dict[str, str] = {}
        self.set_cookies: list[str] = []

    def request(self, method: str, path: str, data: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> httpx.Response:
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        r = self.http.request(method, path, headers=headers, data=data)
        for raw in r.headers.get_list("set-cookie"):
            self.set_cookies.append(raw)
            for name, morsel in SimpleCookie(raw).items():
                if morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return r

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def post(self, path: str, data: dict[str, str],
             headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("POST", path, data, headers)

    def sign_in(self, tenant: str, email: str, password: str) -> httpx.Response:
        form = self.get(f"/t/{tenant}/signin")
        return self.post(f"/t/{tenant}/signin", data={
            "email": email, "password": password, "csrf": hidden_field(form.text, "csrf")})

    def session(self, tenant: str) -> str:
        return self.cookies[security.session_cookie(tenant)]

    def close(self) -> None:
        self.http.close()


def flags(raw: str) -> dict[str, str]:
    parts = [p.strip() for p in raw.split(";")]
    out = {"name": parts[0].split("=", 1)[0]}
    for p in parts[1:]:
        key, _, value = p.partition("=")
        out[key.lower()] = value.lower() if value else "yes"
    return out


def cookie_set(visitor: Visitor, name: str) -> dict[str, str]:
    found = [flags(raw) for raw in visitor.set_cookies if raw.startswith(f"{name}=")]
    assert found, f"no Set-Cookie for {name}"
    return found[-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("web"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warehouses")


@pytest.fixture(scope="module")
def a(stack: Stack, folder: Path) -> Tenant:
    return seed_tenant(stack, folder, prefix="a")


@pytest.fixture(scope="module")
def b(stack: Stack, folder: Path) -> Tenant:
    return seed_tenant(stack, folder, prefix="b")


@pytest.fixture
def visitor(stack: Stack) -> Iterator[Visitor]:
    v = Visitor(stack.platform.url)
    yield v
    v.close()


def test_the_web_session_is_a_platform_session_in_a_secure_cookie(
        stack: Stack, a: Tenant, visitor: Visitor) -> None:
    form = visitor.get(f"/t/{a.name}/signin")
    assert form.status_code == 200
    csrf = cookie_set(visitor, security.CSRF_COOKIE)
    assert (csrf["secure"], csrf["httponly"], csrf["samesite"], csrf["path"]) == (
        "yes", "yes", "strict", "/")
    r = visitor.post(f"/t/{a.name}/signin", data={
        "email": ADMIN[0], "password": ADMIN[1], "csrf": hidden_field(form.text, "csrf")})
    assert r.status_code == 303
    assert r.headers["location"] == f"/t/{a.name}/"
    session = cookie_set(visitor, security.session_cookie(a.name))
    assert (session["secure"], session["httponly"], session["samesite"], session["path"]) == (
        "yes", "yes", "lax", "/")
    assert 0 < int(session["max-age"]) <= 8 * 3600
    token = visitor.session(a.name)
    with stack.platform.client(token) as api:  # the very session the API knows
        assert api.get(f"/v1/tenants/{a.name}/objects/liveboards/overview").status_code == 200

    for path in PAGES:
        page = visitor.get(f"/t/{a.name}{path}")
        assert page.status_code == 200, path
        assert page.headers["cache-control"] == "no-store", path
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["content-type"].startswith("text/html")
        assert PAGES[path].format(t=a.name, arn=a.key_arn) in page.text, path
    liveboard = visitor.get(f"/t/{a.name}/liveboards/overview").text
    assert liveboard.count('<svg class="chart"') == 2
    assert f"{a.marker} North" in liveboard
    assert "1,200.5" in liveboard

    csrf_token = hidden_field(visitor.get(f"/t/{a.name}/").text, "csrf")
    out = visitor.post(f"/t/{a.name}/signout", data={"csrf": csrf_token})
    assert out.status_code == 303
    assert security.session_cookie(a.name) not in visitor.cookies
    with stack.platform.client(token) as api:  # signing out revoked the platform session
        assert api.get(f"/v1/tenants/{a.name}/objects/liveboards/overview").status_code == 401
    again = visitor.get(f"/t/{a.name}/liveboards/overview")
    assert again.status_code == 303
    assert again.headers["location"] == f"/t/{a.name}/signin?next=/t/{a.name}/liveboards/overview"
    assert visitor.get("/static/web.css").headers["content-type"].startswith("text/css")


def test_forms_without_their_csrf_token_are_refused(stack: Stack, a: Tenant,
                                                    visitor: Visitor) -> None:
    signin = f"/t/{a.name}/signin"
    creds = {"email": ADMIN[0], "password": ADMIN[1]}
    assert visitor.post(signin, data=creds).status_code == 403  # no cookie, no field
    form = visitor.get(signin)
    token = hidden_field(form.text, "csrf")
    assert visitor.post(signin, data={**creds, "csrf": "x" + token}).status_code == 403
    cross = visitor.post(signin, data={**creds, "csrf": token},
                         headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403
    assert security.session_cookie(a.name) not in visitor.cookies
    assert visitor.post(signin, data={**creds, "csrf": token}).status_code == 303

    page_token = hidden_field(visitor.get(f"/t/{a.name}/").text, "csrf")
    assert page_token == security.session_csrf(visitor.session(a.name))
    assert visitor.post(f"/t/{a.name}/signout", data={}).status_code == 403
    assert visitor.post(f"/t/{a.name}/signout", data={"csrf": token}).status_code == 403
    assert visitor.post(f"/t/{a.name}/key/check", data={}).status_code == 403
    other = Visitor(stack.platform.url)  # the same user's other session has its own token
    other.sign_in(a.name, *ADMIN)
    assert other.post(f"/t/{a.name}/signout", data={"csrf": page_token}).status_code == 403
    other.close()
    assert visitor.get(f"/t/{a.name}/").status_code == 200  # still signed in
    console = visitor.get(f"/t/{a.name}/key").text
    assert "(provisioning)" in console  # no check ran
    checked = visitor.post(f"/t/{a.name}/key/check", data={"csrf": page_token})
    assert checked.status_code == 303
    assert "(requested)" in visitor.get(f"/t/{a.name}/key").text

    ops = Visitor(stack.platform.url)
    assert ops.post("/ops/signin", data={"token": OPERATOR_TOKEN}).status_code == 403
    assert security.OPS_COOKIE not in ops.cookies
    ops.close()


def test_wrong_password_and_foreign_next_urls(a: Tenant, b: Tenant, visitor: Visitor) -> None:
    token = _fresh_form(visitor, a.name)
    wrong = visitor.post(f"/t/{a.name}/signin", data={
        "email": ADMIN[0], "password": "not the password", "csrf": token})
    assert wrong.status_code == 401
    assert "Wrong email or password" in wrong.text
    assert security.session_cookie(a.name) not in visitor.cookies
    for target in ("//evil.example/x", f"/t/{b.name}/", f"/t/{a.name}//evil.example",
                   f"/t/{a.name}/liveboards/overview"):
        r = visitor.post(f"/t/{a.name}/signin", data={
            "email": ADMIN[0], "password": ADMIN[1], "csrf": _fresh_form(visitor, a.name),
            "next": target})
        assert r.status_code == 303
        expected = target if target.endswith("/overview") else f"/t/{a.name}/"
        assert r.headers["location"] == expected, target


def test_password_guessing_on_the_sign_in_page_is_throttled(stack: Stack,
                                                            visitor: Visitor) -> None:
    tenant = stack.platform.new_tenant(stack.kms)  # its own, so no other test is locked out
    email, password = "admin@example.com", "correct horse battery"
    for _ in range(5):  # CMEK_LOGIN_MAX_FAILURES, default 5
        r = visitor.post(f"/t/{tenant}/signin", data={
            "email": email, "password": "a guess", "csrf": _fresh_form(visitor, tenant)})
        assert r.status_code == 401
    r = visitor.post(f"/t/{tenant}/signin", data={
        "email": email, "password": password, "csrf": _fresh_form(visitor, tenant)})
    assert r.status_code == 429  # even the right password, while the lockout lasts
    assert int(r.headers["Retry-After"]) > 0
    assert "Too many failed sign-ins" in r.text
    assert security.session_cookie(tenant) not in visitor.cookies


def _fresh_form(visitor: Visitor, tenant: str) -> str:
    """A new sign-in form (a signed-in visitor would be sent on instead)."""
    visitor.cookies.pop(security.session_cookie(tenant), None)
    return hidden_field(visitor.get(f"/t/{tenant}/signin").text, "csrf")


def test_another_tenants_session_gets_nothing(stack: Stack, a: Tenant, b: Tenant) -> None:
    alice, bob = Visitor(stack.platform.url), Visitor(stack.platform.url)
    assert alice.sign_in(a.name, *ADMIN).status_code == 303
    assert bob.sign_in(b.name, *ADMIN).status_code == 303
    a_token = alice.session(a.name)
    for path in PAGES:
        for cookie in (f"{security.session_cookie(b.name)}={a_token}",  # A's token as B's
                       f"{security.session_cookie(a.name)}={a_token}"):  # A's own cookie
            r = alice.http.get(f"/t/{b.name}{path}", headers={"Cookie": cookie})
            assert r.status_code == 303, (path, cookie)
            assert r.headers["location"].startswith(f"/t/{b.name}/signin")
            assert b.marker not in r.text
        mine = bob.get(f"/t/{b.name}{path}")
        assert mine.status_code == 200, path
        assert a.marker not in mine.text, path  # no page of B shows anything of A
        assert a.name not in mine.text, path
    search = bob.get(f"/t/{b.name}/search?q={a.marker}")
    assert "0 results" in search.text
    record("isolation", "probes", 2 * len(PAGES) + 1)
    alice.close()
    bob.close()


def test_analysts_have_no_key_console(stack: Stack, a: Tenant, visitor: Visitor) -> None:
    assert visitor.sign_in(a.name, *ANALYST).status_code == 303
    home = visitor.get(f"/t/{a.name}/")
    assert f'href="/t/{a.name}/key"' not in home.text
    assert visitor.get(f"/t/{a.name}/key").status_code == 403
    check = visitor.post(f"/t/{a.name}/key/check", data={"csrf": hidden_field(home.text, "csrf")})
    assert check.status_code == 403


def test_a_locked_tenant_shows_only_the_notice(stack: Stack, folder: Path) -> None:
    c = seed_tenant(stack, folder, prefix="c")
    admin, analyst, anonymous = (Visitor(stack.platform.url) for _ in range(3))
    admin.sign_in(c.name, *ADMIN)
    analyst.sign_in(c.name, *ANALYST)
    ops = Visitor(stack.platform.url)
    form = ops.get("/ops")
    ops.post("/ops/signin", data={"token": OPERATOR_TOKEN, "csrf": hidden_field(form.text,
                                                                                 "csrf")})
    kms = stack.kms.client(CUSTOMER)
    kms.disable_key(KeyId=c.key_arn)
    wait_until(lambda: key_state(stack, c.name)["state"] == "locked")

    for path in (*PAGES, "/signin"):
        for who, countdowns in ((admin, True), (analyst, False), (anonymous, False)):
            r = who.get(f"/t/{c.name}{path}")
            assert r.status_code == 423, path
            assert r.headers["cache-control"] == "no-store"
            assert c.marker not in r.text
            assert "Sales overview" not in r.text
            assert "disabled" in r.text
            assert ("Restore window ends" in r.text) is countdowns, path
            assert ("Live stores kept until" in r.text) is countdowns, path
    assert 'name="password"' not in anonymous.get(f"/t/{c.name}/signin").text
    anonymous.cookies[security.CSRF_COOKIE] = form_token = security.new_form_token()
    refused = anonymous.post(f"/t/{c.name}/signin", data={
        "email": ADMIN[0], "password": ADMIN[1], "csrf": form_token})
    assert refused.status_code == 423
    assert security.session_cookie(c.name) not in anonymous.cookies
    listing = ops.get("/ops").text  # the list shows the countdowns of the locked tenant
    row = listing[listing.index(f"<strong>{c.name}</strong>"):]
    row = row[:row.index("</tr>")]
    assert "Restore window ends: <span" in row
    assert "Live stores kept until" in row
    console = ops.get(f"/ops/tenants/{c.name}/key")  # the operator still sees the key
    assert console.status_code == 200
    assert "Restore window ends" in console.text
    assert re.search(r'badge active">active</span> → <span class="badge locked">locked'
                     r'</span> <code>disabled</code>', console.text)

    kms.schedule_key_deletion(KeyId=c.key_arn, PendingWindowInDays=7)
    wait_until(lambda: key_state(stack, c.name)["state"] == "pending_deletion")
    notice = admin.get(f"/t/{c.name}/liveboards/overview")
    assert notice.status_code == 423
    assert "KMS deletion date" in notice.text
    assert "cancel-key-deletion" in notice.text
    assert "KMS deletion date" not in analyst.get(f"/t/{c.name}/").text

    kms.cancel_key_deletion(KeyId=c.key_arn)
    kms.enable_key(KeyId=c.key_arn)
    wait_until(lambda: key_state(stack, c.name)["state"] == "active")
    old = admin.get(f"/t/{c.name}/liveboards/overview")  # that session ended with the lock
    assert old.status_code == 303
    assert security.session_cookie(c.name) not in admin.cookies
    assert admin.sign_in(c.name, *ADMIN).status_code == 303
    back = admin.get(f"/t/{c.name}/liveboards/overview")
    assert back.status_code == 200
    assert f"{c.marker} North" in back.text
    for v in (admin, analyst, anonymous, ops):
        v.close()


def test_operator_console(stack: Stack, a: Tenant, b: Tenant, visitor: Visitor) -> None:
    form = visitor.get("/ops")
    assert form.status_code == 200
    assert 'name="token"' in form.text
    token = hidden_field(form.text, "csrf")
    wrong = visitor.post("/ops/signin", data={"token": "not-the-token", "csrf": token})
    assert wrong.status_code == 401
    assert security.OPS_COOKIE not in visitor.cookies
    r = visitor.post("/ops/signin", data={"token": OPERATOR_TOKEN, "csrf": token})
    assert r.status_code == 303
    cookie = cookie_set(visitor, security.OPS_COOKIE)
    assert (cookie["secure"], cookie["httponly"], cookie["samesite"]) == ("yes", "yes", "strict")
    assert OPERATOR_TOKEN not in visitor.cookies[security.OPS_COOKIE]

    tenants = visitor.get("/ops")
    assert tenants.headers["cache-control"] == "no-store"
    for t in (a, b):
        assert f'href="/ops/tenants/{t.name}/key"' in tenants.text
        assert t.key_arn in tenants.text
        assert t.marker not in tenants.text  # key metadata only, never tenant data
    view = visitor.get(f"/ops/tenants/{a.name}/key")
    assert view.status_code == 200
    assert a.key_arn in view.text
    assert "Check again now" not in view.text
    assert a.marker not in view.text
    assert visitor.get("/ops/tenants/nosuchtenant/key").status_code == 404

    forged = Visitor(stack.platform.url)
    value = visitor.cookies[security.OPS_COOKIE]
    forged.cookies[security.OPS_COOKIE] = value[:-4] + ("0000" if not value.endswith("0000")
                                                        else "1111")
    assert 'name="token"' in forged.get("/ops").text
    assert forged.get(f"/ops/tenants/{a.name}/key").status_code == 303
    forged.close()

    csrf = hidden_field(tenants.text, "csrf")
    assert visitor.post("/ops/signout", data={"csrf": "nope"}).status_code == 403
    assert visitor.post("/ops/signout", data={"csrf": csrf}).status_code == 303
    assert security.OPS_COOKIE not in visitor.cookies


def test_pages_stay_out_of_the_openapi_document(visitor: Visitor) -> None:
    paths = visitor.get("/openapi.json").json()["paths"]
    assert paths  # the API is there
    assert [p for p in paths if p.startswith(("/t/", "/ops", "/static"))] == []


def test_unknown_tenants_and_pages_answer_404(visitor: Visitor, a: Tenant) -> None:
    assert visitor.get("/t/nosuchtenant/").status_code == 404
    assert visitor.get("/t/NOT_VALID/").status_code == 404
    visitor.sign_in(a.name, *ADMIN)
    assert visitor.get(f"/t/{a.name}/widgets").status_code == 404
    missing = visitor.get(f"/t/{a.name}/liveboards/nope")
    assert missing.status_code == 404
    assert "Traceback" not in missing.text


# --- pure parts -------------------------------------------------------------------------


def test_operator_cookie_expires_and_cannot_be_forged() -> None:
    value = security.ops_cookie_value("operator-token-0123456789", 1000.0)
    assert security.ops_cookie_valid("operator-token-0123456789", value, 1000.0)
    assert not security.ops_cookie_valid("operator-token-0123456789", value,
                                         1000.0 + security.OPS_TTL + 1)
    assert not security.ops_cookie_valid("another-token-0123456789", value, 1000.0)
    expires, nonce, mac = value.split(".")
    later = f"{int(expires) + 3600}.{nonce}.{mac}"
    assert not security.ops_cookie_valid("operator-token-0123456789", later, 1000.0)
    assert security.session_csrf("cms_a") != security.session_csrf("cms_b")


def test_usage_chart_marks_refused_calls() -> None:
    hours = [3600.0 * h for h in range(24)]
    counts = [0] * 24
    counts[5] = 4
    refused = [0] * 24
    refused[5] = 3
    chart = usage_chart(hours, [("s1", "metadata · Decrypt", counts)], refused,
                        lambda h: f"{int(h // 3600):02d}:00", [("s1", "metadata")])
    red = [bar for bar in chart.bars if bar.css == "refused"]
    assert len(red) == 1
    assert red[0].label == "05:00: refused: 3"
    assert any(t.text == "3" and t.css == "refused-count" for t in chart.texts)
    blue = [bar for bar in chart.bars if bar.css == "s1"]
    assert len(blue) == 1
    assert red[0].y + red[0].h == pytest.approx(blue[0].y)  # stacked on top
    assert ("refused", "refused") in chart.legend


def test_result_bars_pick_a_label_and_a_number() -> None:
    chart = result_bars("R", ["region", "revenue"], [["East", "2400.00"], ["West", 310]])
    assert chart is not None
    assert [t.text for t in chart.texts if t.anchor == "end"] == ["East", "West"]
    assert chart.bars[0].w > chart.bars[1].w
    assert result_bars("R", ["a"], [[1]]) is None
    assert result_bars("R", ["a", "b"], [["x", "y"]]) is None
