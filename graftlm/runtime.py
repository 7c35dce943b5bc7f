"""Device and dtype choice shared by chat, training and serving."""

from __future__ import annotations

from functools import lru_cache

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
    """AVX-512 BF16 (or AMX) makes bf16 matmuls fast on this CPU; without it bf16 is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:
        return False


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
