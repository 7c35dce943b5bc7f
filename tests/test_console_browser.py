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
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
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
    # the 4xx answers a test provokes on purpose are logged by the browser ("Failed to load resource: ... status
    # of 409"); the page shows them itself. No other error (a script error, a CSP violation, a 5xx) may occur.
    assert [e for e in c.errors if not re.search(r"status of 4\d\d ", e)] == []


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
    page.get_by_label("API key").fill(ADMIN_KEY)
    page.get_by_label("API key").press("Enter")  # the keyboard alone signs in
    expect(page.get_by_role("navigation")).to_be_visible()
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


def choose_file_from_keyboard(page, tries: int = 3):
    """Focus the drop zone and press Enter until the file chooser opens. On a loaded machine the page can
    render again just after navigation, so the zone focused first may be replaced before Enter arrives."""
    for attempt in range(tries):
        page.locator("#dropzone").focus()
        try:
            with page.expect_file_chooser(timeout=WAIT // tries) as chooser:
                page.keyboard.press("Enter")
            return chooser.value
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise


def upload_through_ui(console, name: str, data: bytes, how: str = "input"):
    """Upload through the file input, by dropping a file on the drop zone, or from the keyboard alone."""
    page = console.page
    console.go("Datasets")
    payload = {"name": name, "mimeType": "application/jsonl", "buffer": data}
    if how == "drop":
        transfer = page.evaluate_handle("""([name, text]) => { const dt = new DataTransfer();
            dt.items.add(new File([text], name, {type: "application/jsonl"})); return dt; }""", [name, data.decode()])
        page.dispatch_event("#dropzone", "drop", {"dataTransfer": transfer})
    elif how == "keyboard":
        chooser = choose_file_from_keyboard(page)
        chooser.set_files(payload)
    else:
        page.locator("#upload-input").set_input_files(payload)
    done = page.get_by_text(f"Uploaded {name} as file-")
    expect(done).to_be_visible()
    expect(page.get_by_label("Upload progress")).to_have_attribute("value", "100")
    return re.search(r"file-\w+", done.text_content()).group(0)


def test_a_bad_dataset_shows_its_line_errors(console):
    page = console.page
    console.sign_in(ADMIN_KEY)
    bad = dataset(4) + b'{"messages": [{"role": "user", "content": "hi"}]}\n' + b"{not json\n"
    upload_through_ui(console, "bad.jsonl", bad, how="drop")
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


def points_shown(page) -> int:
    text = page.locator("#curve-points").text_content() or ""
    m = re.match(r"(\d+) training points", text)
    return int(m.group(1)) if m else 0


def create_job_through_ui(console, training_file: str, **hyper):
    page = console.page
    console.go("Fine-tuning")
    form = page.get_by_role("form", name="New fine-tuning job")
    form.get_by_label("Base model").select_option("tiny")
    form.get_by_label("Training file").select_option(training_file)
    for label, value in hyper.items():
        control = form.locator(f"[name={label}]")
        if control.evaluate("e => e.tagName") == "SELECT":
            control.select_option(str(value))
        else:
            control.fill(str(value))
    console.shot("job-form")
    form.get_by_role("button", name="Create job").click()
    expect(page.locator("#job-summary h1")).to_contain_text("ftjob-")
    return page.locator("#job-summary h1").text_content().split()[1]


def test_tfew_job_live_curve_host_chat_and_deactivate(console, tiny_model):
    page = console.page
    console.sign_in(ADMIN_KEY)
    file_id = upload_through_ui(console, "train.jsonl", dataset(40), how="keyboard")
    expect(page.locator("#file-detail .badge")).to_have_text("processed")
    # 40 examples → 32 train, batch 2 → 16 steps per epoch; enough steps to watch the curve grow
    job_id = create_job_through_ui(console, file_id, training_method="tfew", total_training_epochs=12,
                                   training_batch_size=2, log_model_metrics_interval_in_steps=1, suffix="ui")
    summary = page.locator("#job-summary")
    expect(summary.locator(".badge")).to_have_text("running")
    expect(page.locator("#curve-points")).to_contain_text("training points")
    first = points_shown(page)
    assert first >= 1
    # the page polls: the point count rises while the job runs, without a reload
    expect(page.locator("#curve-points")).not_to_contain_text(f"{first} training points")
    assert points_shown(page) > first
    console.shot("job-running")
    # a second job waits behind the first (one job at a time): pause, resume and cancel it from its page
    import httpx

    second = httpx.post(f"{console.origin}/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                        json={"model": "tiny", "training_file": file_id}).json()["id"]
    console.open(f"#/jobs/{second}")
    badge = page.locator("#job-summary .badge")
    expect(page.locator("#job-summary h1")).to_contain_text(second)
    page.get_by_role("button", name="Pause").click()
    expect(badge).to_have_text("paused", timeout=240_000)
    page.get_by_role("button", name="Resume").click()
    expect(badge).to_have_text(re.compile("queued|running"))
    page.get_by_role("button", name="Cancel").click()
    expect(badge).to_have_text("cancelled", timeout=240_000)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    console.shot("job-cancelled")
    console.open(f"#/jobs/{job_id}")
    expect(summary.locator(".badge")).to_have_text("succeeded", timeout=240_000)
    expect(page.locator("#curve-points")).to_contain_text("192 training points")  # 16 steps × 12 epochs
    expect(page.locator("#curve-points")).to_contain_text(", 12 validation points")
    expect(page.locator(".chart canvas")).to_have_count(2)
    custom = f"ft:tiny:ui:{job_id}"
    expect(summary).to_contain_text(custom)
    console.shot("job-succeeded")

    console.go("Models")
    page.get_by_role("link", name=custom, exact=True).click()
    detail = page.locator("#model-detail")
    expect(detail.get_by_role("heading", name="Lineage")).to_be_visible()
    expect(detail).to_contain_text("tfew")
    expect(detail).to_contain_text(job_id)
    console.shot("model-lineage")

    console.go("Clusters")
    form = page.get_by_role("form", name="New cluster")
    form.get_by_label("Type").select_option("HOSTING")
    form.get_by_label("Base model (hosting)").select_option("tiny")
    form.get_by_label("Name").fill("ui-hosting")
    form.get_by_role("button", name="Create cluster").click()
    clusters = page.locator("#cluster-list")
    expect(clusters.get_by_role("cell", name="ui-hosting", exact=True)).to_be_visible()
    expect(clusters.get_by_role("cell", name="0 of 50")).to_be_visible()
    form = page.get_by_role("form", name="New endpoint")
    form.get_by_label("Model").select_option(custom)
    form.get_by_label("Name").fill("ui-bot")
    form.get_by_role("button", name="Create endpoint").click()
    expect(page.get_by_role("button", name="Deactivate ui-bot")).to_be_visible()
    expect(clusters.get_by_role("cell", name="1 of 50")).to_be_visible()
    expect(page.locator("#usage")).to_contain_text("ui-hosting")
    console.shot("clusters")

    console.go("Playground")
    page.get_by_label("Model or endpoint").select_option("ui-bot")
    page.get_by_label("Side by side with").select_option("tiny")
    page.get_by_label("Max tokens").fill("12")
    page.get_by_label("Message").fill("say hello")
    page.get_by_role("button", name="Send").click()
    for pane in (page.get_by_role("region", name="Answers from ui-bot"),
                 page.get_by_role("region", name="Answers from tiny")):
        answer = pane.locator(".msg.assistant")
        expect(answer).to_have_attribute("data-streaming", "false")
        assert int(answer.get_attribute("data-chunks")) >= 2  # streamed: several content chunks, not one reply
        expect(pane).to_contain_text("tokens · finish:")
    console.shot("playground")

    console.go("Clusters")
    page.get_by_role("button", name="Deactivate ui-bot").click()
    expect(page.get_by_role("button", name="Activate ui-bot")).to_be_visible()
    console.go("Playground")
    page.get_by_label("Model or endpoint").select_option("ui-bot")
    page.get_by_label("Message").fill("say hello")
    page.get_by_role("button", name="Send").click()
    pane = page.get_by_role("region", name="Answers from ui-bot")
    expect(pane.get_by_role("alert")).to_contain_text("ui-bot is INACTIVE")
    expect(pane.get_by_role("alert")).to_contain_text("HTTP 409")
    console.shot("playground-refused")


def test_a_viewer_key_sees_no_mutating_buttons_and_the_server_refuses_anyway(console, tiny_model):
    from graftlm.clusters.clusters import create_cluster
    from graftlm.keys.service import create_key

    page = console.page
    cluster = create_cluster("HOSTING", base_model="tiny", name="shared")
    from graftlm.clusters.endpoints import create_endpoint

    create_endpoint("tiny", cluster["id"], "base-bot")
    secret, _ = create_key("auditor", role="viewer")
    console.sign_in(secret)
    expect(page.locator("#who")).to_contain_text("auditor · viewer (read-only)")
    expect(page.get_by_role("heading", name="Files")).to_be_visible()
    expect(page.get_by_role("heading", name="Upload")).to_have_count(0)
    expect(page.locator("#upload-input")).to_have_count(0)
    console.shot("datasets")
    console.go("Fine-tuning")
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    expect(page.get_by_role("button", name="Create job")).to_have_count(0)
    console.go("Clusters")
    expect(page.locator("#endpoint-list").get_by_role("cell", name="base-bot")).to_be_visible()
    expect(page.locator("main").get_by_role("button")).to_have_count(0)  # no create, delete, (de)activate
    expect(page.locator("main form")).to_have_count(0)
    console.shot("clusters")
    console.go("Playground")
    expect(page.get_by_role("button", name="Send")).to_be_disabled()
    expect(page.get_by_text("Chatting needs an editor key")).to_be_visible()
    console.shot("playground")
    # the buttons are gone, and the server refuses the calls they would make anyway
    statuses = page.evaluate("""async () => {
        const key = sessionStorage.getItem("graftlm.console.key");
        const call = (method, path, body) => fetch(path, {method, headers: {Authorization: `Bearer ${key}`,
            "Content-Type": "application/json"}, body: body && JSON.stringify(body)}).then(r => r.status);
        return [await call("POST", "/v1/endpoints/base-bot/deactivate"),
                await call("POST", "/v1/dedicated_ai_clusters", {type: "HOSTING", base_model: "tiny"}),
                await call("POST", "/v1/chat/completions", {model: "base-bot", messages: [{role: "user", content: "hi"}]}),
                await call("GET", "/v1/endpoints")];
    }""")
    assert statuses == [403, 403, 403, 200]


def test_evals_show_runs_failure_clusters_and_the_ladder_chart(console, tmp_path):
    from graftlm.evals import store

    ev = store.create_eval("intents", str(tmp_path / "test.jsonl"), ["label_accuracy"])
    results = [{"id": f"ex{i}", "question": f"q{i}", "reference": "balance", "prediction": "hi" if i < 2 else "balance",
                "scores": {"label_accuracy": 0.0 if i < 2 else 1.0}} for i in range(4)]
    store.save_run(ev["id"], {"id": "evalrun-1", "object": "eval.run", "eval_id": ev["id"], "model": "tiny",
                              "strategy": "zero-shot", "n": 4, "score": 0.5, "ci_low": 0.0, "ci_high": 1.0,
                              "aggregates": {"label_accuracy": {"mean": 0.5, "ci_low": 0.0, "ci_high": 1.0}},
                              "created_at": 1, "results": results,
                              "failure_clusters": [{"cluster": 0, "size": 2, "samples": [
                                  {"question": "q0", "reference": "balance", "prediction": "hi"}]}]})
    rungs = [{"name": n, "score": s, "ci_low": s - 0.1, "ci_high": min(1, s + 0.1), "tokens": 70, "unit_hours": u,
              "cost": u * 6.5} for n, s, u in (("zero-shot", 0.1, 0), ("few-shot", 0.8, 0), ("tfew", 0.85, 1))]
    ladder = tmp_path / "ladder.json"
    ladder.write_text(json.dumps({"base_model": "tiny", "n_eval": 80, "scorer": "label_accuracy", "rungs": rungs,
                                  "verdict": {"text": "tfew is best"},
                                  "loss_curves": {"tfew": [{"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.0}]}}))
    page = console.page
    console.sign_in(ADMIN_KEY)
    console.go("Evals")
    page.locator("#ladder-file").set_input_files(str(ladder))
    chart = page.get_by_role("img", name="Score per rung with 95% confidence intervals")
    expect(chart.locator("rect")).to_have_count(3)
    expect(chart.locator("line")).to_have_count(5 + 3 * 3)  # 5 grid lines, a whisker and two caps per rung
    expect(page.locator("#ladder")).to_contain_text("tfew is best")
    expect(page.locator("#ladder > table > tbody > tr")).to_have_count(3)
    expect(page.locator("#ladder .chart canvas")).to_have_count(1)
    console.shot("ladder")
    page.get_by_role("button", name="intents").click()
    page.get_by_role("button", name="evalrun-1").click()
    run = page.locator("#eval-run")
    expect(run).to_contain_text("Cluster 0: 2 failures")
    expect(run.locator("table").last.locator("tbody tr")).to_have_count(2)  # the two failed examples
    console.shot("eval-run")


@pytest.fixture
def facts_kb(varied_model_dir, monkeypatch):
    from graftlm import rag
    from graftlm.models.catalog import import_model

    monkeypatch.setenv("GRAFT_DTYPE", "float32")
    import_model(varied_model_dir, "tiny")
    kb = rag.create_kb("facts", chunk_size=32, chunk_overlap=4)
    rag.ingest_documents(kb, [
        {"id": "paris", "text": "Paris is the capital of France. The Eiffel Tower is in Paris.", "metadata": {}},
        {"id": "tea", "text": "Tea is brewed from leaves. Green tea is not oxidized.", "metadata": {}}])
    yield kb
    rag.close_stores()


def test_playground_grounded_answer_lists_its_citations(console, facts_kb):
    page = console.page
    console.sign_in(ADMIN_KEY)
    console.go("Playground")
    page.get_by_label("Model or endpoint").select_option("tiny")
    page.get_by_label("Knowledge base").select_option(facts_kb.id)
    page.get_by_label("Max tokens").fill("8")
    page.get_by_label("Message").fill("Where is the Eiffel Tower?")
    page.get_by_role("button", name="Send").click()
    pane = page.get_by_role("region", name="Answers from tiny")
    expect(pane.locator(".msg.assistant")).to_have_attribute("data-streaming", "false")
    citations = pane.get_by_role("list", name="Citations").locator("li")
    expect(citations.first).to_contain_text("The Eiffel Tower is in Paris")
    console.shot("playground-grounded")


def test_job_form_names_the_bad_field_and_sends_the_cluster(console, tiny_model):
    from graftlm.clusters.clusters import create_cluster
    from graftlm.jobs.service import get_job

    cluster = create_cluster("FINE_TUNING", name="trainers")
    page = console.page
    console.sign_in(ADMIN_KEY)
    file_id = upload_through_ui(console, "train.jsonl", dataset(8))
    expect(page.locator("#file-detail .badge")).to_have_text("processed")
    console.go("Fine-tuning")
    form = page.get_by_role("form", name="New fine-tuning job")
    form.get_by_label("Training file").select_option(file_id)
    form.get_by_label("Fine-tuning cluster").select_option(cluster["id"])
    form.get_by_label("Suffix").fill("bad:suffix")  # the server refuses it: the form marks that field
    form.get_by_role("button", name="Create job").click()
    expect(form.get_by_role("alert")).to_contain_text("suffix")
    expect(form.get_by_label("Suffix")).to_have_attribute("aria-invalid", "true")
    console.shot("job-form-error")
    form.get_by_label("Suffix").fill("good")
    form.get_by_role("button", name="Create job").click()
    summary = page.locator("#job-summary")
    expect(summary).to_contain_text(cluster["id"])
    job_id = summary.locator("h1").text_content().split()[1]
    assert get_job(job_id)["dedicated_ai_cluster_id"] == cluster["id"]
    page.get_by_role("button", name="Cancel").click()
    expect(summary.locator(".badge")).to_have_text("cancelled", timeout=240_000)
