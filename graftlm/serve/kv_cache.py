"""A static KV cache: one row per running sequence, rows kept dense (0..B-1) so decode reads a view."""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, layers: int, max_batch: int, kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (max_batch, kv_heads, max_seq_len, head_dim)
        # zeros, not empty: masked positions are multiplied by 0 in attention and must not hold NaN
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_batch, self.max_seq_len = max_batch, max_seq_len

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def move_row(self, src: int, dst: int, length: int) -> None:
        """Copy the first ``length`` positions of row src into row dst (compacting after a retire)."""
        for k, v in zip(self.k, self.v):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]
