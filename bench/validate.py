"""Benchmark dataset validation: lines/s and peak RSS against named baselines, measured in one run.

    python bench/validate.py                 # 1,000,000 chat lines (a few minutes on 2 cores)
    python bench/validate.py --lines 200000  # quicker

Each measurement runs in its own subprocess; peak RSS is that child's ru_maxrss from os.wait4.
Baselines:
  naive   json.loads + a pydantic model per line enforcing the same rules (roles, non-empty
          content, weight 0/1, role order) and a set of line hashes for duplicates.
  pandas  pandas.read_json(lines=True) of the whole file (the memory baseline; it checks nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "You are a support assistant for a bank. Answer briefly and politely."
USER = ["what is my account balance", "how do i transfer money to my savings account",
        "book a flight to paris next monday", "why was my card declined at the store",
        "can you tell me the interest rate on my loan", "i lost my card what should i do"]
ASSISTANT = ["Your balance is shown under Accounts in the app; tap the account to see details.",
             "Open Transfers, pick the two accounts, enter the amount and confirm with your PIN.",
             "I can help with that: which airport would you like to leave from, and at what time?",
             "Cards are declined for low funds, a wrong PIN or a fraud hold; check the app for alerts.",
             "Your loan's rate is in the loan summary; current fixed rates start at 6.1 percent."]


def generate(path: Path, lines: int) -> None:
    """Chat JSONL, unique lines except every 100th, which repeats the one before it."""
    import orjson
    with open(path, "wb") as f:
        previous = b""
        for i in range(lines):
            if i % 100 == 99:
                f.write(previous)
                continue
            messages = [{"role": "system", "content": SYSTEM}]
            for turn in range(1 + (i % 3 == 0)):
                messages.append({"role": "user", "content": f"{USER[(i + turn) % 6]} (ticket {i})"})
                messages.append({"role": "assistant", "content": ASSISTANT[(i * 7 + turn) % 5]})
            previous = orjson.dumps({"messages": messages}) + b"\n"
            f.write(previous)


def child_ours(path: str) -> dict:
    from graftlm.data.validate import validate_file
    start, cpu = time.perf_counter(), time.process_time()
    report = validate_file(path)
    assert report["valid"], report["errors"][:3]
    return {"lines": report["stats"]["lines"], "duplicates": report["stats"]["duplicates"],
            "seconds_inside": time.perf_counter() - start, "cpu_inside": time.process_time() - cpu}


def child_ours_no_scan(path: str) -> dict:
    """The same validation without the personal-data scan: the scan's cost is ours ÷ this."""
    from graftlm.data.validate import validate_file
    start, cpu = time.perf_counter(), time.process_time()
    report = validate_file(path, scan_personal_data=False)
    assert report["valid"], report["errors"][:3]
    return {"lines": report["stats"]["lines"], "seconds_inside": time.perf_counter() - start,
            "cpu_inside": time.process_time() - cpu}


def child_tokenized(path: str) -> dict:
    from graftlm.data.validate import validate_file
    from graftlm.testing.models import build_tiny_tokenizer
    tokenizer = build_tiny_tokenizer()
    start, cpu = time.perf_counter(), time.process_time()
    report = validate_file(path, tokenizer=tokenizer, context_length=512)
    return {"lines": report["stats"]["lines"], "seconds_inside": time.perf_counter() - start,
            "cpu_inside": time.process_time() - cpu,
            "total_tokens": report["stats"]["tokens"]["total"]}


def child_naive(path: str) -> dict:
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

    class Message(BaseModel):
        model_config = ConfigDict(extra="forbid")
        role: Literal["system", "user", "assistant"]
        content: str = Field(min_length=1)
        weight: Literal[0, 1] | None = None
        name: str | None = None

    class Chat(BaseModel):
        messages: list[Message] = Field(min_length=2)

        @model_validator(mode="after")
        def order(self):
            roles = [m.role for m in self.messages]
            body = roles[1:] if roles[0] == "system" else roles
            if any(r != ("user", "assistant")[i % 2] for i, r in enumerate(body)) or body[-1] != "assistant":
                raise ValueError("roles must alternate user/assistant, ending with assistant")
            return self

    start, cpu = time.perf_counter(), time.process_time()
    errors, seen, duplicates, lines = [], set(), 0, 0
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            lines += 1
            try:
                Chat.model_validate(json.loads(line))
            except (ValueError, ValidationError) as e:
                errors.append((n, str(e)))
                continue
            h = hash(line.strip())
            duplicates += h in seen
            seen.add(h)
    assert not errors, errors[:3]
    return {"lines": lines, "duplicates": duplicates, "seconds_inside": time.perf_counter() - start,
            "cpu_inside": time.process_time() - cpu}


def child_pandas(path: str) -> dict:
    import pandas as pd
    start, cpu = time.perf_counter(), time.process_time()
    frame = pd.read_json(path, lines=True)
    return {"lines": len(frame), "seconds_inside": time.perf_counter() - start, "cpu_inside": time.process_time() - cpu}


CHILDREN = {"ours": child_ours, "ours_no_scan": child_ours_no_scan, "naive": child_naive, "pandas": child_pandas, "tokenized": child_tokenized}


def measure(kind: str, path: Path) -> dict:
    """Run one measurement in a fresh interpreter; lines/s count the work, not start-up and imports.

    Both wall-clock and CPU-time rates are kept: on a shared machine the CPU-time ratio is the
    stable one.
    """
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(path)], stdout=subprocess.PIPE)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} failed with exit code {proc.returncode}")
    result = json.loads(out)
    result.update(seconds=seconds, peak_rss_mb=usage.ru_maxrss / 1024,
                  lines_per_s=result["lines"] / result["seconds_inside"],
                  lines_per_cpu_s=result["lines"] / result["cpu_inside"])
    return result


def head(src: Path, dst: Path, lines: int) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for i, line in enumerate(fin):
            if i >= lines:
                break
            fout.write(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--tokenized-lines", type=int, default=5_000, help="lines for the tokenized rate")
    parser.add_argument("--skip-pandas", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](args.child[1])))
        return

    with tempfile.TemporaryDirectory() as tmp:
        big, small, tok = Path(tmp) / "big.jsonl", Path(tmp) / "small.jsonl", Path(tmp) / "tok.jsonl"
        t = time.perf_counter()
        generate(big, args.lines)
        head(big, small, max(1, args.lines // 10))
        head(big, tok, args.tokenized_lines)
        print(f"generated {args.lines:,} chat lines ({big.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f}s")

        ours, naive = measure("ours", big), measure("naive", big)
        no_scan = measure("ours_no_scan", big)
        ours_small = measure("ours", small)
        pandas = None if args.skip_pandas else measure("pandas", big)
        tokenized = measure("tokenized", tok)

    print(f"\n{'measurement':<48}{'lines/s':>10}{'lines/cpu-s':>13}{'peak RSS MB':>13}")
    rows = [(f"graftlm validate_file, {args.lines:,} lines", ours),
            (f"graftlm validate_file, {args.lines // 10:,} lines", ours_small),
            (f"graftlm validate_file without the personal-data scan", no_scan),
            ("naive: json.loads + pydantic per line", naive)]
    if pandas:
        rows.append(("pandas.read_json(lines=True)", pandas))
    rows.append((f"graftlm validate_file + tiny tokenizer, {args.tokenized_lines:,}", tokenized))
    for name, r in rows:
        print(f"{name:<48}{r['lines_per_s']:>10,.0f}{r['lines_per_cpu_s']:>13,.0f}{r['peak_rss_mb']:>13,.0f}")
    assert ours["duplicates"] == naive["duplicates"], (ours["duplicates"], naive["duplicates"])
    print(f"\nspeed vs naive (json.loads + pydantic): {ours['lines_per_s'] / naive['lines_per_s']:.2f}x wall, "
          f"{ours['lines_per_cpu_s'] / naive['lines_per_cpu_s']:.2f}x CPU time  (goal >= 3x)")
    print(f"personal-data scan: with ÷ without {ours['lines_per_cpu_s'] / no_scan['lines_per_cpu_s']:.2f}x CPU time "
          f"(clean lines pass byte gates; a line with a digit run, '@' or a long token is scanned string by string)")
    if pandas:
        print(f"speed vs pandas.read_json: {ours['lines_per_s'] / pandas['lines_per_s']:.2f}x wall, "
              f"{ours['lines_per_cpu_s'] / pandas['lines_per_cpu_s']:.2f}x CPU time")
    if pandas:
        print(f"peak RSS vs pandas.read_json: {ours['peak_rss_mb']:.0f} MB vs {pandas['peak_rss_mb']:.0f} MB "
              f"({pandas['peak_rss_mb'] / ours['peak_rss_mb']:.1f}x less)")
    print(f"peak RSS at {args.lines:,} vs {args.lines // 10:,} lines: {ours['peak_rss_mb']:.0f} MB vs "
          f"{ours_small['peak_rss_mb']:.0f} MB (goal < 300 MB; duplicate hashes cost 8 bytes a line)")
    print(f"tokenized rate (tiny 384-token BPE, ChatML, encode_example per line): "
          f"{tokenized['lines_per_s']:,.0f} lines/s = {tokenized['lines_per_cpu_s'] / naive['lines_per_cpu_s']:.3f}x naive "
          f"(CPU time); encode_example renders the template once per assistant turn")
    print(f"duplicates found: {ours['duplicates']:,} (naive agrees)")


if __name__ == "__main__":
    main()
