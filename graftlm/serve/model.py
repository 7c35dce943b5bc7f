"""Llama written plainly for serving: fused projections, a paged KV cache, per-row adapters.

Two entry points, named for the step they perform: ``prefill`` (new prompts, right-padded, causal)
and ``decode`` (one token for every running row). Adapter deltas come from ``AdapterRows``, so a
single forward pass mixes base rows, LoRA rows of any rank and (IA)³ rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from graftlm.errors import GraftError

from .paged_attention import kernel_enabled, paged_decode_attention


@dataclass(frozen=True)
class LlamaShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    max_positions: int

    @property
    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of every adapter-targetable linear, by PEFT module name."""
        q, kv, d, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}


def read_shape(config: dict) -> LlamaShape:
    if config.get("model_type") not in ("llama", "mistral", "qwen2") or config.get("attention_bias") \
            or config.get("mlp_bias") or config.get("hidden_act", "silu") != "silu":
        raise GraftError(f"the serving engine supports plain Llama models, not {config.get('model_type')!r} "
                         "with biases or non-SiLU activations")
    heads = config["num_attention_heads"]
    return LlamaShape(layers=config["num_hidden_layers"], hidden=config["hidden_size"],
                      intermediate=config["intermediate_size"], heads=heads,
                      kv_heads=config.get("num_key_value_heads") or heads,
                      head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                      vocab=config["vocab_size"], eps=config.get("rms_norm_eps", 1e-6),
                      max_positions=config.get("max_position_embeddings", 2048))


def rope_tables(model_path: Path, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [max_len, head_dim] in fp32, computed by HF's own rotary class (rope_scaling as in config)."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf = AutoConfig.from_pretrained(model_path)
    rope = LlamaRotaryEmbedding(hf)
    if getattr(rope, "rope_type", "default") in ("dynamic", "longrope"):
        raise GraftError(f"rope type {rope.rope_type!r} changes with sequence length; not supported by the engine")
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), rope.inv_freq.float())
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos() * rope.attention_scaling, emb.sin() * rope.attention_scaling


def _read_tensors(model_path: Path) -> dict[str, torch.Tensor]:
    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise GraftError(f"no safetensors weights in {model_path}")
    tensors = {}
    for f in files:
        with safe_open(f, framework="pt") as st:
            for k in st.keys():
                tensors[k.removeprefix("model.")] = st.get_tensor(k)
    return tensors


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # computed in fp32 like HF LlamaRMSNorm, then cast back
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Llama:
    def __init__(self, model_path: str | Path, dtype: torch.dtype, device: torch.device, max_seq_len: int):
        self.path = Path(model_path)
        self.config = json.loads((self.path / "config.json").read_text())
        self.shape = s = read_shape(self.config)
        self.dtype, self.device = dtype, device
        w = {k: v.to(device=device, dtype=dtype) for k, v in _read_tensors(self.path).items()}
        self.embed = w["embed_tokens.weight"]
        self.lm_head = w.get("lm_head.weight", self.embed)
        self.norm = w["norm.weight"]
        self.layers = []
        for i in range(s.layers):
            p = f"layers.{i}."
            self.layers.append({
                "attn_norm": w[p + "input_layernorm.weight"],
                "mlp_norm": w[p + "post_attention_layernorm.weight"],
                "wqkv": torch.cat([w[p + f"self_attn.{n}_proj.weight"] for n in "qkv"]).contiguous(),
                "wo": w[p + "self_attn.o_proj.weight"],
                "w_gate_up": torch.cat([w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]]).contiguous(),
                "w_down": w[p + "mlp.down_proj.weight"],
            })
        cos, sin = rope_tables(self.path, max_seq_len)
        self.cos, self.sin = cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)
        self.paged_kernel = kernel_enabled(device)
        d = s.module_dims
        self._qkv_split = [d["q_proj"][1], d["k_proj"][1], d["v_proj"][1]]

    def _layers(self, x, positions, adapters, attend):
        s = self.shape
        b, t, _ = x.shape
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        for i, L in enumerate(self.layers):
            h = rms_norm(x, L["attn_norm"], s.eps)
            qkv = F.linear(h, L["wqkv"])
            if adapters is not None:
                qkv = adapters.project(i, "qkv", h, qkv)
            q, k, v = qkv.split(self._qkv_split, dim=-1)
            q = rotate(q.view(b, t, s.heads, s.head_dim).transpose(1, 2), cos, sin)
            k = rotate(k.view(b, t, s.kv_heads, s.head_dim).transpose(1, 2), cos, sin)
            v = v.view(b, t, s.kv_heads, s.head_dim).transpose(1, 2)
            o = attend(i, q, k, v).transpose(1, 2).reshape(b, t, s.heads * s.head_dim)
            x = x + self._linear(i, "o_proj", o, L["wo"], adapters)
            h = rms_norm(x, L["mlp_norm"], s.eps)
            gate_up = F.linear(h, L["w_gate_up"])
            if adapters is not None:
                gate_up = adapters.project(i, "gate_up", h, gate_up)
            gate, up = gate_up.chunk(2, dim=-1)
            x = x + self._linear(i, "down_proj", F.silu(gate) * up, L["w_down"], adapters)
        return x

    @staticmethod
    def _linear(i, module, x, weight, adapters):
        if adapters is None:
            return F.linear(x, weight)
        x = adapters.scale_input(i, module, x)
        return adapters.project(i, module, x, F.linear(x, weight))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(rms_norm(x, self.norm, self.shape.eps), self.lm_head).float()

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, adapters=None, cache=None,
                table: torch.Tensor | None = None, starts: list[int] | None = None) -> torch.Tensor:
        """Run right-padded prompts [B, T]; write their KV into the cache blocks of ``table`` (one row per
        prompt, padding not written); next-token logits [B, V].

        With ``starts`` (a cached prefix per row, > 0 somewhere), ``tokens`` are each prompt's tokens from
        its start on (``lengths`` counts them) and attend to the prefix's keys and values in the cache."""
        if starts is not None and any(starts):
            return self._prefill_after_prefix(tokens, lengths, adapters, cache, table, starts)
        b, t = tokens.shape
        positions = torch.arange(t, device=self.device).expand(b, t)
        if cache is not None:
            real = positions < lengths[:, None]
            slots = cache.slots(table, positions)[real]

        def attend(i, q, k, v):
            if cache is not None:
                cache.k[i].index_copy_(0, slots, k.transpose(1, 2)[real])
                cache.v[i].index_copy_(0, slots, v.transpose(1, 2)[real])
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        x = self._layers(self.embed[tokens], positions, adapters, attend)
        last = x[torch.arange(b, device=self.device), lengths - 1]
        return self._logits(last)

    def _prefill_after_prefix(self, tokens, lengths, adapters, cache, table, starts):
        b, t = tokens.shape
        start = torch.tensor(starts, device=self.device)
        offsets = torch.arange(t, device=self.device).expand(b, t)
        real = offsets < lengths[:, None]
        positions = torch.where(real, start[:, None] + offsets, 0)  # padding: position 0, never written
        write = cache.slots(table, positions)[real]
        total = start + lengths
        span = int(total.max())
        context = torch.arange(span, device=self.device)
        read = cache.slots(table, context.clamp(max=table.shape[1] * cache.block_size - 1).expand(b, span)).flatten()
        # query at position p sees context positions <= p; padded queries see position 0 only
        mask = (context[None, None, :] <= positions[:, :, None])[:, None]
        heads, dim = self.shape.kv_heads, self.shape.head_dim

        def attend(i, q, k, v):
            cache.k[i].index_copy_(0, write, k.transpose(1, 2)[real])
            cache.v[i].index_copy_(0, write, v.transpose(1, 2)[real])
            ck = cache.k[i].index_select(0, read).view(b, span, heads, dim).transpose(1, 2)
            cv = cache.v[i].index_select(0, read).view(b, span, heads, dim).transpose(1, 2)
            return F.scaled_dot_product_attention(q, ck, cv, attn_mask=mask, enable_gqa=True)

        x = self._layers(self.embed[tokens], positions, adapters, attend)
        last = x[torch.arange(b, device=self.device), lengths - 1]
        return self._logits(last)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, adapters, cache,
               table: torch.Tensor) -> torch.Tensor:
        """One token per running row at per-row positions, each row's KV in its blocks of ``table``; logits [B, V]."""
        write = cache.slots(table, positions[:, None])[:, 0]
        read = (self._paged_read if self.paged_kernel else self._gather_read)(cache, table, positions)

        def attend(i, q, k, v):
            kc, vc = cache.k[i], cache.v[i]
            kc.index_copy_(0, write, k[:, :, 0])
            vc.index_copy_(0, write, v[:, :, 0])
            return read(q, kc, vc)

        x = self._layers(self.embed[tokens[:, None]], positions[:, None], adapters, attend)
        return self._logits(x[:, 0])

    @staticmethod
    def _paged_read(cache, table, positions):
        """Attention read in place from each row's blocks by the C++ kernel (CPU)."""
        lengths = positions + 1
        return lambda q, kc, vc: paged_decode_attention(q[:, :, 0], kc, vc, table, lengths,
                                                        cache.block_size).unsqueeze(2)

    def _gather_read(self, cache, table, positions):
        """Attention over each row's context gathered out of its blocks into a dense tensor (a copy per step)."""
        b = positions.shape[0]
        span = int(positions.max()) + 1
        mask = (torch.arange(span, device=self.device) <= positions[:, None])[:, None, None, :]
        slots = cache.slots(table, torch.arange(span, device=self.device).expand(b, span)).flatten()
        heads, dim = self.shape.kv_heads, self.shape.head_dim

        def read(q, kc, vc):
            context_k = kc.index_select(0, slots).view(b, span, heads, dim).transpose(1, 2)
            context_v = vc.index_select(0, slots).view(b, span, heads, dim).transpose(1, 2)
            return F.scaled_dot_product_attention(q, context_k, context_v, attn_mask=mask, enable_gqa=True)
        return read
