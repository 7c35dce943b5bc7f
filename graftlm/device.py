"""The one device and dtype rule, used by training, serving and `graft chat`. An invalid GRAFT_DEVICE or
GRAFT_DTYPE is an error everywhere (a GraftError naming the variable), never silently replaced."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from graftlm.config import get_settings
from graftlm.errors import GraftError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def device() -> torch.device:
    """GRAFT_DEVICE (auto | cpu | cuda | cuda:N); auto is CUDA when there is one."""
    wanted = get_settings().device.strip().lower()
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(wanted)
    except RuntimeError as e:
        raise GraftError(f"GRAFT_DEVICE={wanted!r} is not a device (auto, cpu, cuda, cuda:N)",
                         param="GRAFT_DEVICE") from e
    if dev.type not in ("cpu", "cuda"):
        raise GraftError(f"GRAFT_DEVICE={wanted!r}: graftlm runs on cpu or cuda", param="GRAFT_DEVICE")
    return dev


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
    """The dtype weights are served in: GRAFT_DTYPE, or with auto the fastest one the device supports."""
    wanted = get_settings().dtype.strip().lower()
    if wanted != "auto":
        if wanted not in DTYPES:
            raise GraftError(f"GRAFT_DTYPE={wanted!r} is not one of auto, {', '.join(DTYPES)}", param="GRAFT_DTYPE")
        return DTYPES[wanted]
    dev = dev or device()
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def training_dtype(dev: torch.device | None = None) -> torch.dtype:
    """The autocast dtype for training: the same rule, except that float16 trains in float32 (fp16 autocast
    needs loss scaling, which the training loop does not do; bf16 does not)."""
    dtype = default_dtype(dev)
    return torch.float32 if dtype == torch.float16 else dtype


def rank_devices() -> tuple[int, str]:
    """(how many ranks this machine can give their own device, what they are): GPUs with CUDA, else CPU cores
    (one rank a core at least)."""
    import os
    if device().type == "cuda":
        return torch.cuda.device_count(), "GPUs"
    return os.cpu_count() or 1, "CPU cores"
