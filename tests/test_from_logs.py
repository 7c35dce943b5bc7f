"""`graft data from-logs`: rated request logs become validated SFT and preference (DPO) datasets."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from graftlm.cli import app
from graftlm.clusters import clusters, endpoints
from graftlm.config import get_settings
from graftlm.data.validate import validate_file
from graftlm.observe import from_logs, logs

N = iter(range(10_000))


def logged(endpoint, question, answer, kind="chat"):
    i = next(N)
    request = {"messages": [{"role": "user", "content": question}]} if kind == "chat" else {"prompt": question}
    entry = {"id": f"chatcmpl-{i}", "endpoint_id": endpoint["id"], "endpoint_name": endpoint["name"],
             "model": "tiny", "kind": kind, "status": 200, "prompt_tokens": 3, "completion_tokens": 2,
             "latency_ms": 1.0, "created_ns": 1_800_000_000 * 10**9 + i, "request": request,
             "response": {"choices": [{"index": 0, "text": answer}]},
             "_db": get_settings().db_url, "_blobs": str(logs.log_blobs_dir())}
    logs.write_rows([entry])
    return entry["id"]


def test_rated_logs_become_sft_and_preference_data(tiny_model, tmp_path):
    cluster = clusters.create_cluster("HOSTING", base_model="tiny", name="c")
    ep = endpoints.create_endpoint("tiny", cluster["id"], "bot", log_requests=True)
    a1 = logged(ep, "balance?", "you have 100")          # thumbs up
    a2 = logged(ep, "balance?", "you have 100")          # the same good answer again: deduplicated
    a3 = logged(ep, "balance?", "the weather is nice")   # thumbs down: the rejected one for this prompt
    b1 = logged(ep, "freeze my card", "which card?")     # corrected: correction > its answer
    logged(ep, "unrated question", "whatever")           # no feedback: not used
    t1 = logged(ep, "once upon", "a time", kind="text")  # a text completion: skipped
    c1 = logged(ep, "meh", "so-so")                      # 3 stars: neither good nor bad
    for cid, rating, kw in ((a1, 1, {}), (a2, 5, {}), (a3, -1, {}), (b1, -1, {"correction": "card frozen"}),
                            (t1, 1, {}), (c1, 3, {})):
        logs.add_feedback(cid, rating, **kw)
    out = CliRunner().invoke(app, ["data", "from-logs", "--endpoint", "bot", "--out", str(tmp_path / "data"),
                                   "--upload", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["stats"]["skipped_text"] == 1 and report["stats"]["rated"] == 5
    sft = [json.loads(x) for x in (tmp_path / "data" / "sft.jsonl").read_text().splitlines()]
    prefs = [json.loads(x) for x in (tmp_path / "data" / "preference.jsonl").read_text().splitlines()]
    assert sorted((r["messages"][0]["content"], r["messages"][1]["content"]) for r in sft) == [
        ("balance?", "you have 100"), ("freeze my card", "card frozen")]
    assert sorted((p["input"]["messages"][0]["content"], p["preferred_output"][0]["content"],
                   p["non_preferred_output"][0]["content"]) for p in prefs) == [
        ("balance?", "you have 100", "the weather is nice"), ("freeze my card", "card frozen", "which card?")]
    assert validate_file(tmp_path / "data" / "preference.jsonl")["format"] == "preference"
    assert report["files"]["sft"]["file_id"].startswith("file-")
    assert report["files"]["preference"]["file_id"].startswith("file-")
    # a judge that dislikes one good answer drops its SFT example and its pairs
    judge = lambda prompts: ["Score: 5" if "card frozen" in p[0]["content"] else "Score: 2" for p in prompts]  # noqa: E731
    judged = from_logs.build(ep["id"], judge=judge)
    assert [r["messages"][1]["content"] for r in judged["sft"]] == ["card frozen"]
    assert len(judged["preference"]) == 1
    # query variants of the SFT prompts (the synth code; a fake paraphraser here) keep the good answers
    paraphrase = lambda prompts: [p[0]["content"].split("Request: ")[-1] + " (reworded)" for p in prompts]  # noqa: E731
    written = from_logs.write(from_logs.build(ep["id"]), tmp_path / "v", variants=1, generator=paraphrase)
    varied = [json.loads(x) for x in (tmp_path / "v" / "sft_variants.jsonl").read_text().splitlines()]
    assert sorted((r["messages"][0]["content"], r["messages"][1]["content"]) for r in varied) == [
        ("balance? (reworded)", "you have 100"), ("freeze my card (reworded)", "card frozen")]
    assert written["sft_variants"]["examples"] == 2 and not list((tmp_path / "v").glob(".*"))
    out = CliRunner().invoke(app, ["data", "from-logs", "--endpoint", "nope", "--out", str(tmp_path / "x")])
    assert out.exit_code == 2 and "endpoint" in out.output
