"""The console in a real browser (Debian chromium driven by Playwright): sign in, a bad dataset's line errors,
a T-Few job whose loss curve gains points while it runs, hosting it and chatting with streaming, deactivating
an endpoint and seeing the chat refuse, and a viewer key that sees no mutating buttons. Every page visited is
saved as a screenshot under test-artifacts/console/ (GRAFT_TEST_ARTIFACTS moves it).

Waits are Playwright's auto-retrying expect() with generous timeouts (the CPU is shared), never sleeps."""

from __future__ import annotations

import json
import re

import pytest

from graftlm.console.testing import artifacts_dir, launch, missing_reason

WAIT = 60_000  # ms: the CPU is shared by several runs; expect() retries until then
REASON = missing_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")
if REASON is None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT)

from conftest import ADMIN_KEY  # noqa: E402

WORDS = ["hello", "weather", "flight", "balance", "transfer", "hotel"]


def dataset(n: int = 16) -> bytes:
    rows = [{"messages": [{"role": "user", "content": f"say {WORDS[i % len(WORDS)]}"},
                          {"role": "assistant", "content": WORDS[i % len(WORDS)]}]} for i in range(n)]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


class Console:
    """A page on the console plus what a test needs around it: screenshots, JS errors, navigation."""

    def __init__(self, page, origin: str, name: str):
        self.page, self.origin, self.name = page, origin, name
        self.errors: list[str] = []
        self.shots = 0
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))

    def open(self, hash_: str = ""):
        self.page.goto(f"{self.origin}/console/{hash_}")

    def go(self, section: str):
        self.page.get_by_role("navigation").get_by_role("link", name=section).click()
        expect(self.page.get_by_role("heading", level=1)).to_be_visible(timeout=WAIT)

    def sign_in(self, key: str):
        self.open()
        self.page.get_by_label("API key").fill(key)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.get_by_role("navigation")).to_be_visible(timeout=WAIT)

    def shot(self, what: str):
        self.shots += 1
        self.page.screenshot(path=str(artifacts_dir() / f"{self.name}-{self.shots:02d}-{what}.png"), full_page=True)


@pytest.fixture
def console(browser, live_server, request):
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.set_default_timeout(WAIT)
    page = context.new_page()
    c = Console(page, live_server.removesuffix("/v1"), request.node.name)
    yield c
    context.close()
    # 401s the page asks for on purpose show up as console errors ("Failed to load resource"); nothing else may
    assert [e for e in c.errors if "401" not in e and "403" not in e and "409" not in e] == []


def test_sign_in_keeps_the_key_out_of_urls_and_sign_out_forgets_it(console):
    page = console.page
    console.open()
    expect(page.get_by_role("heading", name="Sign in to graftlm")).to_be_visible()
    page.get_by_label("API key").fill("gk-wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid or revoked API key")
    console.shot("signin-refused")
    requests = []
    page.on("request", lambda r: requests.append(r))
    console.sign_in(ADMIN_KEY)
    expect(page.locator("#who")).to_contain_text("admin")
    assert ADMIN_KEY not in page.url and all(ADMIN_KEY not in r.url for r in requests)
    assert all(r.headers.get("authorization") == f"Bearer {ADMIN_KEY}" for r in requests if "/v1/" in r.url)
    assert page.evaluate("sessionStorage.length") == 1 and page.evaluate("localStorage.length") == 0
    console.shot("datasets")
    page.reload()  # the key survives a reload of the tab ...
    expect(page.get_by_role("navigation")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()  # ... and is gone after signing out
    expect(page.get_by_label("API key")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def upload_through_ui(console, name: str, data: bytes):
    page = console.page
    console.go("Datasets")
    page.locator("#upload-input").set_input_files({"name": name, "mimeType": "application/jsonl", "buffer": data})
    expect(page.get_by_text(f"Uploaded {name} as file-")).to_be_visible()
    expect(page.get_by_label("Upload progress")).to_have_attribute("value", "100")


def test_a_bad_dataset_shows_its_line_errors(console):
    page = console.page
    console.sign_in(ADMIN_KEY)
    bad = dataset(4) + b'{"messages": [{"role": "user", "content": "hi"}]}\n' + b"{not json\n"
    upload_through_ui(console, "bad.jsonl", bad)
    detail = page.locator("#file-detail")
    expect(detail.get_by_role("heading", name="bad.jsonl")).to_be_visible()
    expect(detail.locator(".badge")).to_have_text("error")
    rows = detail.locator("table").first.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td").nth(0)).to_have_text("5")
    expect(rows.nth(0)).to_contain_text("assistant")
    expect(rows.nth(1).locator("td").nth(0)).to_have_text("6")
    expect(rows.nth(1)).to_contain_text("JSON")
    expect(detail).to_contain_text("Invalid lines")
    console.shot("bad-dataset")
