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


FLAGS_OF_INTEREST = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """The flags that decide which matmul paths exist (AVX2, AVX-512, AVX-512-BF16, AMX), as /proc/cpuinfo says."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return []
    return [f for f in FLAGS_OF_INTEREST if f in flags]


def cpu_kind() -> str:
    """amx | avx512bf16 | avx512 | avx2 | other: which results file of bench/results/ a figure belongs to."""
    flags = set(cpu_flags())
    for kind, flag in (("amx", "amx_bf16"), ("avx512bf16", "avx512_bf16"), ("avx512", "avx512f"), ("avx2", "avx2")):
        if flag in flags:
            return kind
    return "other"
