"""Device and dtype choice shared by chat, training and serving."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from graftlm.config import get_settings

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def device() -> torch.device:
    wanted = get_settings().device
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(wanted)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: a native bf16 matmul. mkldnn's own check also says yes on AVX-512 CPUs without
    them (Ice Lake), where bf16 is emulated: there SmolLM2-135M engine decode at batch 32 ran 127 ms/step
    in fp32 vs 209 ms in bf16, and training bf16 matmuls ~4x slower, so such CPUs get fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: trust mkldnn
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_dtype(dev: torch.device | None = None) -> torch.dtype:
    """The fastest dtype the device supports; GRAFT_DTYPE=float32 forces fp32."""
    wanted = get_settings().dtype.lower()
    if wanted != "auto":
        if wanted not in DTYPES:
            raise ValueError(f"GRAFT_DTYPE={wanted!r} is not one of auto, {', '.join(DTYPES)}")
        return DTYPES[wanted]
    dev = dev or device()
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32
