"""Adapters of many kinds in one batch: PEFT LoRA (any rank) and (IA)³ rows share one forward pass.

Each adapter occupies a *slot* of the ``AdapterPool`` (slot 0 is the base model: LoRA weights zero,
(IA)³ vectors one). A step gathers the slots of its rows once (``AdapterRows``) and every target linear
adds ``(x @ A[slot]) @ B[slot] * scaling[slot]`` with two batched matmuls, or multiplies by the row's
(IA)³ vector. Ranks differ per adapter: the pool pads to the largest rank seen, a step uses the largest
rank among its own rows.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from graftlm.errors import GraftError

from .model import LlamaShape

_KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+_proj)\.(lora_A|lora_B|ia3_l)(?:\.\w+)?\.?(?:weight)?$")
_IA3_INPUT_SCALED = ("down_proj", "o_proj")  # unfused linears, so their input can be scaled per row


@dataclass
class AdapterWeights:
    """One adapter read from a PEFT directory, on CPU; layers it does not touch are absent."""
    kind: str  # "lora" | "ia3"
    rank: int = 0
    lora: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor, float]]] = field(default_factory=dict)  # A^T, B^T
    ia3_out: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    ia3_in: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)


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
        ff = cfg.get("feedforward_modules") or []
        ff = [ff] if isinstance(ff, str) else ff
        problems += [f"(IA)³ input scaling of {m}" for m in ff if m not in _IA3_INPUT_SCALED]
    if problems:
        raise GraftError(f"adapter {path}: unsupported by the serving engine: {', '.join(problems)}")
    return cfg


def read_adapter(path: str | Path, shape: LlamaShape) -> AdapterWeights:
    """Read a PEFT LoRA or IA3 adapter into per-(module, layer) CPU tensors, checking shapes."""
    path = Path(path)
    cfg = read_adapter_config(path, shape)
    tensors = load_file(path / "adapter_model.safetensors")
    dims = shape.module_dims
    if cfg["peft_type"] == "IA3":
        ff = cfg.get("feedforward_modules") or []
        ff = [ff] if isinstance(ff, str) else ff
        w = AdapterWeights(kind="ia3")
        for key, t in tensors.items():
            layer, module, _ = _parse(key, path)
            vec = t.float().reshape(-1)
            side = "in" if module in ff else "out"
            want = dims[module][0 if side == "in" else 1]
            _check(vec.numel() == want, path, key, f"{want} values", vec.numel())
            getattr(w, f"ia3_{side}").setdefault(module, {})[layer] = vec
        return w
    r, alpha = cfg["r"], cfg.get("lora_alpha", cfg["r"])
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    w = AdapterWeights(kind="lora", rank=r)
    parts: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        layer, module, part = _parse(key, path)
        parts.setdefault((module, layer), {})[part] = t.float()
    for (module, layer), p in parts.items():
        a, b = p.get("lora_A"), p.get("lora_B")
        _check(a is not None and b is not None, path, f"{module} layer {layer}", "lora_A and lora_B", list(p))
        fin, fout = dims[module]
        _check(a.shape == (r, fin) and b.shape == (fout, r), path, f"{module} layer {layer}",
               f"A {(r, fin)} B {(fout, r)}", f"A {tuple(a.shape)} B {tuple(b.shape)}")
        w.lora.setdefault(module, {})[layer] = (a.t().contiguous(), b.t().contiguous(), scaling)
    return w


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

    def __init__(self, shape: LlamaShape, slots: int, max_rank: int, dtype: torch.dtype, device: torch.device):
        self.shape, self.slots, self.max_rank = shape, slots, max_rank
        self.dtype, self.device = dtype, device
        self.lora_a: dict[str, torch.Tensor] = {}  # [L, S+1, in, r_cap]
        self.lora_b: dict[str, torch.Tensor] = {}  # [L, S+1, r_cap, out], scaling folded in
        self.ia3_out: dict[str, torch.Tensor] = {}  # [L, S+1, out]
        self.ia3_in: dict[str, torch.Tensor] = {}  # [L, S+1, in]
        self.rank = [0] * (slots + 1)
        self.ia3_modules: list[set[str]] = [set() for _ in range(slots + 1)]
        self.version = 0  # bumped on every change, invalidating gathered rows
        self._rows_cache = None

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

    def _ia3_tensor(self, table: dict, module: str, dim: int) -> torch.Tensor:
        if module not in table:
            table[module] = torch.ones(self.shape.layers, self.slots + 1, dim, dtype=self.dtype, device=self.device)
        return table[module]

    def install(self, slot: int, w: AdapterWeights) -> None:
        self.version += 1
        if w.rank > self.max_rank:
            raise GraftError(f"LoRA rank {w.rank} exceeds the engine's max_lora_rank {self.max_rank}")
        self.clear(slot)
        for module, layers in w.lora.items():
            a, b = self._lora_tensors(module, w.rank)
            for layer, (at, bt, scaling) in layers.items():
                a[layer, slot, :, :w.rank] = at.to(self.dtype)
                b[layer, slot, :w.rank] = (bt * scaling).to(self.dtype)
        self.rank[slot] = w.rank
        for side, tables in (("out", w.ia3_out), ("in", w.ia3_in)):
            for module, layers in tables.items():
                dims = self.shape.module_dims[module]
                t = self._ia3_tensor(getattr(self, f"ia3_{side}"), module, dims[0 if side == "in" else 1])
                for layer, vec in layers.items():
                    t[layer, slot] = vec.to(self.dtype)
                self.ia3_modules[slot].add(f"{side}:{module}")

    def clear(self, slot: int) -> None:
        self.version += 1
        for a in self.lora_a.values():
            a[:, slot] = 0
        for b in self.lora_b.values():
            b[:, slot] = 0
        for t in list(self.ia3_out.values()) + list(self.ia3_in.values()):
            t[:, slot] = 1
        self.rank[slot] = 0
        self.ia3_modules[slot] = set()

    def rows(self, slots: list[int]) -> AdapterRows | None:
        """Gather the weights of one step's rows (None when every row is a base row).

        Linears that share an input are fused as in the model (q|k|v, gate|up): one x @ A for the group
        and a block-diagonal B, so a layer costs 4 pairs of batched matmuls whatever the targets. The
        result is reused while the batch's slots and the pool are unchanged (most decode steps).
        """
        if not any(slots):
            return None
        key = (tuple(slots), self.version)
        if self._rows_cache is not None and self._rows_cache[0] == key:
            return self._rows_cache[1]
        idx = torch.tensor(slots, device=self.device)
        rank = max(self.rank[s] for s in slots)
        used = set().union(*(self.ia3_modules[s] for s in slots))
        lora, out = {}, {}
        for group, modules in GROUPS.items():
            targeted = [m for m in modules if m in self.lora_a] if rank else []
            if targeted:
                ranks = {m: min(rank, self.lora_a[m].shape[-1]) for m in targeted}
                a = torch.cat([self.lora_a[m][..., :ranks[m]][:, idx] for m in targeted], dim=-1)
                outs = [self.shape.module_dims[m][1] for m in modules]
                b = a.new_zeros(a.shape[0], len(slots), a.shape[-1], sum(outs))
                row = col = 0
                for m, width in zip(modules, outs):
                    if m in targeted:
                        b[:, :, row:row + ranks[m], col:col + width] = self.lora_b[m][:, :, :ranks[m]][:, idx]
                        row += ranks[m]
                    col += width
                lora[group] = (a, b)
            if any(f"out:{m}" in used for m in modules):
                out[group] = torch.cat([self.ia3_out[m][:, idx, None] if m in self.ia3_out else
                                        self.ia3_out[next(iter(self.ia3_out))].new_ones(
                                            self.shape.layers, len(slots), 1, self.shape.module_dims[m][1])
                                        for m in modules], dim=-1)
        inp = {m: self.ia3_in[m][:, idx, None] for m in self.ia3_in if f"in:{m}" in used}
        rows = AdapterRows(lora, out, inp)
        self._rows_cache = (key, rows)
        return rows


# linears fused in the model, by shared input: their adapters are applied to the fused output
GROUPS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
          "down_proj": ("down_proj",)}


@dataclass
class AdapterRows:
    """Per-row adapter weights for one step, indexed [layer][row], by fused group."""
    lora: dict[str, tuple[torch.Tensor, torch.Tensor]]  # group -> A [L,B,in,n*r], B*scaling [L,B,n*r,out]
    ia3_out: dict[str, torch.Tensor]  # group -> [L,B,1,out]
    ia3_in: dict[str, torch.Tensor]  # module -> [L,B,1,in]

    def project(self, layer: int, group: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """y = base(x) for rows [B,T,*]; add the rows' LoRA deltas and apply their (IA)³ output scaling."""
        ab = self.lora.get(group)
        if ab is not None:
            y = torch.baddbmm(y, torch.bmm(x, ab[0][layer]), ab[1][layer])
        s = self.ia3_out.get(group)
        return y if s is None else y * s[layer]

    def scale_input(self, layer: int, module: str, x: torch.Tensor) -> torch.Tensor:
        s = self.ia3_in.get(module)
        return x if s is None else x * s[layer]
