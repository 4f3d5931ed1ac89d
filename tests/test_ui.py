"""The /ui viewer in a real browser: Playwright driving Debian's chromium (`make browser`) against
a real server, with every request beyond loopback refused. Screenshots go to build/test-artifacts/ui/
(MLLM_AUDIT_SCREENSHOTS=DIR puts them elsewhere: the README's screenshot is made that way, see docs/viewer.md).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from tests.server_process import REPO, ServerProcess

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
KEY = "ui-test-key"
PAYLOAD_LIMIT = 200_000
EXAMPLE = REPO / "examples" / "images" / "red-circle-green-triangle.png"  # 8 superpixels at regions=8


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ui_server")
    env = {
        "MLLM_AUDIT_API_KEY": KEY,
        "MLLM_AUDIT_MAX_PAYLOAD_BYTES": str(PAYLOAD_LIMIT),
        "MLLM_AUDIT_CPU_THREADS": "1",
        "MLLM_AUDIT_METRICS_DIR": str(tmp / "metrics"),
    }
    with ServerProcess(env, log_path=tmp / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `make browser` installs Debian's")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    folder = Path(os.environ.get("MLLM_AUDIT_SCREENSHOTS") or REPO / "build" / "test-artifacts" / "ui")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def open_page(browser, server):
    """Pages that reach the server only: any request elsewhere is aborted and recorded (and fails the test)."""
    contexts, outside = [], []

    def make(bypass_csp: bool = True):
        # bypass_csp: the test's own wait_for_function predicates are strings, which the viewer's CSP forbids
        context = browser.new_context(viewport={"width": 1100, "height": 1500}, bypass_csp=bypass_csp)
        contexts.append(context)
        requests: list[str] = []

        def only_loopback(route):
            url = route.request.url
            requests.append(url)
            if url.startswith("data:") or urlparse(url).hostname == "127.0.0.1":
                route.continue_()
            else:
                outside.append(url)
                route.abort()

        context.route("**/*", only_loopback)
        pg = context.new_page()
        pg.requests = requests
        return pg

    yield make
    for context in contexts:
        context.close()
    assert not outside, f"the page tried to reach beyond loopback: {outside}"


@pytest.fixture
def page(open_page):
    return open_page()


def canvas_pixels(page) -> dict[str, int]:
    """What the overlay canvas shows, summed in the page (the pixels themselves are slow to ship out)."""
    return page.evaluate(
        """() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let black = 0, hash = 0, total = 0;
        for (let i = 0; i < d.length; i += 4) {
          if (d[i] + d[i + 1] + d[i + 2] === 0) black++;
          total += d[i] + d[i + 1] + d[i + 2];
          hash = (hash * 31 + d[i] * 7 + d[i + 1] * 3 + d[i + 2]) % 1000000007;
        }
        return {black, hash, total, pixels: d.length / 4}; }"""
    )


def open_viewer(page, server) -> None:
    page.goto(server.url + "/ui")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.getElementById('service-line').textContent.startsWith('Model')")


def test_the_viewer_explains_an_example_offline(page, server, shots):
    open_viewer(page, server)
    assert page.eval_on_selector_all("#method option", "os => os.map(o => o.value)")[0] in ("eagle", "eagle_greedy")
    page.set_input_files("#image-file", str(EXAMPLE))
    page.wait_for_selector("#image-preview:not([hidden])")
    page.fill("#prompt", "Describe the image.")
    page.fill("#answer", "a red circle and a green triangle.")
    page.select_option("#method", "eagle")
    page.select_option("#targets", "tokens")
    page.fill("#regions", "8")
    page.click("#submit")
    # the streamed progress: the bar's share of the budget, and its count in the text
    page.wait_for_function("document.getElementById('progress').value > 0", timeout=60_000)
    assert "forward passes" in page.text_content("#progress-text")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    assert page.is_hidden("#error")
    tokens = page.query_selector_all("#tokens-risk .token")
    assert len(tokens) >= 5 and "triangle" in "".join(t.text_content() for t in tokens)
    assert page.query_selector_all("#claims li"), "no claims listed"
    page.screenshot(path=str(shots / "viewer-answer.png"), full_page=True)

    # clicking another token draws another target's map (the first token's is shown at first)
    first = canvas_pixels(page)
    square = next(t for t in tokens if "triangle" in t.text_content())
    square.click()
    assert page.get_attribute("#overlay", "data-target").strip() == square.text_content().strip()
    assert page.get_attribute("#overlay", "data-kind") == "gain"
    after = canvas_pixels(page)
    assert after["pixels"] == first["pixels"] and after["hash"] != first["hash"]
    assert "insertion" in page.inner_html("#curves")
    page.screenshot(path=str(shots / "viewer.png"), full_page=True)

    # the slider reveals regions in rank order: the top one alone leaves most of the image black
    regions = int(page.get_attribute("#reveal", "max"))
    assert regions >= 2
    page.fill("#reveal", "1")
    assert "top 1 of" in page.text_content("#reveal-count")
    one = canvas_pixels(page)
    page.fill("#reveal", str(regions // 2))
    half = canvas_pixels(page)
    assert one["black"] > half["black"] > 0
    page.screenshot(path=str(shots / "viewer-reveal.png"), full_page=True)
    assert page.input_value("#curl-snippet").count("curl") == 1 and "AuditClient" in page.input_value("#python-snippet")


def test_errors_are_shown_with_the_request_id_and_large_files_refused_before_upload(page, server, tmp_path):
    open_viewer(page, server)
    # an answer of spaces passes the form but not the service: its 422 detail and request id are shown
    page.set_input_files("#image-file", str(EXAMPLE))
    page.wait_for_selector("#image-preview:not([hidden])")
    page.fill("#answer", "   ")
    page.select_option("#endpoint", "reliance")
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    text = page.text_content("#error")
    assert "422" in text and "answer is empty" in text and "request id: " in text
    assert page.is_hidden("#progress") and page.is_enabled("#submit")

    # over the service's payload limit (read from /info): refused in the browser, nothing posted
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > PAYLOAD_LIMIT
    posted = len([u for u in page.requests if "/v1/" in u])
    page.set_input_files("#image-file", str(big))
    page.wait_for_function(f"document.getElementById('error').textContent.includes('{PAYLOAD_LIMIT}')")
    assert len([u for u in page.requests if "/v1/" in u]) == posted


def test_controls_have_labels_and_are_reachable_by_keyboard(page, server):
    open_viewer(page, server)
    unlabelled = page.evaluate(
        """() => Array.from(document.querySelectorAll('input, select, textarea'))
             .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id)"""
    )
    assert unlabelled == []
    reached = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.id"))
    for control in ("drop-zone", "prompt", "answer", "method", "regions", "api-key", "submit"):
        assert control in reached, f"{control} not reachable with Tab"


def test_swagger_ui_and_redoc_render_offline(open_page, server, shots):
    page = open_page(bypass_csp=False)  # ReDoc's page relies on its CSP to load nothing from its CDN
    page.goto(server.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    operations = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
    assert any("/v1/reliance" in text for text in operations)
    page.screenshot(path=str(shots / "docs.png"))
    page.goto(server.url + "/redoc")
    page.wait_for_selector("h1:has-text('MLLM Audit')", timeout=30_000)
    assert page.get_by_text("/v1/explain").count() > 0
    page.screenshot(path=str(shots / "redoc.png"))


def test_the_html_report_sorts_and_draws_offline(browser, server, tmp_path, shots):
    """Saved /v1/explain responses (heat maps as PNG) through `mllm-audit report`, opened from file://."""
    from mllm_audit.service import cli
    from mllm_audit.service.client import AuditClient

    saved = tmp_path / "responses.jsonl"
    with AuditClient(server.url, api_key=KEY) as client, saved.open("w") as fh:
        for name, answer in (
            ("red-circle.png", "a red circle and a blue square."),
            (EXAMPLE.name, "a green triangle."),
        ):
            image = EXAMPLE.parent / name
            result = client.explain(
                image=image, prompt="Describe the image.", answer=answer, regions=8, heatmap={"encoding": "png"}
            )
            fh.write(result.model_dump_json(exclude_none=False)[:-1] + f', "id": "{name}", "image": "{image}"}}\n')
        fh.write('{"detail": "the answer is empty", "id": "refused"}\n')
    report = tmp_path / "report.html"
    assert cli.main(["report", str(saved), "--html", str(report)]) == 0

    context = browser.new_context(viewport={"width": 1100, "height": 1500})
    fetched: list[str] = []

    def nothing_but_the_file(route):
        fetched.append(route.request.url)
        (route.continue_ if route.request.url.startswith(("file:", "data:")) else route.abort)()

    context.route("**/*", nothing_but_the_file)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(report.as_uri())
    page.wait_for_function("document.body.dataset.drawn === '2'")
    assert not errors and all(u.startswith(("file:", "data:")) for u in fetched), (errors, fetched)
    ids = lambda: page.eval_on_selector_all("#cases-table tbody tr", "rs => rs.map(r => r.cells[0].textContent)")  # noqa: E731
    before = ids()
    assert before[:2] == ["red-circle.png", EXAMPLE.name] and before[2] == "refused"  # riskiest first, then errors
    page.click("#cases-table th:nth-child(1) button")  # id, ascending
    assert ids() == sorted(before) and ids() != before
    page.click("#cases-table th:nth-child(2) button")  # risk, ascending: the error (-1) first
    assert ids()[0] == "refused" and page.get_attribute("#cases-table th:nth-child(2)", "aria-sort") == "ascending"
    drawn = page.eval_on_selector_all("canvas.overlay", "cs => cs.map(c => c.dataset.drawn)")
    assert drawn == ["heatmap", "heatmap"]
    page.screenshot(path=str(shots / "report.png"), full_page=True)
    # the overlay is not the bare image: the heat map and the boxes changed most of its pixels
    changed = page.evaluate(
        """async () => { const c = document.querySelector('canvas.overlay');
        const data = JSON.parse(document.getElementById('report-cases').textContent)[0];
        const img = await window.MLLMRender.loadImage(data.image);
        const bare = document.createElement('canvas'); bare.width = c.width; bare.height = c.height;
        const ctx = bare.getContext('2d'); ctx.imageSmoothingEnabled = false;
        ctx.drawImage(img, 0, 0, c.width, c.height);
        const a = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const b = ctx.getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 0; i < a.length; i += 4) if (a[i] !== b[i] || a[i + 1] !== b[i + 1] || a[i + 2] !== b[i + 2]) n++;
        return n / (a.length / 4); }"""
    )
    assert changed > 0.5, changed
    risky = page.eval_on_selector_all("#case-0 .token.risk-high", "ts => ts.map(t => t.textContent)")
    assert any("square" in t or "blue" in t for t in risky)
    context.close()
