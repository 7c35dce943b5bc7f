"""A paged KV cache: one fixed budget of token slots in blocks; each running sequence holds the blocks for
its prompt + max_tokens from admission to retirement, so admitted work can never run out of KV memory.

A layer's keys (and values) are one tensor [slots, kv_heads, head_dim]; slot = block * block_size + offset.
A batch addresses it through a block table [rows, blocks]: ``slots(table, positions)`` gives the slot of
every (row, position), used to write new K/V with index_copy_ and to gather a decode step's context.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

BLOCK_SIZE = 16


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Keys and values of one token in every layer."""
    return 2 * layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


class KVCache:
    def __init__(self, layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                 budget_bytes: int, block_size: int = BLOCK_SIZE, prefix_caching: bool = False):
        self.block_size = block_size
        self.budget_bytes = budget_bytes
        block_bytes = kv_bytes_per_token(layers, kv_heads, head_dim, dtype) * block_size
        self.num_blocks = max(1, budget_bytes // block_bytes)
        shape = (self.num_blocks * block_size, kv_heads, head_dim)
        # zeros, not empty: masked positions are multiplied by 0 in attention and must not hold NaN
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.free_blocks = list(range(self.num_blocks))  # hold nothing
        # automatic prefix caching: a full prompt block is kept under the hash of (its parent's hash, its
        # tokens, the adapter) and shared by every row whose prompt starts the same way; a block no row uses
        # stays cached in `idle` (least recently used first) until its memory is needed
        self.prefix_caching = prefix_caching
        self.refs = [0] * self.num_blocks
        self.block_hash: list[int | None] = [None] * self.num_blocks
        self.cached: dict[int, int] = {}  # hash -> block
        self.idle: OrderedDict[int, None] = OrderedDict()  # cached blocks with no row, oldest first
        self.hit_tokens = self.query_tokens = 0

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def available_blocks(self) -> int:
        """Blocks a new row can take: empty ones and cached ones no row uses."""
        return len(self.free_blocks) + len(self.idle)

    @property
    def free_tokens(self) -> int:
        return self.available_blocks * self.block_size

    def prefix_hashes(self, prompt_ids: list[int], adapter_key) -> list[int]:
        """The chain hash of each full block of the prompt that may be reused: never the block holding the
        last prompt token (a prefill must compute at least one token, for its logits)."""
        hashes, parent, size = [], None, self.block_size
        for i in range((len(prompt_ids) - 1) // size):
            parent = hash((parent, tuple(prompt_ids[i * size:(i + 1) * size]), adapter_key))
            hashes.append(parent)
        return hashes

    def cached_prefix_tokens(self, hashes: list[int]) -> int:
        """How many leading tokens of a prompt with these block hashes the cache holds now."""
        return len(self._matched(hashes)) * self.block_size if self.prefix_caching else 0

    def _matched(self, hashes: list[int]) -> list[int]:
        blocks = []
        for h in hashes:
            block = self.cached.get(h)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def can_allocate(self, tokens: int, hashes: list[int] = ()) -> bool:
        shared = self._matched(hashes) if self.prefix_caching else []
        idle_shared = sum(1 for b in shared if b in self.idle)
        return math.ceil(tokens / self.block_size) - len(shared) <= self.available_blocks - idle_shared

    def allocate(self, tokens: int) -> list[int]:
        return self.allocate_prefix(tokens, [])[0]

    def allocate_prefix(self, tokens: int, hashes: list[int]) -> tuple[list[int], int]:
        """Blocks for ``tokens`` and how many leading tokens they already hold (the cached prefix of a prompt
        whose reusable blocks have ``hashes``)."""
        shared = self._matched(hashes) if self.prefix_caching else []
        for b in shared:
            self.refs[b] += 1
            self.idle.pop(b, None)
        n = math.ceil(tokens / self.block_size) - len(shared)
        if n > self.available_blocks:
            raise RuntimeError(f"KV cache: {n} blocks wanted, {self.available_blocks} free")  # a scheduler bug
        fresh = []
        for _ in range(n):
            if self.free_blocks:
                b = self.free_blocks.pop()
            else:  # evict the least recently used cached block
                b, _ = self.idle.popitem(last=False)
                del self.cached[self.block_hash[b]]
                self.block_hash[b] = None
            self.refs[b] = 1
            fresh.append(b)
        self.query_tokens += len(hashes) * self.block_size
        self.hit_tokens += len(shared) * self.block_size
        return shared + fresh, len(shared) * self.block_size

    def register(self, blocks: list[int], hashes: list[int]) -> None:
        """After a prefill: the row's full prompt blocks (in ``hashes`` order) hold their K/V; cache them."""
        if not self.prefix_caching:
            return
        for b, h in zip(blocks, hashes):
            if self.block_hash[b] is None and h not in self.cached:
                self.block_hash[b], self.cached[h] = h, b

    def free(self, blocks: list[int]) -> None:
        for b in blocks:
            self.refs[b] -= 1
            if self.refs[b] > 0:
                continue
            if self.block_hash[b] is not None:
                self.idle[b] = None  # most recently used last
            else:
                self.free_blocks.append(b)

    def table(self, block_lists: list[list[int]], device: torch.device) -> torch.Tensor:
        """Block table [rows, widest]; short rows are padded with block 0 (only masked positions read it)."""
        width = max(len(b) for b in block_lists)
        return torch.tensor([b + [0] * (width - len(b)) for b in block_lists], dtype=torch.long, device=device)

    def slots(self, table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The cache slot of each (row, position); positions [rows, T] -> slots [rows, T]."""
        return table.gather(1, positions // self.block_size) * self.block_size + positions % self.block_size
