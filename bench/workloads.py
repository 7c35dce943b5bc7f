"""Workloads shared by the benchmarks (plain data, no graftlm import: bench/vs_baseline.py runs them against
other trees)."""

from __future__ import annotations

import platform
from pathlib import Path


def chat_examples(n: int) -> list[dict]:
    questions = ["what is my account balance please", "book a flight to paris and a hotel in london",
                 "how are you today", "transfer money between accounts", "check the weather for tomorrow"]
    answers = ["your balance is 100 dollars and 10 cents", "i booked the flight to paris and the hotel",
               "i am fine thank you, how can i help you today", "the transfer between your accounts is done",
               "tomorrow the weather is fine and the quick brown fox jumps"]
    return [{"messages": [{"role": "system", "content": "you are a helpful bank assistant", "weight": 0},
                          {"role": "user", "content": questions[i % 5] + f" {i}", "weight": 0},
                          {"role": "assistant", "content": answers[(i * 3) % 5], "weight": 1}]} for i in range(n)]


def cpu_name() -> str:
    """The CPU's model name, printed and stored beside every figure (CPUs here differ: AVX-512/AMX or not)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"
