"""Decode attention read straight out of the paged KV cache, on CPU.

Without it, a decode step gathers every row's context out of its blocks (``index_select``) into a dense
tensor for ``scaled_dot_product_attention``: each step copies the whole context, which measured 1.6-2x
slower than a contiguous cache at 512-1024 tokens (SmolLM2-135M, 32 rows). This small C++ kernel walks the
block table instead: one task per (row, KV head) reads that head's keys and values once for all the query
heads that share it (GQA), in fp32 accumulation, and touches only the row's own positions (no mask).

It is compiled on first use with ``torch.utils.cpp_extension.load_inline`` (gcc + ninja; cached under
torch's extensions directory; ``make install`` builds it ahead of time). Where it
cannot be built, or with GRAFT_PAGED_KERNEL=false, the engine falls back to the gather path. CUDA devices use
the gather path too.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import time
from pathlib import Path

import torch

log = logging.getLogger("graftlm.serve")

_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstring>
#include <vector>

// e^x for x <= 0 (scores minus their max), branch-free so the loop vectorizes: 2^(x log2 e) split into an
// integer power (exponent bits) and 2^f, f in [0, 1), by a degree-6 polynomial (relative error ~2e-7).
static inline float exp_nonpositive(float x) {
  float t = std::max(x, -87.0f) * 1.4426950408889634f;
  float fi = std::floor(t), f = t - fi;
  float p = 1.5353362e-4f;
  p = p * f + 1.3398874e-3f; p = p * f + 9.6184375e-3f; p = p * f + 5.5503324e-2f;
  p = p * f + 2.4022648e-1f; p = p * f + 6.9314720e-1f; p = p * f + 1.0f;
  int32_t bits = (static_cast<int32_t>(fi) + 127) << 23;
  float scale; std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// One (row, KV head): its G query heads against the row's first n positions. D fixed at compile time
// (0 = read from the tensors) so the 64/128-wide loops unroll and vectorize.
template <typename scalar_t, int FIXED_D>
static void attend_row_head(const scalar_t* qp, const scalar_t* kp, const scalar_t* vp, scalar_t* op,
                            const int64_t* slots, int64_t n, int64_t G, int64_t Drt, int64_t kv_stride,
                            float scale, std::vector<float>& qf, std::vector<float>& acc,
                            std::vector<float>& scores) {
  const int64_t D = FIXED_D ? FIXED_D : Drt;
  qf.resize(G * D); acc.assign(G * D, 0.f); scores.resize(G * n);
  for (int64_t i = 0; i < G * D; ++i) qf[i] = static_cast<float>(qp[i]) * scale;
  for (int64_t t = 0; t < n; ++t) {
    const scalar_t* kr = kp + slots[t] * kv_stride;
    for (int64_t g = 0; g < G; ++g) {
      const float* qg = qf.data() + g * D;
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += qg[d] * static_cast<float>(kr[d]);
      scores[g * n + t] = s;
    }
  }
  std::vector<float> total(G);
  for (int64_t g = 0; g < G; ++g) {
    float* sg = scores.data() + g * n;
    float mx = sg[0];
    for (int64_t t = 1; t < n; ++t) mx = std::max(mx, sg[t]);
    float sum = 0.f;
    for (int64_t t = 0; t < n; ++t) { sg[t] = exp_nonpositive(sg[t] - mx); sum += sg[t]; }
    total[g] = sum;
  }
  for (int64_t t = 0; t < n; ++t) {
    const scalar_t* vr = vp + slots[t] * kv_stride;
    for (int64_t g = 0; g < G; ++g) {
      const float p = scores[g * n + t];
      float* ag = acc.data() + g * D;
      for (int64_t d = 0; d < D; ++d) ag[d] += p * static_cast<float>(vr[d]);
    }
  }
  for (int64_t g = 0; g < G; ++g)
    for (int64_t d = 0; d < D; ++d) op[g * D + d] = static_cast<scalar_t>(acc[g * D + d] / total[g]);
}

// q [B, H, D]; k, v [slots, KVH, D]; table [B, blocks] int64; lengths [B] int64 (positions to attend to).
torch::Tensor paged_decode_attention(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor table,
                                     torch::Tensor lengths, int64_t block_size, double scale) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "q [B,H,D], k and v [slots,KVH,D]");
  TORCH_CHECK(k.is_contiguous() && v.is_contiguous(), "the KV cache must be contiguous");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && k.scalar_type() == v.scalar_type(), "one dtype");
  q = q.contiguous();
  auto tab = table.to(torch::kLong).contiguous();
  auto len = lengths.to(torch::kLong).contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), KVH = k.size(1), NB = tab.size(1);
  TORCH_CHECK(H % KVH == 0 && k.size(2) == D, "heads must be a multiple of KV heads");
  const int64_t G = H / KVH;
  const int64_t* tp = tab.data_ptr<int64_t>();
  const int64_t* lp = len.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(lp[b] >= 1 && lp[b] <= NB * block_size, "row ", b, " context outside its block table");
  // every row's slot per position, once for all its KV heads
  std::vector<int64_t> offsets(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) offsets[b + 1] = offsets[b] + lp[b];
  std::vector<int64_t> slots(offsets[B]);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < lp[b]; ++t)
      slots[offsets[b] + t] = tp[b * NB + t / block_size] * block_size + t % block_size;
  auto out = torch::empty_like(q);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "paged_decode_attention", [&] {
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, B * KVH, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qf, acc, scores;
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / KVH, kh = task % KVH, head = (b * H + kh * G) * D;
        const auto run = D == 64 ? attend_row_head<scalar_t, 64>
                       : D == 128 ? attend_row_head<scalar_t, 128> : attend_row_head<scalar_t, 0>;
        run(qp + head, kp + kh * D, vp + kh * D, op + head, slots.data() + offsets[b], lp[b], G, D, KVH * D,
            static_cast<float>(scale), qf, acc, scores);
      }
    });
  });
  return out;
}

// Punica's BGMV on CPU: every token of x [N, in] adds its own adapter's LoRA delta (x A) B to its columns of
// y [N, out_total], for each module m of a fused group (A_m [slots, in, r_cap], B_m [slots, r_cap, out_m] of
// one layer, scaling folded into B; the module's columns start at cols[m]). token_slot [N]: the token's
// adapter slot; ranks [M, slots]: that slot's rank on module m (0: nothing to add, e.g. base and (IA)3 rows).
// One task per token reads its adapter's A and B once per module, accumulates in fp32 and rounds y once, so
// a step costs one call per fused group whatever the number of adapters (no gathers, no per-adapter ops).
template <typename scalar_t>
static void lora_token(const scalar_t* x, scalar_t* y, int64_t fin, const std::vector<const scalar_t*>& a,
                       const std::vector<const scalar_t*>& b, const std::vector<int64_t>& cap,
                       const std::vector<int64_t>& fout, const std::vector<int64_t>& cols, const int64_t* rk,
                       int64_t slots, int64_t slot, std::vector<float>& xf, std::vector<float>& u,
                       std::vector<float>& acc) {
  xf.resize(fin);
  for (int64_t i = 0; i < fin; ++i) xf[i] = static_cast<float>(x[i]);
  for (size_t m = 0; m < a.size(); ++m) {
    const int64_t r = rk[m * slots + slot], rc = cap[m], out = fout[m];
    if (r <= 0) continue;
    u.assign(r, 0.f);
    const scalar_t* am = a[m] + slot * fin * rc;
    for (int64_t i = 0; i < fin; ++i) {
      const float xi = xf[i];
      const scalar_t* ai = am + i * rc;
      for (int64_t k = 0; k < r; ++k) u[k] += xi * static_cast<float>(ai[k]);
    }
    acc.assign(out, 0.f);
    const scalar_t* bm = b[m] + slot * rc * out;
    for (int64_t k = 0; k < r; ++k) {
      const float uk = u[k];
      const scalar_t* bk = bm + k * out;
      for (int64_t c = 0; c < out; ++c) acc[c] += uk * static_cast<float>(bk[c]);
    }
    scalar_t* ym = y + cols[m];
    for (int64_t c = 0; c < out; ++c) ym[c] = static_cast<scalar_t>(static_cast<float>(ym[c]) + acc[c]);
  }
}

void lora_add(torch::Tensor x, torch::Tensor y, std::vector<torch::Tensor> a, std::vector<torch::Tensor> b,
              std::vector<int64_t> cols, torch::Tensor token_slot, torch::Tensor ranks) {
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(0) == y.size(0), "x [N, in], y [N, out]");
  TORCH_CHECK(x.is_contiguous() && y.is_contiguous(), "x and y must be contiguous");
  TORCH_CHECK(a.size() == b.size() && a.size() == cols.size(), "one A, B and column offset per module");
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "x and y of one dtype");
  const int64_t N = x.size(0), fin = x.size(1), M = a.size();
  auto ts = token_slot.to(torch::kLong).contiguous();
  auto rk = ranks.to(torch::kLong).contiguous();
  TORCH_CHECK(ts.numel() == N && rk.dim() == 2 && rk.size(0) == M, "token_slot [N], ranks [modules, slots]");
  const int64_t slots = rk.size(1);
  std::vector<int64_t> cap(M), fout(M);
  for (int64_t m = 0; m < M; ++m) {
    TORCH_CHECK(a[m].dim() == 3 && b[m].dim() == 3 && a[m].is_contiguous() && b[m].is_contiguous(),
                "A [slots, in, r] and B [slots, r, out], contiguous");
    TORCH_CHECK(a[m].scalar_type() == x.scalar_type() && b[m].scalar_type() == x.scalar_type(), "one dtype");
    TORCH_CHECK(a[m].size(0) >= slots && b[m].size(0) >= slots && a[m].size(1) == fin &&
                a[m].size(2) == b[m].size(1), "A, B shapes");
    cap[m] = a[m].size(2);
    fout[m] = b[m].size(2);
    TORCH_CHECK(cols[m] >= 0 && cols[m] + fout[m] <= y.size(1), "module columns outside y");
  }
  const int64_t* tp = ts.data_ptr<int64_t>();
  const int64_t* rp = rk.data_ptr<int64_t>();
  for (int64_t n = 0; n < N; ++n) TORCH_CHECK(tp[n] >= 0 && tp[n] < slots, "token slot out of range");
  for (int64_t i = 0; i < rk.numel(); ++i)
    TORCH_CHECK(rp[i] <= cap[i / slots], "a rank above its module's capacity");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "lora_add", [&] {
    std::vector<const scalar_t*> ap(M), bp(M);
    for (int64_t m = 0; m < M; ++m) { ap[m] = a[m].data_ptr<scalar_t>(); bp[m] = b[m].data_ptr<scalar_t>(); }
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    const int64_t ystride = y.size(1);
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> xf, u, acc;
      for (int64_t n = begin; n < end; ++n)
        if (tp[n] > 0)
          lora_token<scalar_t>(xp + n * fin, yp + n * ystride, fin, ap, bp, cap, fout, cols, rp, slots, tp[n],
                               xf, u, acc);
    });
  });
}
"""


STALE_LOCK_S = 600  # a build lock older than this was left by a killed build (torch would wait on it forever)


def _module_name() -> str:
    """Versioned by source and by CPU features: the build uses -march=native, and a cache directory shared
    by different CPUs must not hand one machine another's instructions."""
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    digest = hashlib.sha256((_SOURCE + platform.machine() + flags).encode()).hexdigest()[:12]
    return f"graftlm_paged_attention_{digest}"


def _clear_stale_lock(build: Path) -> None:
    lock = build / "lock"
    with contextlib.suppress(OSError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            log.warning("removing a stale kernel build lock %s (a build was interrupted)", lock)
            lock.unlink()


def _find_ninja() -> None:
    """torch runs `ninja` from PATH; a venv's pip-installed ninja is not on PATH unless the venv is activated."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.lru_cache(maxsize=1)
def load_kernels():
    """The compiled extension (``paged_decode_attention``, ``lora_add``), or None where it cannot be built."""
    try:
        from torch.utils.cpp_extension import _get_build_directory, load_inline

        _find_ninja()
        name = _module_name()
        build = Path(_get_build_directory(name, verbose=False))
        if not any(build.glob("*.so")):
            log.info("building the paged attention kernel in %s (once, about 40 s on 2 cores)", build)
        _clear_stale_lock(build)
        module = load_inline(name=name, cpp_sources=[_SOURCE], functions=["paged_decode_attention", "lora_add"],
                             # reassociation lets gcc vectorize the dot products; not -ffast-math, whose
                             # crtfastmath would flush denormals for the whole process
                             extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fassociative-math",
                                           "-fno-signed-zeros", "-fno-trapping-math", "-fopenmp"],
                             # at::parallel_for is OpenMP in the header; libgomp.so.1 resolves to the
                             # copy torch already loaded, so both share one thread pool
                             extra_ldflags=["-fopenmp"],
                             verbose=False)
    except Exception as e:  # noqa: BLE001 - no compiler, no ninja, headers missing: fall back, say why
        log.warning("paged attention kernel not built (%s: %s); decode gathers the KV context instead",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
    return module


def load_kernel():
    """The paged attention kernel's function, or None where it cannot be built."""
    module = load_kernels()
    return None if module is None else module.paged_decode_attention


def kernel_enabled(device: torch.device) -> bool:
    """Whether decode on ``device`` reads the paged cache with the kernel (CPU, GRAFT_PAGED_KERNEL, built)."""
    from graftlm.config import get_settings

    return device.type == "cpu" and get_settings().paged_kernel and load_kernel() is not None


def paged_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                           lengths: torch.Tensor, block_size: int) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v for one new token per row: q [B, H, D] against each row's first ``lengths[b]``
    positions in its blocks of the cache k, v [slots, KV heads, D]; returns [B, H, D]."""
    kernel = load_kernel()
    if kernel is None:
        raise RuntimeError("the paged attention kernel is not available")
    return kernel(q, k, v, table, lengths, block_size, q.shape[-1] ** -0.5)
