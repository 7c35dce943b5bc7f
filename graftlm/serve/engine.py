"""The engine: one copy of the base model, many adapters, one continuous batch.

``step()`` is the whole loop: retire cancelled requests, admit waiting ones (prefill), decode one token for
every running row, publish each row's new text to its handle, retire the ended. ``_retire`` is the one place a
request ends, however it ends (finished, cancelled, failed, its adapter evicted, the engine stopping).
``start()`` runs it on a background thread; ``submit()`` returns a handle to stream from; ``generate()`` is the
synchronous form.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from pathlib import Path

import torch
from transformers import AutoTokenizer

from graftlm.device import default_dtype, device as default_device
from graftlm.errors import GraftError, Unavailable

from .adapter_cache import AdapterCache
from .adapters import AdapterPool
from .kv_cache import KVCache, kv_bytes_per_token
from .model import Llama
from .sampler import SamplingParams, adjust_logits, adjusts, sample
from .scheduler import QueueFull, Scheduler
from .request import Output, RequestHandle
from .sequence import Sequence

log = logging.getLogger("graftlm.serve")

__all__ = ["Engine", "EngineUnavailable", "RowFailed", "QueueFull", "SamplingParams", "Output", "RequestHandle",
           "default_dtype"]


class RowFailed(GraftError):
    """One request failed inside the engine (a bug, not the client's input): HTTP 500 for it alone."""
    status_code = 500
    error_type = "server_error"

    def __init__(self, message: str):
        super().__init__(message, code="engine_row_failed")


class EngineUnavailable(Unavailable):
    """The engine no longer serves: it was stopped, or its loop died with an error (HTTP 503)."""

    def __init__(self, message: str):
        super().__init__(message, code="engine_unavailable")


def eos_token_ids(model_path: Path, tokenizer) -> set[int]:
    ids = set()
    for name in ("generation_config.json", "config.json"):
        f = model_path / name
        if f.exists():
            import json
            eos = json.loads(f.read_text()).get("eos_token_id")
            ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def default_kv_cache_bytes(device: torch.device, full_bytes: int) -> int:
    """Without a set budget: room for every row at full length, but on a GPU at most half the memory still
    free once the weights and adapter slots are allocated (the rest is for activations)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(full_bytes, free // 2)
    return full_bytes


class Engine:
    def __init__(self, model_path: str | Path, dtype: torch.dtype | str | None = None,
                 device: torch.device | str | None = None, max_batch_size: int = 32, max_seq_len: int = 2048,
                 max_queue: int = 64, max_adapters: int = 8, max_lora_rank: int = 64,
                 max_cpu_adapters: int | None = None, max_prefill_tokens: int = 4096,
                 kv_cache_bytes: int | None = None, threads: int | None = None,
                 prefix_cache: bool | None = None):
        self.model_path = Path(model_path)
        self.threads = threads  # CPU threads for this engine's steps (its cluster's units); None: torch's default
        self.device = torch.device(device) if device is not None else default_device()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.dtype = dtype or default_dtype(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.eos_ids = eos_token_ids(self.model_path, self.tokenizer)
        self.model = Llama(self.model_path, self.dtype, self.device, max_seq_len)
        s = self.model.shape
        self.max_seq_len = max_seq_len
        self.pool = AdapterPool(s, max_adapters, max_lora_rank, self.dtype, self.device)
        if kv_cache_bytes is None:
            full = max_batch_size * max_seq_len * kv_bytes_per_token(s.layers, s.kv_heads, s.head_dim, self.dtype)
            kv_cache_bytes = default_kv_cache_bytes(self.device, full)
        if prefix_cache is None:
            from graftlm.config import get_settings

            prefix_cache = get_settings().prefix_cache
        self.cache = KVCache(s.layers, s.kv_heads, s.head_dim, self.dtype, self.device, kv_cache_bytes,
                             prefix_caching=prefix_cache)
        self._wake = threading.Event()
        self.adapters = AdapterCache(self.pool, max_cpu_adapters or 4 * max_adapters, on_loaded=self._wake.set)
        self.scheduler = Scheduler(self.cache, self.adapters, max_batch_size, max_queue, max_prefill_tokens)
        self._step_lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._cancelled: list[Sequence] = []
        self._cancel_lock = threading.Lock()
        self.error: BaseException | None = None

    # --- adapters --------------------------------------------------------------------------------

    def register_adapter(self, name: str, path: str | Path) -> None:
        self.adapters.register(name, path)

    def unregister_adapter(self, name: str) -> None:
        """Forget an adapter (endpoint model changed); rows already running with it finish normally."""
        with self._step_lock:
            self.adapters.unregister(name)

    def unregister_adapter_if_unused(self, name: str) -> bool:
        """Forget the adapter and free its memory unless a queued or running request still uses it."""
        with self._step_lock:
            if any(s.adapter == name for s in self.scheduler.live()):
                return False
            self.adapters.unregister(name)
            return True

    def evict_adapter(self, name: str, error: BaseException) -> None:
        """Fail every request using the adapter with ``error`` and free its device slot and CPU copy now."""
        with self._step_lock:
            self._fail([s for s in self.scheduler.live() if s.adapter == name], error)
            self.adapters.unregister(name)

    def fail_requests(self, handles: list[RequestHandle], error: BaseException) -> None:
        """Fail these requests (queued or running) with ``error``, freeing their rows at once."""
        ids = {h.request_id for h in handles}
        with self._step_lock:
            self._fail([s for s in self.scheduler.live() if s.request_id in ids], error)

    def _fail(self, seqs: list[Sequence], error: BaseException) -> None:
        for seq in seqs:
            seq.fail(error)
        self._retire(seqs)

    def _retire(self, seqs: list[Sequence]) -> None:
        """The one place a request ends: it leaves the queue or the batch, gives back its KV blocks and adapter
        slot, and its handle gets the last delta (finish_reason set) or the error, once."""
        seqs = [s for s in seqs if not s.retired]
        if not seqs:
            return
        self.scheduler.remove(seqs)
        for seq in seqs:
            seq.retired = True
            seq.handle._close(seq.final, seq.output())

    # --- requests --------------------------------------------------------------------------------

    def submit(self, prompt_ids: list[int], params: SamplingParams | None = None, adapter: str | None = None,
               *, _bounded: bool = True, listener=None) -> RequestHandle:
        """Queue a request; raises QueueFull when max_queue requests are already waiting, and
        EngineUnavailable once the engine has stopped or failed. ``listener`` (a replica process's) is called
        with each item the handle gets, from the engine thread."""
        self._check_serving()
        params = params or SamplingParams()
        if not prompt_ids:
            raise GraftError("the prompt is empty", param="prompt")
        if len(prompt_ids) >= self.max_seq_len:
            raise GraftError(f"the prompt has {len(prompt_ids)} tokens; this engine serves at most "
                             f"{self.max_seq_len} tokens per sequence", param="prompt")
        if min(prompt_ids) < 0 or max(prompt_ids) >= self.model.shape.vocab:
            raise GraftError(f"the prompt has token ids outside this model's vocabulary (0 to "
                             f"{self.model.shape.vocab - 1})", param="prompt")
        if adapter is not None:
            self.adapters.check(adapter)
        generator = None
        if params.seed is not None and params.temperature > 0:
            generator = torch.Generator(device=self.device).manual_seed(params.seed)
        seq = Sequence(prompt_ids, params, adapter, self.tokenizer, generator)
        seq.kv_tokens = min(seq.kv_tokens, self.max_seq_len)  # generation stops at max_seq_len anyway
        if self.cache.prefix_caching:
            seq.prefix_hashes = self.cache.prefix_hashes(seq.prompt_ids, self._adapter_key(adapter))
        self._check_kv_fits(seq)
        seq.handle = RequestHandle(seq.request_id, functools.partial(self._cancel, seq))
        seq.handle.listener = listener
        self.scheduler.add(seq, bounded=_bounded)
        if self._stopping or self.error is not None:  # it stopped while we queued: fail, don't strand it
            self._fail_pending()
        self._wake.set()
        return seq.handle

    def _adapter_key(self, adapter: str | None):
        """What a cached block's keys and values depend on besides its tokens: the adapter (by name and files).
        Any adapter counts, not only one on k_proj/v_proj: a change anywhere in layer i (q, o, the MLP) changes
        the hidden state that layer i + 1 computes its keys and values from."""
        return None if adapter is None else (adapter, str(self.adapters.paths.get(adapter)))

    def _check_kv_fits(self, seq: Sequence) -> None:
        """Refuse a request that could never be admitted: its KV alone exceeds the whole cache."""
        if seq.kv_tokens > self.cache.capacity_tokens:
            raise GraftError(f"prompt ({len(seq.prompt_ids)} tokens) + max_tokens ({seq.params.max_tokens}) needs "
                             f"KV cache for {seq.kv_tokens} tokens; this engine's KV cache holds at most "
                             f"{self.cache.capacity_tokens} tokens (GRAFT_KV_CACHE_BYTES="
                             f"{self.cache.budget_bytes}); lower max_tokens or shorten the prompt",
                             param="max_tokens", code="kv_cache_exceeded")

    @functools.cached_property
    def grammars(self):
        """The structured-output compiler for this engine's tokenizer (built on first use; serve.grammar)."""
        from .grammar import Grammars

        return Grammars(self.tokenizer, self.model.shape.vocab, self.eos_ids)

    @functools.cached_property
    def max_token_chars(self) -> int:
        """The longest vocabulary entry in characters: no token covers more characters of text than that."""
        return max(1, max(map(len, self.tokenizer.get_vocab()), default=1))

    def check_prompt_chars(self, chars: int, param: str) -> None:
        """Refuse, without tokenizing it, a prompt of ``chars`` characters too long for the context whatever
        the tokenizer makes of it (work proportional to a huge prompt's size is not done for a refusal)."""
        at_least = math.ceil(chars / self.max_token_chars)
        if at_least >= self.max_seq_len:
            raise GraftError(f"the prompt has {chars} characters, so at least {at_least} tokens; this model serves "
                             f"at most {self.max_seq_len} tokens per request", param=param,
                             code="context_length_exceeded")

    @property
    def kv_capacity_tokens(self) -> int:
        """The most tokens (prompt + max_tokens) one request may reserve in the KV cache."""
        return min(self.max_seq_len, self.cache.capacity_tokens)

    def _unavailable(self) -> EngineUnavailable | None:
        """Why this engine no longer serves, or None while it does."""
        if self.error is not None:
            error = EngineUnavailable(f"the serving engine for {self.model_path.name} failed and serves no more "
                                      f"requests ({type(self.error).__name__}: {self.error}); retry: the "
                                      f"server starts a fresh engine for the next request")
            error.__cause__ = self.error
            return error
        if self._stopping:
            return EngineUnavailable(f"the serving engine for {self.model_path.name} was stopped (its cluster "
                                     f"was deleted or the server is shutting down)")
        return None

    def _check_serving(self) -> None:
        error = self._unavailable()
        if error is not None:
            raise error

    def _fail_pending(self) -> None:
        """Fail every waiting and running request with the reason the engine stopped."""
        with self._step_lock:
            error = self._unavailable()
            if error is None:
                return
            self._fail(self.scheduler.live(), error)

    def _cancel(self, seq: Sequence) -> None:
        seq.cancelled = True
        with self._cancel_lock:
            self._cancelled.append(seq)
        self._wake.set()

    def generate(self, requests: list[tuple[list[int], SamplingParams | None, str | None]]) -> list[Output]:
        """Serve a list of (prompt_ids, params, adapter name or None) to completion; outputs in order."""
        handles = [self.submit(p, sp, a, _bounded=False) for p, sp, a in requests]
        if self._thread is None:
            while not all(h.done for h in handles):
                if not self.step():
                    self._wake.wait(0.01)
                    self._wake.clear()
        return [h.result() for h in handles]

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_waiting(self) -> int:
        return self.scheduler.num_waiting

    # --- the loop --------------------------------------------------------------------------------

    def step(self) -> bool:
        """One engine iteration; returns whether any work was done."""
        with self._step_lock:
            self._use_threads()
            self._retire_cancelled()
            new, failed = self.scheduler.admit()
            self._retire(failed)
            if new:
                self._prefill(new)
                self._publish(new)
            running = list(self.scheduler.running)
            if running:
                self._decode(running)
                self._publish(running)
            return bool(new or running or failed)

    def _use_threads(self) -> None:
        """Run this step on ``self.threads`` CPU threads. torch's thread count is per calling thread
        (OpenMP), so engines of clusters with different units in one process each keep their own share."""
        if self.threads and self.device.type == "cpu" and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _publish(self, seqs: list[Sequence]) -> None:
        """Push each row's delta of this step to its handle; retire the rows that ended."""
        for seq in seqs:
            if seq.pending is not None:
                seq.handle._push(seq.pending)
                seq.pending = None
        self._retire([s for s in seqs if s.ended])

    def _retire_cancelled(self) -> None:
        with self._cancel_lock:
            cancelled, self._cancelled = self._cancelled, []
        for seq in cancelled:
            seq.end("cancelled")
        self._retire(cancelled)

    def _prefill(self, seqs: list[Sequence]) -> None:
        self._run_rows(seqs, self._prefill_logits)

    def _decode(self, seqs: list[Sequence]) -> None:
        self._run_rows(seqs, self._decode_logits)

    def _prefill_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        """Prefill each prompt from the end of its cached prefix; its full blocks are cached afterwards."""
        starts = [s.cached_tokens for s in seqs]
        lengths = [len(s.prompt_ids) - c for s, c in zip(seqs, starts)]
        tokens = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
        for i, s in enumerate(seqs):
            tokens[i, :lengths[i]] = torch.tensor(s.prompt_ids[starts[i]:])
        logits = self.model.prefill(tokens.to(self.device), torch.tensor(lengths, device=self.device),
                                    self.pool.rows([s.slot for s in seqs]), self.cache, self._block_table(seqs),
                                    starts=starts)
        for s in seqs:
            self.cache.register(s.blocks, s.prefix_hashes)
        return logits

    def _decode_logits(self, seqs: list[Sequence]) -> torch.Tensor:
        tokens = torch.tensor([s.last_token for s in seqs], device=self.device)
        positions = torch.tensor([len(s) - 1 for s in seqs], device=self.device)
        return self.model.decode(tokens, positions, self.pool.rows([s.slot for s in seqs]), self.cache,
                                 self._block_table(seqs))

    def _block_table(self, seqs: list[Sequence]) -> torch.Tensor:
        return self.cache.table([s.blocks for s in seqs], self.device)

    def _run_rows(self, seqs: list[Sequence], forward) -> None:
        """Forward ``seqs`` as one batch and append a token to each. When the batch raises, each row is run
        alone (its KV writes go to its own blocks, so a rerun is harmless): only the rows that fail alone fail."""
        try:
            logits = forward(seqs)
        except Exception as e:  # noqa: BLE001 - a row's fault is that row's error
            if len(seqs) == 1:
                self._fail_row(seqs[0], e)
                return
            for seq in seqs:
                self._run_rows([seq], forward)
            return
        self._append(seqs, logits)

    def _append(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        try:
            tokens, logprobs = self._sample(seqs, logits)
        except Exception:  # noqa: BLE001 - sample row by row so only the faulty row fails
            for i, seq in enumerate(seqs):
                try:
                    token, logprob = self._sample([seq], logits[i:i + 1])
                except Exception as e:  # noqa: BLE001
                    self._fail_row(seq, e)
                else:
                    self._add_token(seq, token[0], logprob[0])
            return
        for seq, token, logprob in zip(seqs, tokens, logprobs):
            self._add_token(seq, token, logprob)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor):
        """Penalties and logit_bias, then each grammar row's token mask, then sampling; logprobs of the raw logits.
        Rows without any of these are untouched (the same tokens as in a batch without such rows)."""
        params = [s.params for s in seqs]
        raw, grammar_rows = logits, [i for i, s in enumerate(seqs) if s.matcher is not None]
        if grammar_rows or any(adjusts(p) for p in params):
            logits = logits.clone()
            adjust_logits(logits, params, [s.output_ids for s in seqs])
            if grammar_rows:
                self.grammars.apply_masks(logits, [seqs[i].matcher for i in grammar_rows], grammar_rows)
        return sample(logits, params, [s.generator for s in seqs], raw=raw)

    def _add_token(self, seq: Sequence, token: int, logprob) -> None:
        try:
            is_eos = not seq.params.ignore_eos and (token in self.eos_ids or token in seq.params.stop_token_ids)
            if seq.matcher is not None and not seq.matcher.accept_token(token):
                raise RuntimeError(f"the grammar refused token {token} its own mask allowed")
            seq.append(token, logprob, is_eos, self.max_seq_len)
        except Exception as e:  # noqa: BLE001
            self._fail_row(seq, e)

    def _fail_row(self, seq: Sequence, error: BaseException) -> None:
        """The one place a fault in one row becomes that row's error; the row retires with the ended ones
        and the rest of the batch, and the engine, carry on."""
        log.error("request %d failed in the engine (%s: %s); other requests continue", seq.request_id,
                  type(error).__name__, error, exc_info=error)
        if isinstance(error, GraftError):
            seq.fail(error)
            return
        wrapped = RowFailed(f"this request failed in the serving engine ({type(error).__name__}: {error}); "
                            f"other requests on the engine were not affected")
        wrapped.__cause__ = error
        seq.fail(wrapped)

    def start(self) -> None:
        """Step the batch on a background thread until ``stop()``."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="graft-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            while not self._stopping:
                if not self.step():
                    self._wake.wait(0.05)
                    self._wake.clear()
        except BaseException as e:  # noqa: BLE001 - fail every request rather than hang them
            self.error = e
            self._fail_pending()
            raise

    def stop(self) -> None:
        """Stop the loop; requests still waiting or running fail with EngineUnavailable."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._fail_pending()
        self.adapters.shutdown()

    # --- raw logits (tests, RAG-Token mixtures) ------------------------------------------------------

    def logits(self, rows: list[tuple[list[int], str | None]]) -> torch.Tensor:
        """Next-token fp32 logits [N, vocab] after each prompt, each row with its own adapter (no KV cache)."""
        for _, adapter in rows:
            if adapter is not None:
                self.adapters.load_now(adapter)
        with self._step_lock:
            slots = []
            try:
                for _, adapter in rows:
                    slot = None if adapter is None else self.adapters.acquire(adapter)
                    if adapter is not None and slot is None:
                        raise GraftError("too many different adapters in one logits() call for max_adapters")
                    slots.append((adapter, slot or 0))
                lengths = [len(p) for p, _ in rows]
                tokens = torch.zeros(len(rows), max(lengths), dtype=torch.long)
                for i, (p, _) in enumerate(rows):
                    tokens[i, :len(p)] = torch.tensor(p)
                return self.model.prefill(tokens.to(self.device), torch.tensor(lengths, device=self.device),
                                          self.pool.rows([s for _, s in slots]))
            finally:
                for adapter, _ in slots:
                    if adapter is not None:
                        self.adapters.release(adapter)
