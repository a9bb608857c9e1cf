"""The web UI in a real browser (Debian Chromium driven by Playwright): upload by drag and drop
and by keyboard, watch the job index, ask, open a citation, delete; and API-key entry."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.support import SAMPLES, served, service_settings

CHROMIUM = Path("/usr/lib/chromium/chromium")
# DESIGN.md §3: what Debian's Chromium needs to run headless in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (scripts/system-deps/chromium.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def drop_file(page, path: Path, mime: str) -> None:
    """A real drop event on the drop zone, carrying the file in a DataTransfer."""
    page.evaluate(
        """([name, mime, b64]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const zone = document.getElementById("dropzone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [path.name, mime, base64.b64encode(path.read_bytes()).decode()],
    )


def test_upload_index_ask_and_open_a_citation(browser, tmp_path, embedder):
    from playwright.sync_api import expect

    with served(service_settings(tmp_path / "data"), embedder) as service:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(service.url)
        expect(page.locator("#service-status")).to_have_text("Ready")
        expect(page.locator("#documents-summary")).to_have_text("No documents yet.")

        drop_file(page, SAMPLES / "operations-guide.pdf", "application/pdf")
        # The keyboard path: focus the drop zone, press Enter, pick a file.
        with page.expect_file_chooser() as chooser:
            page.get_by_role("button", name="Upload files").press("Enter")
        chooser.value.set_files(SAMPLES / "configuration.txt")

        jobs = page.locator(".job")
        expect(jobs).to_have_count(2)
        for i in range(2):
            expect(jobs.nth(i)).to_have_attribute("data-state", "done", timeout=90_000)
        expect(jobs.nth(1).locator(".job-detail")).to_contain_text("Done: 1 of 1 files")
        documents = page.locator("#document-list .document")
        expect(documents).to_have_count(2)
        expect(page.locator('#document-list .document[data-status="indexed"]')).to_have_count(2)

        page.get_by_label("Your question").fill("When should I alert on retrieval latency?")
        page.get_by_label("Your question").press("Enter")
        answer = page.locator(".message.assistant").last
        expect(answer.locator(".answer-text")).to_contain_text("500 milliseconds", timeout=30_000)
        expect(answer).not_to_have_attribute("aria-busy", "true")
        marker = answer.locator(".answer-text button.citation").first
        expect(marker).to_have_text("[1]")
        expect(marker).to_have_attribute("aria-label", re.compile(r"^Source 1: uploads/operations-guide\.pdf, page 2$"))

        marker.click()
        dialog = page.locator("#passage-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#passage-meta")).to_contain_text("uploads/operations-guide.pdf · page 2")
        expect(page.locator("#passage-text")).to_contain_text("500 milliseconds")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-citation.png"), full_page=True)
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()

        page.get_by_role("button", name="Delete uploads/configuration.txt").click()
        expect(documents).to_have_count(1)
        assert service.http.get("/v1/documents").json()["total"] == 1
        page.screenshot(path=str(ARTIFACTS / "browser-after-delete.png"), full_page=True)

        # Narrow screens: the documents panel moves below the chat.
        page.set_viewport_size({"width": 420, "height": 900})
        chat, panel = page.locator(".chat").bounding_box(), page.locator(".documents").bounding_box()
        assert panel["y"] >= chat["y"] + chat["height"] and panel["width"] <= 420
        page.screenshot(path=str(ARTIFACTS / "browser-narrow.png"), full_page=True)
        assert errors == []


def test_api_key_entry_when_auth_is_on(browser, tmp_path, embedder):
    from playwright.sync_api import expect

    with served(service_settings(tmp_path / "data", api_keys="browser-secret"), embedder) as service:
        page = browser.new_page()
        page.goto(service.url)
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()  # the document list answered 401
        page.get_by_role("textbox", name="Key").fill("browser-secret")
        page.get_by_role("button", name="Save").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#documents-summary")).to_have_text("No documents yet.")
        assert page.evaluate("localStorage.getItem('ragtune.apiKey')") == "browser-secret"
        expect(page.get_by_role("button", name="API key")).to_be_visible()
        assert service.http.get("/v1/documents").status_code == 401
