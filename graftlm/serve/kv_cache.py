"""A paged KV cache: one fixed budget of token slots in blocks; each running sequence holds the blocks for
its prompt + max_tokens from admission to retirement, so admitted work can never run out of KV memory.

A layer's keys (and values) are one tensor [slots, kv_heads, head_dim]; slot = block * block_size + offset.
A batch addresses it through a block table [rows, blocks]: ``slots(table, positions)`` gives the slot of
every (row, position), used to write new K/V with index_copy_ and to gather a decode step's context.
"""

from __future__ import annotations

import math

import torch

BLOCK_SIZE = 16


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of one token in every layer."""
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 budget_bytes: int, block_size: int = BLOCK_SIZE):
        self.block_size = block_size
        self.budget_bytes = budget_bytes
        block_bytes = kv_bytes_per_token(layers, kv_heads, head_dim, dtype) * block_size
        self.num_blocks = max(1, budget_bytes // block_bytes)
        shape = (self.num_blocks * block_size, kv_heads, head_dim)
        # zeros, not empty: masked positions are multiplied by 0 in attention and must not hold NaN
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.free_blocks = list(range(self.num_blocks))

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def free_tokens(self) -> int:
        return len(self.free_blocks) * self.block_size

    def can_allocate(self, tokens: int) -> bool:
        return math.ceil(tokens / self.block_size) <= len(self.free_blocks)

    def allocate(self, tokens: int) -> list[int]:
        n = math.ceil(tokens / self.block_size)
        if n > len(self.free_blocks):
            raise RuntimeError(f"KV cache: {n} blocks wanted, {len(self.free_blocks)} free")  # a scheduler bug
        blocks, self.free_blocks = self.free_blocks[:n], self.free_blocks[n:]
        return blocks

    def free(self, blocks: list[int]) -> None:
        self.free_blocks.extend(blocks)

    def table(self, block_lists: list[list[int]], device: torch.device) -> torch.Tensor:
        """Block table [rows, widest]; short rows are padded with block 0 (only masked positions read it)."""
        width = max(len(b) for b in block_lists)
        return torch.tensor([b + [0] * (width - len(b)) for b in block_lists], dtype=torch.long, device=device)

    def slots(self, table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The cache slot of each (row, position); positions [rows, T] -> slots [rows, T]."""
        return table.gather(1, positions // self.block_size) * self.block_size + positions % self.block_size
