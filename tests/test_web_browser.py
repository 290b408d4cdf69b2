"""The pages in a real browser: headless Chromium (Debian's) driven by Playwright against a
running platform and kmslocal. The customer disables and re-enables its key in kmslocal
while a page is open; the page shows the locked notice, then data again after sign-in.

Screenshots of each page go to ``test-artifacts/screenshots/`` in the project root (or
``$CMEK_TEST_ARTIFACTS``), kept after the run.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cmek.crypto.rows import RowAuthenticator
from tests.kmslocal_harness import CUSTOMER
from tests.platform_harness import INTEGRITY_KEY, OPERATOR_TOKEN, wait_until
from tests.web_support import (
    ADMIN,
    Stack,
    Tenant,
    key_state,
    seed_tenant,
    start_stack,
)

CHROMIUM = Path("/usr/bin/chromium")
try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None  # type: ignore[assignment]

if os.environ.get("CMEK_TEST_REQUIRE_BROWSER") and (sync_playwright is None
                                                   or not CHROMIUM.exists()):
    pytest.fail("CMEK_TEST_REQUIRE_BROWSER is set but Playwright or /usr/bin/chromium is "
                "missing", pytrace=False)
pytestmark = pytest.mark.skipif(
    sync_playwright is None or not CHROMIUM.exists(),
    reason="needs Playwright (pip install playwright) and Debian's chromium at /usr/bin/chromium",
)

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

# Runs in the page: the accessibility rules every page must keep. Contrast is computed
# from computed styles (WCAG relative luminance) for every element with its own text.
A11Y_JS = """
() => {
  const problems = [];
  if (!document.documentElement.getAttribute("lang")) problems.push("html has no lang");
  const h1 = document.querySelectorAll("h1").length;
  if (h1 !== 1) problems.push(`${h1} h1 elements`);
  let previous = 0;
  for (const h of document.querySelectorAll("h1, h2, h3, h4, h5, h6")) {
    const level = Number(h.tagName[1]);
    if (previous === 0 && level !== 1) problems.push(`first heading is h${level}`);
    if (previous && level > previous + 1)
      problems.push(`heading jumps from h${previous} to h${level}: ${h.textContent.trim()}`);
    previous = level;
  }
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    const named = (el.labels && el.labels.length) || el.getAttribute("aria-labelledby");
    if (!named) problems.push(`no label for ${el.tagName.toLowerCase()} ${el.name}`);
  }
  const rgba = (text) => {
    const parts = text.match(/[\\d.]+/g).map(Number);
    return {r: parts[0], g: parts[1], b: parts[2], a: parts.length > 3 ? parts[3] : 1};
  };
  const over = (top, under) => ({r: top.r * top.a + under.r * (1 - top.a),
    g: top.g * top.a + under.g * (1 - top.a), b: top.b * top.a + under.b * (1 - top.a), a: 1});
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c.a > 0) { layers.push(c); if (c.a >= 1) break; }
    }
    let base = {r: 255, g: 255, b: 255, a: 1};
    for (const c of layers.reverse()) base = over(c, base);
    return base;
  };
  const luminance = (c) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  let checked = 0;
  const selector = "p, li, td, th, dt, dd, label, a, h1, h2, h3, button, span, caption, code, "
    + "strong";
  for (const el of document.querySelectorAll(selector)) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    const box = el.getBoundingClientRect();
    if (!own || box.width === 0 || box.height === 0 || box.right < 0) continue;
    const bg = background(el);
    const fg = over(rgba(getComputedStyle(el).color), bg);
    const [hi, lo] = [luminance(fg), luminance(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    checked += 1;
    const text = el.textContent.trim().slice(0, 40);
    if (ratio < 4.5) problems.push(`contrast ${ratio.toFixed(2)} for "${text}"`);
  }
  if (checked < 3) problems.push(`only ${checked} text elements checked`);
  return problems;
}
"""


def artifacts() -> Path:
    folder = Path(os.environ.get("CMEK_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(artifacts() / f"{name}.png"), full_page=True)


def accessible(page: Page) -> None:
    problems = page.evaluate(A11Y_JS)
    assert problems == [], f"{page.url}: {problems}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("web-browser"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def tenant(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Tenant:
    return seed_tenant(stack, tmp_path_factory.mktemp("warehouse"), prefix="acme")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert sync_playwright is not None
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def sign_in(page: Page, email: str, password: str) -> None:
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()


def tables_text(page: Page) -> list[str]:
    return [t.inner_text() for t in page.locator("main table").all()]


def test_sign_in_liveboard_search_lock_and_restore(stack: Stack, tenant: Tenant,
                                                   browser: Browser) -> None:
    base = f"{stack.platform.url}/t/{tenant.name}"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()

    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/signin?next=/t/{tenant.name}/")
    accessible(page)
    shot(page, "01-sign-in")
    sign_in(page, *ADMIN)
    expect(page).to_have_url(f"{base}/")
    expect(page.locator("h1")).to_have_text(tenant.name)
    session = next(c for c in context.cookies() if c["name"] == f"__Host-cmek-t-{tenant.name}")
    assert (session["secure"], session["httpOnly"], session["sameSite"]) == (True, True, "Lax")
    accessible(page)
    shot(page, "02-signed-in-home")

    page.get_by_role("banner").get_by_role("link", name="Liveboards").click()
    page.get_by_role("link", name="Sales overview").click()
    expect(page.locator("h1")).to_have_text("Sales overview")
    expect(page.locator("main svg.chart")).to_have_count(2)
    before = tables_text(page)
    assert len(before) == 2
    assert f"{tenant.marker} North" in before[0]
    assert "1,200.5" in before[0]
    accessible(page)
    shot(page, "03-liveboard")
    liveboard = page.url

    page.get_by_label("Search this workspace").fill("revenue")
    page.get_by_label("Search this workspace").press("Enter")
    expect(page.locator("main")).to_contain_text("Revenue by region")
    accessible(page)
    shot(page, "04-search")

    # The customer disables its key: the open page's next request lands on the notice.
    page.goto(liveboard)
    kms = stack.kms.client(CUSTOMER)
    kms.disable_key(KeyId=tenant.key_arn)
    wait_until(lambda: key_state(stack, tenant.name)["state"] == "locked")
    response = page.reload()
    assert response is not None
    assert response.status == 423
    assert response.headers["cache-control"] == "no-store"
    expect(page.locator("h1")).to_contain_text("unavailable")
    expect(page.locator("main")).to_contain_text("disabled")
    expect(page.locator("main")).to_contain_text("Restore window ends")  # an admin's view
    assert tenant.marker not in page.content()
    accessible(page)
    shot(page, "05-locked-notice")
    page.get_by_role("banner").get_by_role("link").first.click()  # a click lands on the notice too
    expect(page.locator("h1")).to_contain_text("unavailable")
    assert tenant.marker not in page.content()
    token = session["value"]
    assert revoked(stack, token), "the lock must end the web session"

    kms.enable_key(KeyId=tenant.key_arn)
    wait_until(lambda: key_state(stack, tenant.name)["state"] == "active")
    page.goto(liveboard)  # the old session is gone: sign in again, back to the same page
    expect(page).to_have_url(f"{base}/signin?next=/t/{tenant.name}/liveboards/overview")
    sign_in(page, *ADMIN)
    expect(page).to_have_url(liveboard)
    assert tables_text(page) == before

    page.get_by_role("banner").get_by_role("link", name="Key", exact=True).click()
    page.get_by_role("button", name="Check again now").click()
    expect(page.locator("main")).to_contain_text("passed")
    timeline = page.locator("ol.timeline").inner_text()
    for seen in ("active → locked", "disabled", "restoring → active", "restored:restart"):
        assert seen in timeline
    assert page.locator("main svg.chart rect").count() > 0
    calls = page.locator("#usage-title + p").inner_text()
    assert not calls.startswith("0 calls"), calls
    expect(page.locator("main")).to_contain_text("SYMMETRIC_DEFAULT")
    expect(page.locator("#policy-json")).to_contain_text("arn:aws:iam::111111111111:root")
    accessible(page)
    shot(page, "06-key-console")

    phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True,
                                device_scale_factor=2)
    small = phone.new_page()
    small.goto(liveboard)
    sign_in(small, *ADMIN)
    expect(small.locator("h1")).to_have_text("Sales overview")
    width = small.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the liveboard scrolls sideways on a phone ({width} px)"
    shot(small, "07-liveboard-phone")
    phone.close()
    context.close()


def test_operator_console_lists_the_tenant(stack: Stack, tenant: Tenant,
                                           browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{stack.platform.url}/ops")
    accessible(page)
    page.get_by_label("Operator token").fill(OPERATOR_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("h1")).to_have_text("Tenants")
    row = page.locator("tr", has_text=tenant.name)
    expect(row).to_contain_text("active")
    cookie = next(c for c in context.cookies() if c["name"] == "__Host-cmek-ops")
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert OPERATOR_TOKEN not in cookie["value"]
    accessible(page)
    shot(page, "08-operator-console")
    page.get_by_role("link", name=f"View key of {tenant.name}").click()
    expect(page.locator("h1")).to_have_text(f"Key of tenant {tenant.name}")
    expect(page.get_by_role("button", name="Check again now")).to_have_count(0)
    expect(page.locator("main")).to_contain_text(tenant.key_arn)
    accessible(page)
    shot(page, "09-operator-key-console")
    context.close()


def revoked(stack: Stack, token: str) -> bool:
    """Read the control plane's token table directly: is this session revoked?"""
    digest = RowAuthenticator(INTEGRITY_KEY.encode()).lookup("token", token)
    with sqlite3.connect(stack.platform.data_dir / "control.sqlite3") as db:
        row: Any = db.execute("select revoked_at from platform_tokens where token_hash = ?",
                              (digest,)).fetchone()
    return row is not None and row[0] is not None
