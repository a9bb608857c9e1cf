"""The web UI in a real browser (Debian Chromium driven by Playwright), at 1280 px and 375 px:
upload (drop, keyboard, a batch with a bad file), indexing progress and pending documents,
asking, streamed Markdown with live citation chips and nothing injected, Stop / Copy /
Regenerate, conversations (history, list, new, one per tab, limited to documents or tags),
the phone layout, and API-key entry. Every state is checked with axe-core (WCAG 2 A/AA) and
every page for console errors.

One served app is shared by the module's tests (the API-key test needs its own, with auth on);
each test adds the documents it needs with `have_documents`, so any of them runs alone."""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builders import pdf_bytes
from ragtune.generate.base import Generation
from ragtune.ingest import indexer
from tests.api.support import SAMPLES, Service, served, service_settings, wait_for_job, wait_until

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
WIDE = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 740}

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


@pytest.fixture(scope="module")
def service(tmp_path_factory, embedder) -> Iterator[Service]:
    with served(service_settings(tmp_path_factory.mktemp("browser") / "data"), embedder) as running:
        yield running


def have_documents(service: Service, *names: str, tags: tuple[str, ...] = ()) -> dict[str, str]:
    """Uploads (over HTTP) those of the sample files `names` not indexed yet; their document ids."""
    listed = {
        d["source"]: d["id"] for d in service.http.get("/v1/documents", params={"limit": 500}).json()["documents"]
    }
    missing = [n for n in names if f"uploads/{n}" not in listed]
    if missing:
        files = [("files", (n, (SAMPLES / n).read_bytes())) for n in missing]
        accepted = service.http.post("/v1/documents", files=files, data={"tags": list(tags)}).json()
        assert wait_for_job(service.http, accepted["job_id"])["files_failed"] == 0
        listed |= {d["source"]: d["document_id"] for d in accepted["documents"]}
    return {n: listed[f"uploads/{n}"] for n in names}


class Page:
    """A page with its console errors collected (`allowed` are patterns of expected ones)."""

    def __init__(self, context, url: str, viewport: dict, allowed: tuple[str, ...] = ()) -> None:
        self.page = context.new_page()
        self.page.set_viewport_size(viewport)
        self.allowed = allowed
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.goto(url)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.errors if not any(re.search(a, e) for a in self.allowed)]


@contextlib.contextmanager
def pages(browser, **context_options) -> Iterator[object]:
    context = browser.new_context(**context_options)
    try:
        yield context
    finally:
        context.close()


def drop_files(page, files: list[tuple[str, bytes, str]]) -> None:
    """A real drop event on the drop zone, carrying the files in a DataTransfer."""
    page.evaluate(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, mime, b64] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name, { type: mime }));
            }
            const zone = document.getElementById("dropzone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, { dataTransfer: transfer, bubbles: true, cancelable: true }));
            }
        }""",
        [[name, mime, base64.b64encode(data).decode()] for name, data, mime in files],
    )


def assert_accessible(page, state: str) -> None:
    """axe-core's WCAG 2 A/AA rules on the page as it is now (axe-playwright-python bundles axe)."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}})
    assert results.violations_count == 0, f"{state}: {results.generate_report()}"


def assert_question_box_pinned(page, viewport: dict) -> None:
    """The page itself does not scroll: the conversation scrolls in its panel, the box stays in view."""
    box = page.locator("#question").bounding_box()
    assert box is not None and box["y"] + box["height"] <= viewport["height"]
    sizes = page.evaluate(
        "[document.scrollingElement.scrollHeight, innerHeight, document.scrollingElement.scrollWidth, innerWidth]"
    )
    assert sizes[0] <= sizes[1] and sizes[2] <= sizes[3], sizes


def ask(page, question: str) -> object:
    """Asks in the page and waits for the answer to be complete; returns its message."""
    from playwright.sync_api import expect

    before = page.locator(".message.assistant").count()
    page.get_by_label("Your question").fill(question)
    page.get_by_label("Your question").press("Enter")
    answer = page.locator(".message.assistant").nth(before)
    expect(answer.locator(".answer-actions")).to_be_visible(timeout=30_000)
    return answer


@contextlib.contextmanager
def held_indexing(service: Service) -> Iterator[threading.Event]:
    """Stops the worker after the first chunk of each file is embedded until the event is set."""
    ingestor = service.services.system.ingestor
    original = ingestor.ingest_bytes
    release = threading.Event()

    def held(data, source, tags=(), on_progress=None):
        def progress(embedded: int, total: int) -> None:
            if on_progress is not None:
                on_progress(embedded, total)
            if 0 < embedded < total:
                release.wait(30)

        return original(data, source, tags, on_progress=progress)

    slice_size, indexer.PROGRESS_SLICE = indexer.PROGRESS_SLICE, 1
    ingestor.ingest_bytes = held  # the worker's next call; deleting it brings the method back
    try:
        yield release
    finally:
        release.set()
        del ingestor.ingest_bytes
        indexer.PROGRESS_SLICE = slice_size


def test_upload_index_ask_and_open_a_citation(browser, service, tmp_path):
    from playwright.sync_api import expect

    with pages(browser) as context:
        tab = Page(context, service.url, WIDE)
        page = tab.page
        expect(page.locator("#service-status")).to_have_text("Ready")
        expect(page.locator("#documents-summary")).to_have_text("No documents yet.")
        assert page.evaluate("document.querySelector('link[rel=icon]').href").endswith("/ui/favicon.svg")
        assert service.http.get("/ui/favicon.svg").headers["content-type"].startswith("image/svg+xml")
        assert_accessible(page, "empty page")

        # Indexing held after the first chunk: the document is pending, progress moves within the file.
        with held_indexing(service) as release:
            drop_files(
                page, [("operations-guide.pdf", (SAMPLES / "operations-guide.pdf").read_bytes(), "application/pdf")]
            )
            pending = page.locator('#document-list .document[data-status="pending"]')
            expect(pending).to_have_count(1)
            expect(pending.locator(".badge")).to_have_text("pending")
            expect(pending).to_contain_text("uploads/operations-guide.pdf")
            detail = page.locator(".job .job-detail").first
            expect(detail).to_contain_text(
                re.compile(r"Indexing: 0 of 1 file, 0 chunks · operations-guide\.pdf: 1 of 3 chunks embedded")
            )
            assert 0 < page.locator(".job progress").first.evaluate("p => p.value") < 1
            assert_accessible(page, "indexing")
            release.set()
        job = page.locator(".job").first
        expect(job).to_have_attribute("data-state", "done", timeout=60_000)
        expect(job.locator(".job-detail")).to_have_text("Done: 1 of 1 file, 3 chunks")

        # The keyboard path, a batch with one bad file: the good ones are indexed, the bad one named.
        bad = tmp_path / "menu.txt"
        bad.write_bytes("café au lait".encode("latin-1"))
        note = tmp_path / "note.txt"
        note.write_bytes(b"The staging cluster runs in Frankfurt.")
        launch = tmp_path / "launch-notes.pdf"
        launch.write_bytes(pdf_bytes(["Launch at dawn from pad 3."], title="launch.html"))
        with page.expect_file_chooser() as chooser:
            page.get_by_role("button", name="Upload files").press("Enter")
        chooser.value.set_files([SAMPLES / "configuration.txt", bad, note, launch])
        batch = page.locator(".job").first
        expect(batch.locator(".job-title")).to_have_text("4 files")
        expect(batch).to_have_attribute("data-state", "done", timeout=60_000)
        expect(batch.locator(".job-detail")).to_contain_text("Done: 3 of 3 files")
        expect(batch.locator(".job-detail")).to_contain_text("1 not uploaded")
        rejected = batch.locator(".job-errors li")
        expect(rejected).to_have_count(1)
        expect(rejected).to_contain_text(re.compile(r"^menu\.txt: not uploaded: menu\.txt is not valid UTF-8"))
        assert rejected.evaluate("li => getComputedStyle(li).color") == "rgb(179, 38, 30)"  # the error colour
        documents = page.locator("#document-list .document")
        expect(documents).to_have_count(4)
        expect(page.locator('#document-list .document[data-status="indexed"]')).to_have_count(4)
        expect(
            page.locator(
                f'#document-list .document[data-id="{have_documents(service, "configuration.txt")["configuration.txt"]}"]'
            )
        ).to_be_visible()
        expect(documents.filter(has_text="uploads/note.txt")).to_contain_text("1 chunk · uploads/note.txt")
        expect(documents.filter(has_text="uploads/operations-guide.pdf")).to_contain_text("3 chunks ·")
        # a PDF whose metadata title is a file name is listed under its own name
        expect(documents.filter(has_text="uploads/launch-notes.pdf").locator(".document-name")).to_have_text(
            "launch-notes"
        )
        expect(documents.filter(has_text="uploads/operations-guide.pdf").locator(".document-name")).to_have_text(
            "ragtune operations guide"
        )
        assert_accessible(page, "uploads done")
        page.get_by_role("button", name="Dismiss the upload of operations-guide.pdf").click()
        expect(page.locator(".job")).to_have_count(1)

        answer = ask(page, "When should I alert on retrieval latency?")
        expect(answer.locator(".answer-text")).to_contain_text("500 milliseconds")
        expect(answer).not_to_have_attribute("aria-busy", "true")
        marker = answer.locator(".answer-text button.citation").first
        expect(marker).to_have_text("[1]")
        expect(marker).to_have_attribute("aria-label", re.compile(r"^Source 1: uploads/operations-guide\.pdf, page 2$"))
        marker.click()
        dialog = page.locator("#passage-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#passage-meta")).to_contain_text("uploads/operations-guide.pdf · page 2")
        expect(page.locator("#passage-text")).to_contain_text("500 milliseconds")
        assert_accessible(page, "passage dialog")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser-citation.png"))
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()

        # Not found: the answer says what to try next.
        missing = ask(page, "What is the boiling point of liquid nitrogen?")
        expect(missing).to_have_class(re.compile(r"\babstained\b"))
        expect(missing.locator(".next-step")).to_contain_text("Try rephrasing the question")
        missing.get_by_role("button", name="document list").click()
        expect(page.locator("#documents-title")).to_be_focused()
        assert_accessible(page, "not found")

        # Delete asks first; Cancel keeps the document.
        page.get_by_role("button", name="Delete uploads/note.txt").click()
        confirm = page.locator("#confirm-dialog")
        expect(confirm).to_be_visible()
        expect(page.locator("#confirm-text")).to_contain_text("Delete uploads/note.txt?")
        assert_accessible(page, "confirm dialog")
        confirm.get_by_role("button", name="Cancel").click()
        expect(confirm).to_be_hidden()
        expect(documents).to_have_count(4)
        page.get_by_role("button", name="Delete uploads/note.txt").click()
        confirm.get_by_role("button", name="Delete").click()
        expect(documents).to_have_count(3)
        assert "uploads/note.txt" not in {d["source"] for d in service.http.get("/v1/documents").json()["documents"]}
        page.get_by_role("button", name="Delete uploads/launch-notes.pdf").click()
        confirm.get_by_role("button", name="Delete").click()
        expect(documents).to_have_count(2)
        assert_question_box_pinned(page, WIDE)
        assert tab.unexpected_errors() == []


class ScriptedLLM:
    """An LLM stand-in for the server's generator: streams Markdown with markup in it, and
    holds before its last part until the test releases it."""

    name = "scripted"
    model_names = ()
    HEAD = ("## Rotation\n\n", "Rotate the **API keys** every *90 days* [1", "].\n\n- first `ragtune keys create`\n")
    TAIL = (
        "- then revoke the old key [2]\n\n",
        '<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2"> ',
        "[evil](javascript:window.__pwned=3) and [the docs](https://example.org/keys).\n\n",
        "```\nrm -rf <b>tmp</b>\n```\n",
    )

    def __init__(self) -> None:
        self.questions: list[str] = []
        self.gates: list[threading.Event] = []

    def generate(self, question, hits, model=None) -> Generation:
        return Generation("".join(self.HEAD + self.TAIL))

    def stream(self, question, hits, model=None):
        self.questions.append(question)
        gate = threading.Event()
        self.gates.append(gate)
        yield from self.HEAD
        gate.wait(30)
        yield from self.TAIL
        return Generation("".join(self.HEAD + self.TAIL))


def release(llm: ScriptedLLM, call: int) -> None:
    """Lets the `call`-th stream (1-based) finish, once it has started."""
    wait_until(lambda: len(llm.gates) >= call, 30, f"answer {call} to start streaming")
    llm.gates[call - 1].set()


def test_streamed_markdown_live_citations_stop_copy_and_regenerate(browser, service):
    from playwright.sync_api import expect

    have_documents(service, "operations-guide.pdf", "configuration.txt")
    rag = service.services.system.rag
    llm, generator = ScriptedLLM(), rag.generator
    rag.generator = llm
    try:
        with pages(browser, permissions=["clipboard-read", "clipboard-write"]) as context:
            tab = Page(context, service.url, WIDE)
            page = tab.page
            page.get_by_label("Your question").fill("How do I rotate the API keys?")
            page.get_by_label("Your question").press("Enter")
            answer = page.locator(".message.assistant").last
            text = answer.locator(".answer-text")
            # While it streams: Markdown rendered, the marker already a chip, waiting for its source.
            expect(text.locator("li code")).to_have_text("ragtune keys create")
            expect(text.locator(".md-heading")).to_have_text("Rotation")
            expect(text.locator("p:not(.md-heading) strong")).to_have_text("API keys")
            expect(text.locator("em")).to_have_text("90 days")
            chip = text.locator("button.citation")
            expect(chip).to_have_count(1)
            expect(chip).to_have_attribute("data-pending", "true")
            expect(answer).to_have_attribute("aria-busy", "true")
            expect(page.get_by_role("button", name="Ask", exact=True)).to_be_disabled()
            expect(page.get_by_role("button", name="Stop", exact=True)).to_be_visible()
            chip.click()
            expect(page.locator("#passage-dialog")).to_be_hidden()
            expect(page.locator("#service-status")).to_contain_text("once the answer is complete")
            assert_accessible(page, "streaming")
            # Enter while it streams sends nothing.
            page.get_by_label("Your question").fill("A second question")
            page.get_by_label("Your question").press("Enter")
            expect(page.locator(".message.user")).to_have_count(1)
            assert llm.questions == ["How do I rotate the API keys?"]

            release(llm, 1)
            expect(answer.locator(".answer-actions")).to_be_visible(timeout=30_000)
            chips = text.locator("button.citation")
            expect(chips).to_have_count(2)
            expect(chips.first).not_to_have_attribute("data-pending", "true")
            expect(chips.first).to_have_attribute("aria-label", re.compile(r"^Source 1: uploads/"))
            # Nothing injected: markup is text, the javascript: link is plain text, the https one a link.
            assert page.evaluate("window.__pwned") is None
            assert text.locator("script, img").count() == 0
            expect(text).to_contain_text('<script>window.__pwned = 1</script> <img src=x onerror="window.__pwned = 2">')
            links = text.locator("a")
            expect(links).to_have_count(1)
            expect(links).to_have_attribute("href", "https://example.org/keys")
            expect(text).to_contain_text("evil and the docs.")
            expect(text.locator("pre code")).to_have_text("rm -rf <b>tmp</b>")
            chips.first.click()
            expect(page.locator("#passage-dialog")).to_be_visible()
            page.keyboard.press("Escape")
            assert page.get_by_label("Your question").input_value() == "A second question"
            assert_accessible(page, "markdown answer")
            page.screenshot(path=str(ARTIFACTS / "browser-markdown.png"))

            answer.get_by_role("button", name="Copy the answer").click()
            expect(answer.get_by_role("button", name="Copy the answer")).to_have_text("Copied")
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied.startswith("## Rotation\n\nRotate the **API keys** every *90 days* [1].") and "```" in copied

            conversation_id = page.evaluate("sessionStorage.getItem('ragtune.conversation')")
            assert conversation_id
            answer.get_by_role("button", name="Regenerate the answer").click()
            expect(page.locator(".message.assistant")).to_have_count(1)
            release(llm, 2)
            expect(page.locator(".message.assistant .answer-actions")).to_be_visible(timeout=30_000)
            assert llm.questions == ["How do I rotate the API keys?"] * 2
            stored = service.http.get(f"/v1/conversations/{conversation_id}").json()
            assert [t["question"] for t in stored["turns"]] == ["How do I rotate the API keys?"]  # replaced

            # Stop: the stream is aborted, what came so far stays, and the question can be asked again.
            page.get_by_label("Your question").press("Enter")  # the second question, typed earlier
            stopped = page.locator(".message.assistant").last
            expect(stopped.locator(".answer-text p:not(.md-heading) strong")).to_have_text("API keys")
            page.get_by_role("button", name="Stop", exact=True).click()
            expect(stopped).to_contain_text("Stopped.")
            expect(stopped).not_to_have_attribute("aria-busy", "true")
            expect(page.get_by_role("button", name="Ask", exact=True)).to_be_enabled()
            expect(page.get_by_role("button", name="Stop", exact=True)).to_be_hidden()
            expect(stopped.locator(".answer-text")).to_contain_text("Rotate the API keys every 90 days")
            assert_accessible(page, "stopped")
            release(llm, 3)  # the stopped answer's stream, still waiting on the server
            stopped.get_by_role("button", name="Ask again").click()
            expect(page.locator(".message.user")).to_have_count(2)
            release(llm, 4)
            expect(page.locator(".message.assistant").last.locator(".answer-actions")).to_be_visible(timeout=30_000)
            assert "A second question" in llm.questions[-1] and len(llm.questions) == 4  # as a follow-up
            assert tab.unexpected_errors() == []
    finally:
        rag.generator = generator
        for gate in llm.gates:
            gate.set()


def test_conversations_survive_a_reload_and_each_tab_has_its_own(browser, service):
    from playwright.sync_api import expect

    ids = have_documents(service, "operations-guide.pdf", "configuration.txt")
    tagged = have_documents(service, "getting-started.md", tags=("handbook",))
    with pages(browser) as context:
        first = Page(context, service.url, WIDE)
        page = first.page
        ask(page, "When should I alert on retrieval latency?")
        ask(page, "What about backups?")
        conversation = page.evaluate("sessionStorage.getItem('ragtune.conversation')")
        expect(page.locator("#chat-title")).to_have_text("When should I alert on retrieval latency?")
        listed = page.locator(f'#conversation-list .conversation[data-id="{conversation}"]')
        expect(listed).to_contain_text("2 questions")
        expect(listed.locator(".conversation-open")).to_have_attribute("aria-current", "true")

        page.reload()
        expect(page.locator(".message.user")).to_have_count(2)
        expect(page.locator(".message.assistant")).to_have_count(2)
        expect(page.locator(".message.assistant").first.locator("button.citation").first).to_have_attribute(
            "aria-label", re.compile(r"^Source 1: uploads/operations-guide\.pdf")
        )
        expect(page.locator("#chat-title")).to_have_text("When should I alert on retrieval latency?")
        assert_accessible(page, "conversation after reload")

        # A second tab holds a conversation of its own; the first keeps its own.
        second = Page(context, service.url, WIDE)
        other = second.page
        expect(other.locator(".message.hint")).to_be_visible()
        expect(other.locator("#chat-title")).to_have_text("New conversation")
        ask(other, "Which Milvus URI selects a server?")
        other_id = other.evaluate("sessionStorage.getItem('ragtune.conversation')")
        assert other_id and other_id != conversation
        page.bring_to_front()  # a background tab gets no animation frames (Playwright waits on them)
        page.reload()
        expect(page.locator(".message.user")).to_have_count(2)
        assert page.evaluate("sessionStorage.getItem('ragtune.conversation')") == conversation
        expect(page.locator(f'#conversation-list .conversation[data-id="{other_id}"]')).to_contain_text("1 question")

        # New conversation, limited to one document: the request carries the filter.
        page.get_by_role("button", name="New conversation").click()
        expect(page.locator(".message.hint")).to_be_visible()
        expect(page.locator("#chat-title")).to_have_text("New conversation")
        page.locator("#scope-summary").click()
        page.get_by_role("checkbox", name=re.compile(r"configuration\.txt")).check()
        page.get_by_role("checkbox", name="handbook").check()
        expect(page.locator("#scope-summary")).to_have_text("Search in: 1 document with tag handbook")
        assert_accessible(page, "search scope open")
        page.get_by_role("checkbox", name="handbook").uncheck()
        with page.expect_request("**/v1/query") as sent:
            answer = ask(page, "When should I alert on retrieval latency?")
        assert sent.value.post_data_json["filters"] == {"document_ids": [ids["configuration.txt"]]}
        cited = answer.locator(".sources .source-link")
        assert all("configuration.txt" in cited.nth(i).inner_text() for i in range(cited.count()))
        page.get_by_role("button", name="Search everything").click()
        page.get_by_role("checkbox", name="handbook").check()
        with page.expect_request("**/v1/query") as sent:
            ask(page, "How do I install ragtune?")
        assert sent.value.post_data_json["filters"] == {"tags": ["handbook"]}
        assert tagged["getting-started.md"]
        third = page.evaluate("sessionStorage.getItem('ragtune.conversation')")
        assert third not in (conversation, other_id)

        # Back to the first conversation from the list, then delete it (after a confirmation).
        page.locator(f'#conversation-list .conversation[data-id="{conversation}"] .conversation-open').click()
        expect(page.locator(".message.user").last).to_contain_text("What about backups?")
        assert page.evaluate("sessionStorage.getItem('ragtune.conversation')") == conversation
        page.locator(f'#conversation-list .conversation[data-id="{conversation}"]').get_by_role(
            "button", name="Delete"
        ).click()
        page.locator("#confirm-dialog").get_by_role("button", name="Delete").click()
        expect(page.locator(f'#conversation-list .conversation[data-id="{conversation}"]')).to_have_count(0)
        expect(page.locator(".message.hint")).to_be_visible()
        assert service.http.get(f"/v1/conversations/{conversation}").status_code == 404
        assert first.unexpected_errors() == [] and second.unexpected_errors() == []


def test_phone_layout_pins_the_question_box_and_puts_panels_in_tabs(browser, service):
    from playwright.sync_api import expect

    have_documents(service, "operations-guide.pdf", "configuration.txt")
    conversation = service.http.post("/v1/conversations", json={}).json()["id"]
    for i in range(6):
        body = {"question": f"When should I alert on retrieval latency? ({i})", "conversation_id": conversation}
        assert service.http.post("/v1/query", json=body).status_code == 200
    with pages(browser, viewport=PHONE, is_mobile=True, has_touch=True) as context:
        tab = Page(context, service.url, PHONE)
        page = tab.page
        chat, documents, conversations = (page.locator(f"#{p}-panel") for p in ("chat", "documents", "conversations"))
        expect(chat).to_be_visible()
        expect(documents).to_be_hidden()
        expect(conversations).to_be_hidden()
        expect(page.get_by_role("button", name="Chat", exact=True)).to_have_attribute("aria-pressed", "true")
        assert_accessible(page, "phone, chat")

        page.get_by_role("button", name="Documents", exact=True).click()
        expect(documents).to_be_visible()
        expect(chat).to_be_hidden()
        expect(page.get_by_role("button", name="Documents", exact=True)).to_have_attribute("aria-pressed", "true")
        expect(page.locator("#document-list .document").first).to_be_visible()
        assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]  # no sideways scrolling
        assert_accessible(page, "phone, documents")
        page.screenshot(path=str(ARTIFACTS / "browser-phone-documents.png"))

        page.get_by_role("button", name="Conversations", exact=True).click()
        expect(conversations).to_be_visible()
        page.locator(f'#conversation-list .conversation[data-id="{conversation}"] .conversation-open').click()
        expect(chat).to_be_visible()  # choosing a conversation goes back to the chat
        expect(page.locator(".message.assistant")).to_have_count(6)
        messages = page.locator("#messages")
        assert messages.evaluate("m => m.scrollHeight > m.clientHeight")  # it scrolls inside its panel
        assert messages.evaluate("m => Math.abs(m.scrollTop + m.clientHeight - m.scrollHeight) < 2")  # at the end
        assert_question_box_pinned(page, PHONE)
        answer = ask(page, "When should I alert on retrieval latency? (7)")
        expect(answer.locator(".answer-text")).to_contain_text("500 milliseconds")
        assert_question_box_pinned(page, PHONE)
        assert answer.bounding_box()["y"] < PHONE["height"]  # the new answer is scrolled into view
        assert_accessible(page, "phone, long conversation")
        page.screenshot(path=str(ARTIFACTS / "browser-phone-chat.png"))
        assert tab.unexpected_errors() == []

    with pages(browser) as context:  # the same conversation on a wide screen keeps the box in view too
        wide = Page(context, service.url, WIDE)
        wide.page.locator(f'#conversation-list .conversation[data-id="{conversation}"] .conversation-open').click()
        expect(wide.page.locator(".message.assistant")).to_have_count(7)
        assert_question_box_pinned(wide.page, WIDE)
        wide.page.screenshot(path=str(ARTIFACTS / "browser-wide-long.png"))
        assert wide.unexpected_errors() == []


def test_api_key_entry_when_auth_is_on(browser, tmp_path, embedder):
    from playwright.sync_api import expect

    with (
        served(service_settings(tmp_path / "data", api_keys="browser-secret"), embedder) as service,
        pages(browser) as context,
    ):
        # Chromium logs each refused request as a console error; those are expected here.
        tab = Page(context, service.url, WIDE, allowed=(r"status of 401",))
        page = tab.page
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()  # the document list answered 401
        expect(page.locator("#service-status")).to_have_text("API key needed")
        expect(page.locator("#key-message")).to_be_hidden()
        assert_accessible(page, "key dialog")

        key = page.get_by_role("textbox", name="Key")
        key.fill("wrong-key")
        key.press("Enter")  # Enter saves (it used to forget the key)
        expect(page.locator("#key-message")).to_contain_text("That key was refused")
        expect(dialog).to_be_visible()
        expect(page.locator("#service-status")).to_have_text("API key refused")
        assert_accessible(page, "key refused")

        key.fill("browser-secret")
        key.press("Enter")
        expect(dialog).to_be_hidden()
        expect(page.locator("#documents-summary")).to_have_text("No documents yet.")
        expect(page.locator("#service-status")).to_have_text("Ready")
        assert page.evaluate("localStorage.getItem('ragtune.apiKey')") == "browser-secret"

        # After a reload the key works silently, and it can still be changed or forgotten.
        page.reload()
        expect(page.locator("#documents-summary")).to_have_text("No documents yet.")
        expect(dialog).to_be_hidden()
        expect(page.get_by_role("button", name="Change key")).to_be_visible()
        expect(page.get_by_role("button", name="Sign out")).to_be_visible()
        assert_accessible(page, "signed in")
        page.get_by_role("button", name="Change key").click()
        expect(dialog).to_be_visible()
        page.keyboard.press("Escape")
        expect(dialog).to_be_hidden()
        assert page.evaluate("localStorage.getItem('ragtune.apiKey')") == "browser-secret"

        page.get_by_role("button", name="Sign out").click()
        expect(dialog).to_be_visible()  # the server still wants a key
        expect(page.locator("#key-message")).to_be_hidden()
        expect(page.locator("#documents-summary")).to_contain_text("Cannot list documents")
        assert page.evaluate("localStorage.getItem('ragtune.apiKey')") is None
        key.fill("browser-secret")
        page.get_by_role("button", name="Forget key").click()  # forgets, whatever was typed
        expect(dialog).to_be_visible()
        assert page.evaluate("localStorage.getItem('ragtune.apiKey')") is None
        assert service.http.get("/v1/documents").status_code == 401
        assert tab.unexpected_errors() == []


def test_upload_into_a_collection_with_metadata(browser, tmp_path, embedder):
    from playwright.sync_api import expect

    with served(service_settings(tmp_path / "data"), embedder) as service, pages(browser) as context:
        # Chromium logs the refused upload (422) as a console error; that one is expected here.
        tab = Page(context, service.url, WIDE, allowed=(r"status of 422",))
        page = tab.page
        expect(page.locator("#documents-summary")).to_have_text("No documents yet.")
        summary = page.locator("#upload-summary")
        expect(summary).to_have_text("Upload into: ragtune (default)")
        options = page.locator("#collection-options option")
        expect(options).to_have_count(1)
        assert options.first.get_attribute("value") == "ragtune"
        summary.click()
        collection, metadata = page.get_by_label("Collection"), page.get_by_label("Metadata (JSON object)")
        expect(collection).to_be_visible()
        expect(collection).to_have_attribute("placeholder", "ragtune (default)")
        assert_accessible(page, "upload options")
        note = ("finance-note.txt", b"The finance team closes the books on the third Tuesday.", "text/plain")

        # Checked before anything is sent: a bad name or bad JSON is said, and nothing is uploaded.
        collection.fill("-finance")
        drop_files(page, [note])
        error = page.locator("#upload-options-error")
        expect(error).to_be_visible()
        expect(error).to_contain_text('Collection "-finance" is not a valid name')
        expect(collection).to_have_attribute("aria-invalid", "true")
        collection.fill("finance")
        expect(error).to_be_hidden()  # fixed: the message goes
        for bad, said in (
            ('{"team": ', "Metadata is not valid JSON"),
            ('["finance"]', "Metadata must be a JSON object"),
            ('{"the team": "finance"}', 'Metadata key "the team" is not allowed'),
            ('{"team": {"name": "finance"}}', "Metadata team: use a text"),
        ):
            metadata.fill(bad)
            drop_files(page, [note])
            expect(error).to_contain_text(said)
            expect(metadata).to_have_attribute("aria-invalid", "true")
            expect(metadata).to_be_focused()
        assert_accessible(page, "metadata refused")
        expect(page.locator(".job")).to_have_count(0)

        # What only the server refuses is shown on the upload's card.
        metadata.fill('{"year": 9223372036854775808}')
        drop_files(page, [note])
        refused = page.locator(".job").first
        expect(refused).to_have_attribute("data-state", "failed")
        expect(refused.locator(".job-detail")).to_contain_text("Not uploaded: metadata year:")

        metadata.fill('{"team": "finance", "year": 2024, "audited": true}')
        expect(summary).to_have_text("Upload into: finance, with metadata")
        drop_files(page, [note])
        job = page.locator(".job").first
        expect(job).to_have_attribute("data-state", "done", timeout=60_000)
        listed = page.locator('#document-list .document[data-collection="finance"]')
        expect(listed).to_have_count(1)
        expect(listed).to_contain_text("finance · 1 chunk · uploads/finance-note.txt")
        expect(listed).to_contain_text("team=finance, year=2024, audited=true")
        expect(options).to_have_count(2)  # the new collection is offered next time
        assert sorted(o.get_attribute("value") for o in options.all()) == ["finance", "ragtune"]
        assert_accessible(page, "uploaded into a collection")

        [doc] = service.http.get("/v1/collections/finance/documents").json()["documents"]
        assert doc["source"] == "uploads/finance-note.txt"
        assert doc["metadata"] == {"team": "finance", "year": 2024, "audited": True}
        assert service.http.get("/v1/collections/ragtune/documents").json()["total"] == 0
        page.screenshot(path=str(ARTIFACTS / "browser-collection-upload.png"))
        assert tab.unexpected_errors() == []
