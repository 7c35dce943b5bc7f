"""Adapters of many kinds in one batch: PEFT LoRA (any rank) and (IA)³ rows share one forward pass.

Each adapter occupies a *slot* of the ``AdapterPool`` (slot 0 is the base model: no LoRA, (IA)³ vectors
one). On CPU the LoRA deltas of a step are one call of a C++ kernel per fused linear group
(``KernelLoraRows``, Punica's BGMV: each token reads its own adapter's A and B straight from the pool,
fp32 accumulation, added in place into the group's output): no gathers, no per-adapter or per-module
torch ops. Elsewhere (CUDA, or where the kernel cannot be built) the step groups its LoRA rows by adapter
(``LoraRows``): every target linear gathers those rows into [adapters, rows, in], runs two batched matmuls
against each adapter's own A and B (read once per step, whatever the number of rows using it) and adds
the result back into its rows. Measured on SmolLM2-135M (16 LoRA r8 all-linear + 16 T-Few rows, batch 32,
bf16 on an AVX-512-BF16 CPU) the gathered bmm path cost 1.7x the base decode step: bf16 batched matmuls
of one row per adapter fall off oneDNN's fast paths. Base and (IA)³ rows do no LoRA work; (IA)³ rows
multiply by their per-row vectors.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from graftlm.errors import GraftError

from .model import LlamaShape

_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.(lora_A|lora_B|ia3_l)(?:\.\w+)?\.?(?:weight)?$")
_IA3_INPUT_SCALED = ("down_proj", "o_proj")  # unfused linears, so their input can be scaled per row


@dataclass
class AdapterWeights:
    """One adapter read from a PEFT directory, on CPU, stacked over layers as the pool stores it."""
    kind: str  # "lora" | "ia3"
    rank: int = 0
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)  # A^T [L,in,r], B^T*s [L,r,out]
    ia3_out: dict[str, torch.Tensor] = field(default_factory=dict)  # [L, out], ones in untouched layers
    ia3_in: dict[str, torch.Tensor] = field(default_factory=dict)  # [L, in]


def read_adapter_config(path: str | Path, shape: LlamaShape) -> dict:
    path = Path(path)
    try:
        cfg = json.loads((path / "adapter_config.json").read_text())
    except FileNotFoundError:
        raise GraftError(f"{path} is not a PEFT adapter directory (no adapter_config.json)") from None
    kind = cfg.get("peft_type")
    problems = []
    if kind not in ("LORA", "IA3"):
        problems.append(f"peft_type {kind!r} (supported: LORA, IA3)")
    if cfg.get("modules_to_save"):
        problems.append("modules_to_save")
    if kind == "LORA":
        for key in ("use_dora", "rank_pattern", "alpha_pattern", "fan_in_fan_out"):
            if cfg.get(key):
                problems.append(key)
        if cfg.get("bias", "none") != "none":
            problems.append(f"bias={cfg['bias']!r}")
    if kind == "IA3":
        problems += [f"(IA)³ input scaling of {m}" for m in _feedforward(cfg) if m not in _IA3_INPUT_SCALED]
    if problems:
        raise GraftError(f"adapter {path}: unsupported by the serving engine: {', '.join(problems)}")
    return cfg


def _feedforward(cfg: dict) -> list[str]:
    ff = cfg.get("feedforward_modules") or []
    return [ff] if isinstance(ff, str) else ff


def read_adapter(path: str | Path, shape: LlamaShape) -> AdapterWeights:
    """Read a PEFT LoRA or IA3 adapter into per-module tensors stacked over layers, checking shapes.

    NumPy only, no torch ops: this runs on the loader thread, and a torch op there would start a second
    OpenMP team, after which every parallel op of the engine thread pays futex wake-ups (measured: decode
    with 16 LoRA rows 300 ms/step instead of 180 on 2 cores).
    """
    path = Path(path)
    cfg = read_adapter_config(path, shape)
    dims, L = shape.module_dims, shape.layers
    tensors = [(_parse(k, path), k, t) for k, t in _read_safetensors(path / "adapter_model.safetensors").items()]
    if cfg["peft_type"] == "IA3":
        ff = _feedforward(cfg)
        tables: dict[str, dict[str, np.ndarray]] = {"in": {}, "out": {}}
        for (layer, module, _), key, t in tensors:
            side = "in" if module in ff else "out"
            want = dims[module][0 if side == "in" else 1]
            _check(t.size == want, path, key, f"{want} values", t.size)
            tables[side].setdefault(module, np.ones((L, want), np.float32))[layer] = t.reshape(-1)
        return AdapterWeights(kind="ia3", ia3_out={m: torch.from_numpy(v) for m, v in tables["out"].items()},
                              ia3_in={m: torch.from_numpy(v) for m, v in tables["in"].items()})
    r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    stacks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen: dict[tuple[str, int], set[str]] = {}
    for (layer, module, part), key, t in tensors:
        fin, fout = dims[module]
        want = (r, fin) if part == "lora_A" else (fout, r)
        _check(t.shape == want, path, f"{module} layer {layer}", f"{part} {want}", t.shape)
        a, b = stacks.setdefault(module, (np.zeros((L, fin, r), np.float32), np.zeros((L, r, fout), np.float32)))
        if part == "lora_A":
            a[layer] = t.T
        else:
            b[layer] = t.T * scaling
        seen.setdefault((module, layer), set()).add(part)
    for (module, layer), parts in seen.items():
        _check(len(parts) == 2, path, f"{module} layer {layer}", "lora_A and lora_B", sorted(parts))
    return AdapterWeights(kind="lora", rank=r,
                          lora={m: (torch.from_numpy(a), torch.from_numpy(b)) for m, (a, b) in stacks.items()})


_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float32 NumPy arrays (bf16 widened by a shift)."""
    data = file.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise GraftError(f"adapter {file}: tensor {key!r} has dtype {info['dtype']}; expected a float type")
        start, end = info["data_offsets"]
        t = np.frombuffer(data, dtype, (end - start) // np.dtype(dtype).itemsize, 8 + n + start)
        if info["dtype"] == "BF16":
            t = (t.astype(np.uint32) << 16).view(np.float32)
        out[key] = t.astype(np.float32, copy=False).reshape(info["shape"])
    return out


def _parse(key: str, path: Path) -> tuple[int, str, str]:
    m = _KEY.search(key)
    if not m:
        raise GraftError(f"adapter {path}: tensor {key!r} targets a module the serving engine does not adapt")
    return int(m.group(1)), m.group(2), m.group(3)


def _check(ok: bool, path: Path, what: str, want, got) -> None:
    if not ok:
        raise GraftError(f"adapter {path}: {what}: expected {want}, got {got} (was it trained on this base model?)")


class AdapterPool:
    """Device-resident adapter weights for ``slots`` adapters, allocated per module on first use."""

    def __init__(self, shape: LlamaShape, slots: int, max_rank: int, dtype: torch.dtype, device: torch.device,
                 lora_kernel: bool | None = None):
        self.shape, self.slots, self.max_rank = shape, slots, max_rank
        self.dtype, self.device = dtype, device
        self._lora_kernel = lora_kernel_available(device) if lora_kernel is None else lora_kernel
        self.lora_a: dict[str, torch.Tensor] = {}  # [L, S+1, in, r_cap]
        self.lora_b: dict[str, torch.Tensor] = {}  # [L, S+1, r_cap, out], scaling folded in
        self.ia3_out: dict[str, torch.Tensor] = {}  # [L, S+1, out]
        self.ia3_in: dict[str, torch.Tensor] = {}  # [L, S+1, in]
        self.rank = [0] * (slots + 1)
        self.lora_modules: list[dict[str, int]] = [{} for _ in range(slots + 1)]  # module -> rank written
        self.ia3_modules: list[set[str]] = [set() for _ in range(slots + 1)]  # "out:k_proj", "in:down_proj"
        self.slot_version = [0] * (slots + 1)  # bumped when a slot changes, invalidating gathered weights
        self._rows_cache = None
        self._lora_cache = None

    def _lora_tensors(self, module: str, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        L, S = self.shape.layers, self.slots + 1
        fin, fout = self.shape.module_dims[module]
        a, b = self.lora_a.get(module), self.lora_b.get(module)
        cap = 0 if a is None else a.shape[-1]
        if rank > cap:  # grow the padded rank (rare: only when a larger-rank adapter arrives)
            new_cap = max(rank, min(self.max_rank, 2 * cap))
            na = torch.zeros(L, S, fin, new_cap, dtype=self.dtype, device=self.device)
            nb = torch.zeros(L, S, new_cap, fout, dtype=self.dtype, device=self.device)
            if a is not None:
                na[..., :cap], nb[:, :, :cap] = a, b
            self.lora_a[module], self.lora_b[module] = a, b = na, nb
        return a, b

    def _ia3_tensor(self, side: str, module: str) -> torch.Tensor:
        table = getattr(self, f"ia3_{side}")
        if module not in table:
            dim = self.shape.module_dims[module][0 if side == "in" else 1]
            table[module] = torch.ones(self.shape.layers, self.slots + 1, dim, dtype=self.dtype, device=self.device)
        return table[module]

    def install(self, slot: int, w: AdapterWeights) -> None:
        """Copy an adapter into a slot: one copy per module; only what the previous occupant left is reset."""
        if w.rank > self.max_rank:
            raise GraftError(f"LoRA rank {w.rank} exceeds the engine's max_lora_rank {self.max_rank}")
        old_lora, old_ia3 = self.lora_modules[slot], self.ia3_modules[slot]
        r = w.rank
        for module, (at, bt) in w.lora.items():
            a, b = self._lora_tensors(module, r)
            a[:, slot, :, :r].copy_(at, non_blocking=True)
            b[:, slot, :r].copy_(bt, non_blocking=True)
            old = old_lora.pop(module, 0)
            if old > r:
                a[:, slot, :, r:old], b[:, slot, r:old] = 0, 0
        self._reset(slot, old_lora, {k for k in old_ia3 if k.split(":")[1] not in
                                     (w.ia3_out if k.startswith("out") else w.ia3_in)})
        for side in ("out", "in"):
            for module, vecs in getattr(w, f"ia3_{side}").items():
                self._ia3_tensor(side, module)[:, slot].copy_(vecs, non_blocking=True)
        self.rank[slot] = r
        self.lora_modules[slot] = {m: r for m in w.lora}
        self.ia3_modules[slot] = {f"out:{m}" for m in w.ia3_out} | {f"in:{m}" for m in w.ia3_in}
        self.slot_version[slot] += 1

    def clear(self, slot: int) -> None:
        self._reset(slot, self.lora_modules[slot], self.ia3_modules[slot])
        self.rank[slot] = 0
        self.lora_modules[slot], self.ia3_modules[slot] = {}, set()
        self.slot_version[slot] += 1

    def _reset(self, slot: int, lora: dict[str, int], ia3: set[str]) -> None:
        for module, r in lora.items():
            self.lora_a[module][:, slot, :, :r], self.lora_b[module][:, slot, :r] = 0, 0
        for key in ia3:
            side, module = key.split(":")
            getattr(self, f"ia3_{side}")[module][:, slot] = 1

    @property
    def lora_kernel(self) -> bool:
        """Whether LoRA deltas run in the CPU kernel (else grouped bmm); settable, for benches and tests."""
        return self._lora_kernel

    @lora_kernel.setter
    def lora_kernel(self, on: bool) -> None:
        self._lora_kernel, self._rows_cache = bool(on), None

    def rows(self, slots: list[int]) -> AdapterRows | None:
        """The adapter work of one step's rows (None when every row is a base row).

        Reused while the batch's slots and their contents are unchanged (most decode steps); the gathered
        LoRA weights are reused while the set of LoRA adapters is unchanged (rows joining or leaving).
        """
        if not any(slots):
            return None
        key = (tuple(slots), tuple(self.slot_version[s] for s in slots))
        if self._rows_cache is not None and self._rows_cache[0] == key:
            return self._rows_cache[1]
        lora_slots = sorted({s for s in slots if self.rank[s]})
        lora = None
        if lora_slots and self._lora_kernel:
            lora = KernelLoraRows(self, slots, lora_slots)
        elif lora_slots:
            members = [[i for i, s in enumerate(slots) if s == g] for g in lora_slots]
            width = max(map(len, members))
            row_index = torch.tensor([m + [-1] * (width - len(m)) for m in members], device=self.device)
            lora = LoraRows(self._lora_weights(lora_slots), row_index)
        used = set().union(*(self.ia3_modules[s] for s in slots))
        out = {}
        if used:
            idx = torch.tensor(slots, device=self.device)
            for group, modules in GROUPS.items():
                if any(f"out:{m}" in used for m in modules):
                    out[group] = torch.cat([self._ia3_tensor("out", m)[:, idx, None] for m in modules], dim=-1)
            inp = {m: self.ia3_in[m][:, idx, None] for m in self.ia3_in if f"in:{m}" in used}
        else:
            inp = {}
        rows = AdapterRows(lora, out, inp)
        self._rows_cache = (key, rows)
        return rows

    def _lora_weights(self, lora_slots: list[int]) -> dict:
        """Per fused group: A of the targeted modules side by side [L, G, in, sum r] and each module's B
        [L, G, r, out] with its columns in the group's output, for the adapters in ``lora_slots``."""
        key = tuple((s, self.slot_version[s]) for s in lora_slots)
        if self._lora_cache is not None and self._lora_cache[0] == key:
            return self._lora_cache[1]
        idx = torch.tensor(lora_slots, device=self.device)
        rank = max(self.rank[s] for s in lora_slots)
        targeted = set().union(*(self.lora_modules[s] for s in lora_slots))
        weights = {}
        for group, modules in GROUPS.items():
            a_parts, b_parts, u0, c0 = [], [], 0, 0
            for m in modules:
                width = self.shape.module_dims[m][1]
                if m in targeted:
                    r = min(rank, self.lora_a[m].shape[-1])
                    a_parts.append(self.lora_a[m][:, idx, :, :r])
                    b_parts.append((u0, u0 + r, c0, c0 + width, self.lora_b[m][:, idx, :r].contiguous()))
                    u0 += r
                c0 += width
            if a_parts:
                weights[group] = (torch.cat(a_parts, dim=-1), b_parts)
        self._lora_cache = (key, weights)
        return weights


# linears fused in the model, by shared input: their adapters are applied to the fused output
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
          "down_proj": ("down_proj",)}


def lora_kernel_available(device: torch.device) -> bool:
    """The CPU LoRA kernel is built with the paged attention kernel (one extension; GRAFT_PAGED_KERNEL=false
    turns both off)."""
    from .paged_attention import kernel_enabled

    return kernel_enabled(device)


class KernelLoraRows:
    """The LoRA rows of one step for the CPU kernel: each row's slot (0: no LoRA) and, per fused group, the
    modules some present adapter targets, their column offsets and every slot's rank on them."""

    def __init__(self, pool: AdapterPool, slots: list[int], lora_slots: list[int]):
        from .paged_attention import load_kernels

        self.kernel, self.pool = load_kernels().lora_add, pool
        self.row_slot = torch.tensor([s if pool.rank[s] else 0 for s in slots], device=pool.device)
        self.groups = {}
        for group, modules in GROUPS.items():
            mods, cols, ranks, c0 = [], [], [], 0
            for m in modules:
                if m in pool.lora_a and any(pool.lora_modules[s].get(m) for s in lora_slots):
                    mods.append(m)
                    cols.append(c0)
                    ranks.append([pool.lora_modules[s].get(m, 0) for s in range(pool.slots + 1)])
                c0 += pool.shape.module_dims[m][1]
            if mods:
                self.groups[group] = (mods, cols, torch.tensor(ranks))
        self._layer_weights: dict = {}
        self._tokens = None

    def token_slot(self, t: int) -> torch.Tensor:
        if t == 1:
            return self.row_slot
        if self._tokens is None or self._tokens[0] != t:
            self._tokens = (t, self.row_slot.repeat_interleave(t))
        return self._tokens[1]

    def add(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = self.groups.get(group)
        if g is None:
            return y
        mods, cols, ranks = g
        w = self._layer_weights.get((layer, group))
        if w is None:
            w = self._layer_weights[layer, group] = ([self.pool.lora_a[m][layer] for m in mods],
                                                     [self.pool.lora_b[m][layer] for m in mods])
        rows, t, fin = x.shape
        self.kernel(x.reshape(rows * t, fin), y.view(rows * t, y.shape[-1]), w[0], w[1], cols,
                    self.token_slot(t), ranks)
        return y


class LoraRows:
    """The LoRA rows of one step grouped by adapter: row_index [G, M] (-1 pads groups to the largest)."""

    def __init__(self, weights: dict, row_index: torch.Tensor):
        self.weights, self.row_index = weights, row_index
        self.padded = bool((row_index < 0).any())
        self._tokens = None

    def token_index(self, rows: int, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the grouped tokens into x (pads: the zero row appended at rows*t) and into y (pads: 0)."""
        if self._tokens is None or self._tokens[0] != (rows, t):
            tok = (self.row_index[..., None] * t + torch.arange(t, device=self.row_index.device)).flatten()
            pad = (self.row_index < 0).repeat_interleave(t, dim=-1).flatten()
            self._tokens = ((rows, t), tok.masked_fill(pad, rows * t), tok.masked_fill(pad, 0))
        return self._tokens[1], self._tokens[2]

    def add(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w = self.weights.get(group)
        if w is None:
            return y
        a, b_parts = w
        rows, t, fin = x.shape
        x_index, y_index = self.token_index(rows, t)
        xf = x.reshape(rows * t, fin)
        if self.padded:
            xf = torch.cat([xf, xf.new_zeros(1, fin)])
        g = a.shape[1]
        u = torch.bmm(xf.index_select(0, x_index).view(g, -1, fin), a[layer])  # [G, M*t, sum r]
        parts, col = [], 0
        for u0, u1, c0, c1, b in b_parts:
            if c0 > col:  # a module of the group no adapter in this step targets
                parts.append(u.new_zeros(g, u.shape[1], c0 - col))
            parts.append(torch.bmm(u[..., u0:u1], b[layer]))
            col = c1
        if col < y.shape[-1]:
            parts.append(u.new_zeros(g, u.shape[1], y.shape[-1] - col))
        delta = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        # one full-width index_add per group: index_add_ into a column slice of y is ~5x slower
        y.view(rows * t, y.shape[-1]).index_add_(0, y_index, delta.view(-1, y.shape[-1]))
        return y


@dataclass
class AdapterRows:
    """Per-row adapter work for one step: LoRA rows grouped by adapter, (IA)³ vectors [L,B,1,*] by group."""
    lora: LoraRows | None
    ia3_out: dict[str, torch.Tensor]  # group -> [L,B,1,out]
    ia3_in: dict[str, torch.Tensor]  # module -> [L,B,1,in]

    def project(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y = base(x) for rows [B,T,*]; add the rows' LoRA deltas and apply their (IA)³ output scaling."""
        if self.lora is not None:
            y = self.lora.add(layer, group, x, y)
        s = self.ia3_out.get(group)
        return y if s is None else y * s[layer]

    def scale_input(self, layer: int, module: str, x: torch.Tensor) -> torch.Tensor:
        s = self.ia3_in.get(module)
        return x if s is None else x * s[layer]
