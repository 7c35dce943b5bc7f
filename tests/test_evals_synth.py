"""Synthetic data: the pipeline with a stub generator writes valid, chunk-citing chat JSONL."""

from __future__ import annotations

import json
import re

from graftlm.data.validate import validate_file
from graftlm.evals.synth import Filters, from_queries, judged_training_data, key_phrase, synthesize

DOCS = {
    "cards.md": "# Cards\n\nA lost card can be frozen in the mobile app under Card settings. Frozen cards "
                "decline all payments until they are unfrozen.\n",
    "fees.txt": "Wire transfers abroad cost 15 euros. Domestic transfers are free of charge. Transfers "
                "above 10000 euros need a second approval.\n",
}


def stub(prompts):
    """Questions from the first context sentence, answers copied from the context (so: answerable)."""
    out = []
    for p in prompts:
        text = p[-1]["content"]
        ctx = text.split("Context:\n", 1)[-1] if "Context:\n" in text else text.split("Context 1:\n", 1)[-1]
        first = re.split(r"(?<=\.)\s", ctx.split("\n\n")[0].lstrip("# ").strip())[0]
        if "Answer the question" in text:
            out.append(first)
        elif "Rewrite this question" in text:
            out.append("Question: If it matters, " + text.rsplit("Question: ", 1)[1].lower())
        else:
            out.append(f"What does the text say about {first.split()[-1].lower()} {len(out)}?")
    return out


def write_docs(folder):
    """Every document of DOCS written into ``folder``."""
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text)
    return folder


def test_synthesize_writes_valid_chunk_citing_jsonl(tmp_path):
    docs = write_docs(tmp_path / "docs")
    report = synthesize(docs, tmp_path / "out", generator=stub, questions_per_chunk=3, evolve_fraction=0.5,
                        eval_fraction=0.34, system_prompt="Answer from the bank's documents.")
    assert report["kept"] > 0 and report["train"] > 0 and report["eval"] > 0
    for split in ("train.jsonl", "eval.jsonl"):
        assert validate_file(tmp_path / "out" / split)["valid"]
        for line in (tmp_path / "out" / split).read_text().splitlines():
            row = json.loads(line)
            doc = row["source"]["document_id"]
            assert doc in DOCS and row["source"]["chunk_id"].startswith(doc + "#")
            assert row["messages"][-1]["role"] == "assistant"
    assert report["rejected"].get("duplicate", 0) == 0  # the stub numbers its questions


def test_filters_reject_ungrounded_answers_and_can_be_relaxed(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(DOCS["fees.txt"])

    def gibberish(prompts):
        return ["zq xv wk pl mm"] * len(prompts)

    strict = synthesize(docs, tmp_path / "strict", generator=gibberish, evolve_fraction=0)
    assert strict["kept"] == 0 and strict["rejected"] == {"not_answerable": 1}
    loose = synthesize(docs, tmp_path / "loose", generator=gibberish, evolve_fraction=0,
                       filters=Filters(min_answer_overlap=0.0, min_question_chars=1))
    assert loose["kept"] == 1


def test_synthesize_with_the_tiny_model_runs_the_whole_pipeline(tmp_path, varied_model_dir):
    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(DOCS["cards.md"])
    report = synthesize(docs, tmp_path / "out", model="tiny", eval_fraction=0,
                        filters=Filters(min_answer_overlap=0.0, min_question_chars=0, min_latin_letters=0.0))
    assert report["generated"] == 1 and report["kept"] + sum(report["rejected"].values()) == 1
    if report["kept"]:
        assert validate_file(tmp_path / "out" / "train.jsonl")["valid"]


def test_from_queries_and_judged_data(tmp_path):
    q = tmp_path / "queries.jsonl"
    q.write_text(json.dumps({"messages": [{"role": "user", "content": "how do i freeze my card"},
                                          {"role": "assistant", "content": "freeze_account"}]}) + "\n"
                 + json.dumps({"query": "what is a wire fee"}) + "\n")
    report = from_queries(q, tmp_path / "variants.jsonl", generator=lambda ps: [f"variant number {i}" for i in
                                                                                 range(len(ps))], variants=2)
    rows = [json.loads(x) for x in (tmp_path / "variants.jsonl").read_text().splitlines()]
    assert report["kept"] == 4 and rows[0]["messages"][-1]["content"] == "freeze_account" and rows[2]["query"]
    items = [{"messages": [{"role": "user", "content": "2+2?"}], "candidates": ["4", "five", "22"]}]
    judge = lambda ps: ["Score: 5" if "ANSWER: 4" in p[0]["content"] else "Score: 1" for p in ps]  # noqa: E731
    out = judged_training_data(items, judge, sft_path=tmp_path / "sft.jsonl", preference_path=tmp_path / "pref.jsonl")
    assert out == {"items": 1, "sft": 1, "preference": 1}
    pref = json.loads((tmp_path / "pref.jsonl").read_text())
    assert pref["chosen"][0]["content"] == "4" and pref["scores"] == [5, 1]
    assert validate_file(tmp_path / "sft.jsonl")["valid"]


def test_key_phrase():
    assert key_phrase("Wire transfers cost money. Wire transfers abroad are slow.") == "wire transfers"


def _synth_cli():
    import typer

    from graftlm.cli.evals import synth_command

    app = typer.Typer()
    app.command("synth")(synth_command)
    app.command("noop")(lambda: None)  # two commands, so "synth" is a subcommand as under `graft data`
    return app


def test_synth_cli_from_queries_needs_no_source_and_n_caps_examples(tmp_path, varied_model_dir):
    from typer.testing import CliRunner

    from graftlm.models.catalog import import_model

    import_model(varied_model_dir, "tiny")
    q = tmp_path / "queries.jsonl"
    q.write_text("".join(json.dumps({"query": f"how do i freeze card number {i}"}) + "\n" for i in range(4)))
    runner = CliRunner()
    out = runner.invoke(_synth_cli(), ["synth", "--from-queries", str(q), "-m", "tiny", "--out", str(tmp_path / "v"),
                                       "--n", "5"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["queries"] == 4 and report["generated"] == 5  # 4 queries x 3 variants, capped at 5

    docs = write_docs(tmp_path / "docs")
    out = runner.invoke(_synth_cli(), ["synth", str(docs), "-m", "tiny", "--out", str(tmp_path / "s"), "--n", "1",
                                       "--questions-per-chunk", "3"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["generated"] == 1

    missing = runner.invoke(_synth_cli(), ["synth", "-m", "tiny"])
    assert missing.exit_code == 2 and "--from-queries" in missing.output


def test_n_spreads_over_all_chunks(tmp_path):
    docs = write_docs(tmp_path / "docs")
    report = synthesize(docs, tmp_path / "out", generator=stub, questions_per_chunk=3, evolve_fraction=0,
                        eval_fraction=0, max_examples=2)
    assert report["generated"] == 2
    rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    assert {r["source"]["document_id"] for r in rows} == {"cards.md", "fees.txt"}
