"""Quality with the product's defaults: fine-tuned accuracy against baselines measured in the same run.

    nice -n 10 python bench/quality.py --set banking8 [--rungs ...] [--out bench/results/quality.json]

Sets (CLINC150, Larson et al. 2019, CC BY 3.0, from ../shared/data/clinc150):
- ``banking8``: the demo slice in examples/clinc150 (8 banking intents, 25 training and 10 test queries each).
  The auto learning-rate bases were chosen on it.
- ``travel10``: held out — 10 travel intents, 10 training queries each (10-shot, as in the issue), 2 validation
  and 10 test queries each, picked with a fixed seed from CLINC150's train, val and test splits; nothing was
  tuned on it. The fine-tuned rungs' data has no instruction (the model learns the labels from the examples;
  5x fewer tokens to train and serve); the prompt-only rungs get the instruction listing the labels.

- ``hotel-json``: a generation task, short JSON extraction, built here (``build_hotel_json``: a seeded
  generator, no outside data; the same license as this repository): hotel requests in 12 phrasings, the
  answer ``{"city": ..., "nights": ..., "guests": ..., "breakfast": ...}`` (~25 tokens). 100 training and
  20 validation requests over 30 cities; 100 test requests over 20 other cities, a quarter of them in 3
  phrasings never trained on. Scored with ``json_fields`` (share of the 4 fields right; invalid JSON 0)
  and ``exact_match``.

Rungs, every one scored (label accuracy; ``json_fields`` for hotel-json) with a 95% bootstrap CI on the same
test queries, through the product's serving engine (greedy, 8 new tokens; 48 for hotel-json):
- ``zero-shot``, ``few-shot`` (8 most similar training examples as demonstration turns): the base model;
- ``tfew``, ``lora``, ``vanilla`` (last 4 layers): fine-tuning jobs through ``fm.create`` with no
  hyperparameter but the method (vanilla: ``num_of_last_layers``), i.e. ``defaults: "auto"``;
- ``tfew-oci``, ``lora-oci``, ``vanilla-oci``: the same with ``defaults: "oci"`` (what auto replaces; its
  training time is auto's cost baseline);
- ``tfew-ls``, ``lora-ls``: defaults plus ``label_set_losses`` (T-Few's unlikelihood and length-normalised
  losses; label sets only);
- ``peft``: a plain PEFT LoRA loop outside the product with hand-tuned settings (r 16, alpha 32, all linear
  layers, lr 1e-3 one-cycle, 4 epochs, batch 8, fp32), its adapter registered and served like the others.

Ratios printed: each rung's accuracy ÷ the ``peft`` baseline's and ÷ few-shot's, and each auto job's
training seconds ÷ its OCI-default job's, all from this run. Results merge into ``--out`` by set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

from workloads import cpu_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(os.environ.get("CLINC150_DIR", ROOT.parent / "shared" / "data" / "clinc150"))  # ../shared in a checkout
TRAVEL = ["book_flight", "book_hotel", "car_rental", "travel_suggestion", "travel_alert", "exchange_rate",
          "lost_luggage", "flight_status", "international_visa", "timezone"]
ALL_RUNGS = "zero-shot,few-shot,tfew,lora,vanilla,tfew-oci,lora-oci,vanilla-oci,tfew-ls,peft"
JOB_RUNGS = {  # rung -> (training_method, hyperparameters): everything else is the product's default
    "tfew": ("tfew", {}), "lora": ("lora", {}), "vanilla": ("vanilla", {"num_of_last_layers": 4}),
    "tfew-oci": ("tfew", {"defaults": "oci"}), "lora-oci": ("lora", {"defaults": "oci"}),
    "vanilla-oci": ("vanilla", {"defaults": "oci", "num_of_last_layers": 4}),
    "tfew-ls": ("tfew", {"label_set_losses": True}), "lora-ls": ("lora", {"label_set_losses": True}),
}
SCORING = {"banking8": (["label_accuracy"], 8), "travel10": (["label_accuracy"], 8),
           "clinc150": (["label_accuracy"], 12),
           "hotel-json": (["json_fields", "exact_match"], 48)}  # scorers (the first is the score), max tokens
BASE = "smollm2-135m-instruct"


def chat_row(system: str, text: str, label: str) -> dict:
    return {"messages": [{"role": "system", "content": system}, {"role": "user", "content": text},
                         {"role": "assistant", "content": label}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def build_set(name: str, work: Path) -> tuple[Path, Path | None, Path, Path]:
    """(train, validation or None, test with the instruction for prompt-only rungs, test for fine-tuned rungs)."""
    if name == "banking8":
        test = ROOT / "examples/clinc150/test.jsonl"
        return ROOT / "examples/clinc150/train.jsonl", None, test, test
    if name == "hotel-json":
        return build_hotel_json(work)
    if name not in ("travel10", "clinc150"):
        raise SystemExit(f"unknown set {name}")
    data = json.loads((SOURCE / "data_small.json").read_text())
    if name == "travel10":
        intents, per_test, per_valid = TRAVEL, 10, 2
        system = ("You classify travel requests. Answer with exactly one intent label from this list and nothing "
                  "else: " + ", ".join(TRAVEL) + ".")
    else:  # every intent (or a seeded subset of CLINC150_INTENTS of them), 10-shot
        everything = sorted({lab for _, lab in data["train"]})
        count = int(os.environ.get("CLINC150_INTENTS", len(everything)))
        intents = sorted(random.Random(150).sample(everything, count)) if count < len(everything) else everything
        per_test, per_valid = (5 if count >= 100 else 10), 1  # test queries per intent (all 150: 750)
        system = ("You classify requests to a virtual assistant. Answer with exactly one intent label from this "
                  "list and nothing else: " + ", ".join(intents) + ".")
    rng = random.Random(2019)

    def pick(split: str, per: int, instruction: bool) -> list[dict]:
        chosen = {i: rng.sample([t for t, lab in data[split] if lab == i], per) for i in intents}
        rows = [chat_row(system, chosen[i][k], i) for k in range(per) for i in intents]
        return rows if instruction else [{"messages": r["messages"][1:]} for r in rows]

    # fine-tuned models learn the task from the examples: no instruction in their data (5x fewer tokens)
    train, valid = pick("train", 10, False), pick("val", per_valid, False)
    test = pick("test", per_test, True)
    tag = name if name == "travel10" else f"clinc150-{len(intents)}"
    return (write_jsonl(work / f"{tag}-train.jsonl", train), write_jsonl(work / f"{tag}-valid.jsonl", valid),
            write_jsonl(work / f"{tag}-test.jsonl", test),
            write_jsonl(work / f"{tag}-test-plain.jsonl", [{"messages": r["messages"][1:]} for r in test]))


HOTEL_PHRASINGS = [
    "Book a hotel in {city} for {nights} nights for {guests} people{bf}.",
    "I need a room in {city}, {guests} guests, {nights} nights{bf}.",
    "Can you find us a place to stay in {city}? We are {guests} and staying {nights} nights{bf}.",
    "{nights} nights in {city} for {guests}, please{bf}.",
    "Looking for accommodation: {city}, {nights} nights, party of {guests}{bf}.",
    "We'd like to stay {nights} nights in {city}, {guests} adults{bf}.",
    "Please reserve {nights} nights at a hotel in {city} for {guests} guests{bf}.",
    "hotel {city} {nights} nights {guests} ppl{bf}",
    "My family of {guests} is visiting {city} for {nights} nights; find a hotel{bf}.",
    # only in the test set
    "Any rooms in {city}? {guests} of us, {nights} nights{bf}.",
    "Reserve accommodation in {city} for {guests} travellers over {nights} nights{bf}.",
    "For {nights} nights we ({guests} people) need a hotel in {city}{bf}.",
]
TRAIN_CITIES = ["Lisbon", "Madrid", "Paris", "Berlin", "Rome", "Vienna", "Prague", "Dublin", "Oslo", "Athens",
                "Warsaw", "Budapest", "Zurich", "Brussels", "Amsterdam", "Copenhagen", "Helsinki", "Stockholm",
                "Tokyo", "Seoul", "Bangkok", "Sydney", "Toronto", "Chicago", "Boston", "Denver", "Lima",
                "Bogota", "Cairo", "Nairobi"]
TEST_CITIES = ["Porto", "Seville", "Lyon", "Munich", "Milan", "Salzburg", "Krakow", "Edinburgh", "Bergen",
               "Naples", "Riga", "Tallinn", "Geneva", "Antwerp", "Kyoto", "Osaka", "Hanoi", "Melbourne",
               "Montreal", "Santiago"]
BREAKFAST = [(", breakfast included", True), (", with breakfast", True), (", no breakfast", False), ("", False)]
HOTEL_INSTRUCTION = ('Extract the hotel request as JSON with the keys "city" (string), "nights" (integer), '
                     '"guests" (integer) and "breakfast" (true or false), and answer with the JSON only.')


def build_hotel_json(work: Path) -> tuple[Path, Path, Path, Path]:
    """The hotel-json set (see the module docstring): seeded, so every run builds the same files."""
    rng = random.Random(2024)

    def rows(n: int, cities: list[str], phrasings: list[str]) -> list[dict]:
        out = []
        for _ in range(n):
            city, nights, guests = rng.choice(cities), rng.randint(1, 14), rng.randint(1, 6)
            bf_text, bf = rng.choice(BREAKFAST)
            text = rng.choice(phrasings).format(city=city, nights=nights, guests=guests, bf=bf_text)
            answer = json.dumps({"city": city, "nights": nights, "guests": guests, "breakfast": bf})
            out.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]})
        return out

    seen, unseen = HOTEL_PHRASINGS[:9], HOTEL_PHRASINGS[9:]
    train, valid = rows(100, TRAIN_CITIES, seen), rows(20, TRAIN_CITIES, seen)
    test = rows(75, TEST_CITIES, seen) + rows(25, TEST_CITIES, unseen)
    instructed = [{"messages": [{"role": "system", "content": HOTEL_INSTRUCTION}, *r["messages"]]} for r in test]
    return (write_jsonl(work / "hotel-json-train.jsonl", train), write_jsonl(work / "hotel-json-valid.jsonl", valid),
            write_jsonl(work / "hotel-json-test.jsonl", instructed), write_jsonl(work / "hotel-json-test-plain.jsonl", test))


def plain_peft_lora(base_path: str, train_path: Path, out: Path, epochs=4, batch=8, lr=1e-3, seed=0) -> float:
    """The hand-written baseline: HF model + PEFT LoRA, loss on the answer tokens, AdamW + one-cycle. Seconds."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.05,
                                             target_modules="all-linear"))
    rows = [json.loads(line) for line in train_path.read_text().splitlines() if line.strip()]
    examples = []
    for r in rows:
        prompt = tok.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]
        answer = tok(r["messages"][-1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        examples.append((prompt + answer, [-100] * len(prompt) + answer))
    steps = epochs * ((len(examples) + batch - 1) // batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    rng = random.Random(seed)
    model.train()
    for _ in range(epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for k in range(0, len(order), batch):
            chunk = [examples[i] for i in order[k:k + batch]]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x, _ in chunk])
            labels = torch.tensor([y + [-100] * (width - len(y)) for _, y in chunk])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x, _ in chunk])
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
    model.save_pretrained(str(out))
    return time.time() - started


def checkpoint_adapter(base_path: str, job_id: str, step: int, out: Path) -> Path:
    """A LoRA job's checkpoint as a PEFT adapter directory (plus the job's resolved config.json)."""
    from transformers import AutoModelForCausalLM

    from graftlm.config import get_settings
    from graftlm.train import checkpoint as ckpt
    from graftlm.train.config import parse_config
    from graftlm.train.methods import lora

    job_dir = get_settings().jobs_dir / job_id
    config = json.loads((job_dir / "run_info.json").read_text())["config"]
    model = lora.prepare(AutoModelForCausalLM.from_pretrained(base_path), parse_config(config))
    ckpt.load_trainable_state(model, ckpt.load_checkpoint(job_dir / "checkpoints" / f"{ckpt.PREFIX}{step:06d}")["weights"])
    model.save_pretrained(str(out))
    picked = {k: config[k] for k in ("total_training_epochs", "training_batch_size", "learning_rate", "lora_r",
                                     "lora_alpha", "lora_dropout", "warmup_ratio")}
    (out / "bench_config.json").write_text(json.dumps(picked))
    return out


def register_adapter(model_id: str, base: dict, path: Path) -> str:
    from graftlm.store.db import session
    from graftlm.store.models import Model
    with session() as s:
        s.merge(Model(id=model_id, kind="custom", family=base["family"], parent=base["id"], path=str(path),
                      parameter_count=base["parameter_count"], context_length=base["context_length"],
                      license=base["license"], source="bench:plain-peft", adapter_type="lora", lineage={}))
    return model_id


def training_seconds(run) -> float:
    from graftlm import fm
    events = fm.get_events(run)
    starts = [e["created_at"] for e in events if e.get("message", "").startswith("training started")]
    ends = [e["created_at"] for e in events if e.get("message", "").startswith("training finished")]
    return float(max(ends) - min(starts)) if starts and ends else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", default="banking8", choices=list(SCORING))
    ap.add_argument("--rungs", default=ALL_RUNGS)
    ap.add_argument("--few-shot-k", type=int, default=8)
    ap.add_argument("--reuse", action="append", default=[], metavar="RUNG=JOB_ID",
                    help="score a job already created (by an interrupted run) instead of creating one")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="RUNG=JOB_ID:STEP",
                    help="score a LoRA job's checkpoint (an interrupted job's best so far) as RUNG")
    ap.add_argument("--job-rung", action="append", default=[], metavar='RUNG=METHOD:{"hyperparameter": value}',
                    help="one more fine-tuning rung: the method with these hyperparameters over the defaults")
    ap.add_argument("--peft-first", action="store_true",
                    help="train the PEFT baseline before waiting for the product's jobs (they overlap on the CPU)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/quality.json"))
    ap.add_argument("--work", default=str(ROOT / "bench/out/quality"), help="data and adapters (one per concurrent run)")
    args = ap.parse_args()
    from graftlm import fm
    from graftlm.evals import prompts as P
    from graftlm.evals.run import run_eval
    from graftlm.models.catalog import get_model, pull

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train_path, valid_path, test_path, plain_test_path = build_set(args.set, work)
    base = pull(BASE)
    rungs = [r.strip() for r in args.rungs.split(",") if r.strip()]
    train, tests, plain = (P.load_examples(p) for p in (train_path, test_path, plain_test_path))
    index = P.ExampleIndex(train) if "few-shot" in rungs else None  # embeds the training queries
    results, started = {}, time.time()

    scorers, max_tokens = SCORING[args.set]

    def evaluate(name: str, model: str, strategy: str = "zero-shot", **extra) -> None:
        run = run_eval(model, tests if model == BASE else plain, strategy=strategy, k=args.few_shot_k, index=index,
                       scorers=scorers, max_tokens=max_tokens, save=False)
        results[name] = {"accuracy": run["score"], "ci": [run["ci_low"], run["ci_high"]], "n": run["n"],
                         "scorer": scorers[0], "prompt_tokens": run["tokens"]["prompt"],
                         "scores": {k: {"mean": v["mean"], "ci": [v["ci_low"], v["ci_high"]]}
                                    for k, v in run["aggregates"].items()}, **extra}
        print(f"[quality] {args.set} {name}: {run['score']:.3f} [{run['ci_low']:.3f}, {run['ci_high']:.3f}]",
              flush=True)

    if "zero-shot" in rungs:
        evaluate("zero-shot", BASE)
    if "few-shot" in rungs:
        evaluate("few-shot", BASE, "few-shot", k=args.few_shot_k)
    def peft_rung() -> None:
        out = work / f"peft-{args.set}"
        secs = plain_peft_lora(base["path"], train_path, out)
        evaluate("peft", register_adapter(f"bench:peft-{args.set}", base, out), training_s=secs,
                 hyperparameters={"n_epochs": 4, "batch_size": 8, "learning_rate": 1e-3, "lora_r": 16,
                                  "lora_alpha": 32, "schedule": "one-cycle"})

    for item in args.checkpoint:
        rung, _, ref = item.partition("=")
        job_id, _, step = ref.partition(":")
        out = checkpoint_adapter(base["path"], job_id, int(step), work / f"{rung}-{args.set}")
        evaluate(rung, register_adapter(f"bench:{rung}-{args.set}", base, out), job=job_id, step=int(step),
                 hyperparameters=json.loads((out / "bench_config.json").read_text()))
    for item in args.job_rung:
        rung, _, spec = item.partition("=")
        method, _, hp = spec.partition(":")
        JOB_RUNGS[rung] = (method, json.loads(hp or "{}"))
        rungs.append(rung)
    reuse = dict(item.split("=", 1) for item in args.reuse)
    jobs = {rung: fm.get(job_id) for rung, job_id in reuse.items()}
    if "peft" in rungs and args.peft_first:
        peft_rung()
    for rung in (r for r in rungs if r not in reuse):  # the product's jobs train one at a time, and are scored once all are done (no CPU overlap)
        if rung in JOB_RUNGS:
            method, hp = JOB_RUNGS[rung]
            jobs[rung] = fm.create(model=BASE, train_data_path=str(train_path), register_to=f"q-{rung}",
                                   eval_data_path=str(valid_path) if valid_path else None,
                                   training_method=method, seed=0, **hp)
    finished = {rung: fm.wait(job, timeout=3600) for rung, job in jobs.items()}
    for rung, done in finished.items():
        if done.status != "succeeded":
            print(f"[quality] {rung} {done.status}: {done.error}")
            continue
        shown = fm.get(done).hyperparameters
        evaluate(rung, done.fine_tuned_model, training_s=training_seconds(done),
                 hyperparameters={k: shown.get(k) for k in ("n_epochs", "batch_size", "learning_rate")},
                 valid=get_model(done.fine_tuned_model)["lineage"]["metrics"])
    if "peft" in rungs and not args.peft_first:
        peft_rung()
    fm.shutdown()

    path = Path(args.out)
    saved = json.loads(path.read_text()) if path.exists() else {}
    key = args.set if args.set != "clinc150" else f"clinc150-{len(train) // 10}"  # intents: 10 examples each
    results = {**saved.get(key, {}).get("rungs", {}), **results}  # greedy scores: deterministic across runs
    ratios = {}
    for name, r in results.items():
        for ref in ("peft", "few-shot"):
            if ref in results and name != ref and results[ref]["accuracy"] > 0:
                ratios[f"{name} / {ref}"] = round(r["accuracy"] / results[ref]["accuracy"], 3)
        oci = results.get(f"{name}-oci")
        if oci and "training_s" in r:
            ratios[f"{name} training time / {name}-oci"] = round(r["training_s"] / oci["training_s"], 2)
    for k, v in ratios.items():
        print(f"[quality] {key} {k}: {v:.3f}")
    saved[key] = {"rungs": results, "ratios": ratios,
                       "train": train_path.name, "n_train": len(train), "n_test": len(tests), "base_model": BASE, "cpu": cpu_name(),
                       "torch_threads": __import__("torch").get_num_threads(), "wall_s": round(time.time() - started),
                       "date": time.strftime("%Y-%m-%d"), "python": platform.python_version()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1))


if __name__ == "__main__":
    main()
