"""The dashboard end to end in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright):
the page connects, traffic moves the numbers on screen, the keyboard reaches every card. Every run
takes a screenshot; with ATP_DASHBOARD_SCREENSHOT=1 it replaces docs/dashboard.png (the README's),
so an ordinary test run leaves the tree clean."""
import os
import pathlib
import shutil

import requests
from playwright.sync_api import expect, sync_playwright

from atp_server import config as atp_config

from tests.helpers.toml_models import BROKEN_MODEL

CHROMIUM = "/usr/bin/chromium"
TOKEN = "dashboard-token-0123456789"
AUTH = {"Authorization": f"Bearer {atp_config.DEV_API_KEY}"}
SCREENSHOT = pathlib.Path(__file__).parents[2] / "docs" / "dashboard.png"
# A provider that always fails: its breaker opens (a red row) and the errors card has something to show.
EXTRA = f"""
{BROKEN_MODEL}
[costs]
baseline_model = "sim-high"

[dashboard]
enabled = true
token = "{TOKEN}"

# Nothing listens on port 9: every delivery fails, and the failures are listed on the page.
[[webhooks]]
url = "http://127.0.0.1:9/atp-hooks"
events = ["breaker.opened"]
secret = "whsec-0123456789abcdef"
max_attempts = 2
"""
CARDS = ["card-rps", "card-latency", "card-errors", "card-cost", "card-savings", "card-queue"]


def _send(url: str, model: str, n: int) -> None:
    with requests.Session() as s:
        for _ in range(n):
            s.post(url + "/v1/chat/completions", headers=AUTH, timeout=30,
                   json={"model": model, "messages": [{"role": "user", "content": "hello there"}]})


def test_dashboard_moves_in_headless_chromium(start_server, tmp_path):
    server = start_server(grpc=False, quic=False, extra_toml=EXTRA)
    url = f"http://127.0.0.1:{server.ports.http}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, color_scheme="dark")
            page.goto(url + f"/dashboard#token={TOKEN}")
            expect(page.locator("#status")).to_have_text("live", timeout=15_000)
            expect(page.locator("#requests-total")).to_have_text("0", timeout=15_000)
            expect(page.locator("#cost-total")).to_have_text("$0.000000")

            _send(url, "sim-fast", 6)
            _send(url, "sim-balanced", 3)
            expect(page.locator("#requests-total")).to_have_text("9", timeout=15_000)
            expect(page.locator("#cost-total")).not_to_have_text("$0.000000")
            expect(page.locator("#mix")).to_contain_text("sim-fast")

            _send(url, "sim-broken", 6)     # pinned to a failing model: errors, then an open breaker
            expect(page.locator("#requests-total")).to_have_text("15", timeout=15_000)
            expect(page.locator("#errors-total")).not_to_have_text("0")
            expect(page.locator("#models tr", has_text="sim-broken")).to_contain_text("open", timeout=15_000)
            expect(page.locator("#card-errors")).to_have_class("card red")
            # Events stream onto the page, and so do the webhook deliveries they caused.
            expect(page.locator("#events")).to_contain_text("breaker.opened", timeout=15_000)
            expect(page.locator("#events")).to_contain_text("model=sim-broken")
            expect(page.locator("#deliveries")).to_contain_text("http://127.0.0.1:9/atp-hooks", timeout=15_000)
            expect(page.locator("#deliveries")).to_contain_text("(try 1)")

            # Keyboard: the skip link first, it jumps to the numbers, then Tab walks the cards in order.
            page.locator("body").focus()
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.className") == "skip"
            page.keyboard.press("Enter")
            assert page.evaluate("document.activeElement.id") == "content"
            for card in CARDS:
                page.keyboard.press("Tab")
                assert page.evaluate("document.activeElement.id") == card
                assert page.evaluate("document.activeElement.getAttribute('aria-labelledby')")
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.tagName") == "SECTION"   # the tables next
            page.evaluate("document.activeElement.blur()")
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("ATP_DASHBOARD_SCREENSHOT") == "1":
        shutil.copyfile(shot, SCREENSHOT)
