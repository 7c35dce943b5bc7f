"""Screenshots of the console for the README, taken from the real UI: upload the CLINC150 sample, fine-tune with
T-Few from the job form, watch the live curves, host base + custom model, ask both side by side.

    .venv/bin/python examples/console_screenshots.py                  # SmolLM2-135M (pulled once), docs/console/
    .venv/bin/python examples/console_screenshots.py --model tiny     # a tiny random model: fast, gibberish answers

Needs Playwright and Debian's chromium (as the browser tests do). GRAFT_HOME defaults to .graft-screenshots/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRAFT_HOME", str(ROOT / ".graft-screenshots"))
KEY = os.environ.setdefault("GRAFT_ADMIN_KEY", "gk-" + secrets.token_urlsafe(16))
WAIT = 600_000  # ms: training on a shared CPU




def base_model(name: str) -> str:
    from graftlm.models.catalog import get_model, import_model, pull

    if name != "tiny":
        return pull(name)["id"]
    try:
        return get_model("tiny")["id"]
    except Exception:
        from graftlm.testing.models import build_tiny_llama

        return import_model(build_tiny_llama(Path(tempfile.mkdtemp())), "tiny")["id"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a catalog base model, or tiny")
    ap.add_argument("--steps", type=int, default=16, help="T-Few optimizer steps (batch 8)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    from graftlm.console.testing import launch, missing_reason

    if missing_reason():
        print(missing_reason(), file=sys.stderr)
        return 1
    expect.set_options(timeout=WAIT)
    args.out.mkdir(parents=True, exist_ok=True)
    base = base_model(args.model)
    from graftlm.testing.live import serve_in_thread

    origin = serve_in_thread().origin
    question = "how much money do i have in my checking account"
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.set_default_timeout(WAIT)
        page.goto(f"{origin}/console/")
        page.get_by_label("API key").fill(KEY)
        page.get_by_role("button", name="Sign in").click()

        page.locator("#upload-input").set_input_files(str(HERE / "clinc150" / "train.jsonl"))
        done = page.get_by_text("Uploaded train.jsonl as file-")
        expect(done).to_be_visible()
        file_id = re.search(r"file-\w+", done.text_content()).group(0)
        expect(page.locator("#file-detail .badge")).to_have_text("processed")
        page.get_by_label("Token statistics under").select_option(base)
        page.get_by_role("button", name="Count tokens").click()
        expect(page.locator("#file-detail")).to_contain_text("Trainable (loss) tokens")
        page.screenshot(path=str(args.out / "datasets.png"), full_page=True)

        page.get_by_role("link", name="Fine-tuning").click()
        form = page.get_by_role("form", name="New fine-tuning job")
        form.get_by_label("Base model").select_option(base)
        form.get_by_label("Training file").select_option(file_id)
        form.locator("[name=training_method]").select_option("tfew")
        form.locator("[name=suffix]").fill("clinc")
        form.locator("[name=max_steps]").fill(str(args.steps))
        form.locator("[name=training_batch_size]").fill("8")
        form.locator("[name=log_model_metrics_interval_in_steps]").fill("1")
        form.locator("[name=eval_interval_steps]").fill(str(max(1, args.steps // 4)))
        form.get_by_role("button", name="Create job").click()
        expect(page.locator("#job-summary .badge")).to_have_text("running")
        half = max(2, args.steps // 2)
        page.wait_for_function("n => parseInt(document.querySelector('#curve-points').textContent) >= n", arg=half,
                               timeout=WAIT)
        page.screenshot(path=str(args.out / "job-running.png"), full_page=True)
        expect(page.locator("#job-summary .badge")).to_have_text("succeeded")
        custom = page.locator("#job-summary a[href^='#/models/']").text_content()
        page.screenshot(path=str(args.out / "job.png"), full_page=True)

        page.get_by_role("link", name="Clusters").click()
        form = page.get_by_role("form", name="New cluster")
        form.get_by_label("Base model (hosting)").select_option(base)
        form.get_by_label("Name").fill("shots")
        form.get_by_role("button", name="Create cluster").click()
        expect(page.locator("#cluster-list")).to_contain_text("shots")
        for model, name in ((base, "base-bot"), (custom, "clinc-bot")):
            form = page.get_by_role("form", name="New endpoint")
            form.get_by_label("Model").select_option(model)
            form.get_by_label("Name").fill(name)
            form.get_by_role("button", name="Create endpoint").click()
            expect(page.get_by_role("button", name=f"Deactivate {name}")).to_be_visible()
        page.screenshot(path=str(args.out / "clusters.png"), full_page=True)

        page.get_by_role("link", name="Playground").click()
        page.get_by_label("Model or endpoint").select_option("base-bot")
        page.get_by_label("Side by side with").select_option("clinc-bot")
        page.get_by_label("Max tokens").fill("24")
        first = json.loads((HERE / "clinc150" / "train.jsonl").read_text().splitlines()[0])
        system = first["messages"][0]["content"]
        page.get_by_label("System prompt").fill(system)
        page.get_by_label("Message").fill(question)
        page.get_by_role("button", name="Send").click()
        for name in ("base-bot", "clinc-bot"):
            expect(page.get_by_role("region", name=f"Answers from {name}").locator(".msg.assistant")) \
                .to_have_attribute("data-streaming", "false")
        page.screenshot(path=str(args.out / "playground.png"), full_page=True)
        browser.close()
    print(f"screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
