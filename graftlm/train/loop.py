"""The training loop, read top to bottom in ``train()``:

    prepare (tokenize, load the base model, method.prepare, auto, AdamW) -> start or resume -> for each step:
        train_step (packed micro-batches, loss on target positions only, backward, AdamW)
        -> evaluate + track_best (early stopping) -> log_metrics -> maybe_checkpoint -> obey pause or cancel
    -> finish (best weights, method.save)

``TrainState`` is all that changes from step to step and is what a checkpoint stores (``state.json``), so a
resumed run continues exactly; ``Run`` holds what does not change (data, model, optimizer, schedule).

Events (``on_event`` receives plain dicts):
    {"type": "message", "level": "info", "message": str, "data": {...}}
    {"type": "metrics", "data": {"step", "train_loss", "train_mean_token_accuracy",
                                 ["train_unlikelihood_loss", "train_length_normalized_loss"],  # label_set_losses
                                 ["valid_loss", "valid_mean_token_accuracy", ["valid_exact_match"]]}}
    {"type": "checkpoint", "data": {"step", "path", "metrics"}}

``valid_exact_match`` is the share of validation examples whose every target token (the whole
completion, its end token included) is the model's argmax given the reference prefix: exactly the
examples greedy decoding would answer word for word. It comes from the validation forward pass
(no generation), and is reported when the validation completions are short (every one at most
``EXACT_MATCH_MAX_TARGETS`` tokens: labels, short extractions); then it decides which evaluation is
best (ties: lower loss) and so early stopping and the kept checkpoint. Otherwise validation loss does.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
import torch.nn.functional as F

from graftlm.data.render import encode_example
from graftlm.device import device as default_device, training_dtype
from graftlm.errors import GraftError
from graftlm.train import auto as auto_hp
from graftlm.train import checkpoint as ckpt
from graftlm.train import losses
from graftlm.train import distributed as dist_
from graftlm.train.batching import IGNORE_INDEX, micro_batches, step_examples, steps_per_epoch, target_count
from graftlm.train.config import FineTuneConfig, check_runtime, parse_config
from graftlm.train.methods import count_parameters, dpo, get_method

MAX_GRAD_NORM = 1.0
EXACT_MATCH_MAX_TARGETS = 48  # validation completions up to this many target tokens get valid_exact_match


@dataclass
class TrainResult:
    status: str  # succeeded | cancelled | paused
    model_dir: Path | None  # the trained adapter (PEFT format) or full model; None unless succeeded
    checkpoint_dir: Path | None  # the latest checkpoint (what resume_from wants after a pause)
    steps: int  # optimizer steps done
    total_steps: int
    best_step: int | None
    trained_tokens: int  # tokens fed forward in training steps (all epochs)
    metrics: dict  # metrics of the result: at best_step when validated, else of the last step
    trainable_params: int
    total_params: int
    run_info: dict = field(default_factory=dict)


def encode_examples(tokenizer, examples, cfg: FineTuneConfig) -> list[dict]:
    """Token ids and labels; continued pretraining learns every token, in context-length windows."""
    if cfg.objective == "dpo":  # preference pairs: {"chosen", "rejected"} (graftlm.train.methods.dpo)
        return dpo.encode_pairs(tokenizer, examples, cfg)
    out = []
    for ex in examples:
        if "input_ids" in ex:  # already tokenized
            ids = list(ex["input_ids"])
            pieces = [{"input_ids": ids, "labels": list(ex.get("labels", ids))}]
        elif cfg.task_type == "CONTINUED_PRETRAIN":
            ids = encode_example(tokenizer, ex)["input_ids"]
            n = cfg.context_length
            pieces = [{"input_ids": ids[i:i + n], "labels": ids[i:i + n]} for i in range(0, len(ids), n)]
        else:
            pieces = [encode_example(tokenizer, ex, cfg.context_length)]
        out.extend(p for p in pieces if target_count(p) > 0)
    return out


def causal_lm(model):
    """The *ForCausalLM module (PEFT wraps it; its adapter layers are injected in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class TargetLogits(torch.nn.Module):
    """The model as one module whose forward gives ``target_logits``: what DDP and FSDP2 wrap (their hooks
    run on a module's forward, and the loop calls the decoder and the LM head separately)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, targets):
        return target_logits(self.model, {"input_ids": input_ids, "position_ids": position_ids,
                                          "targets": targets}, input_ids.device)


def net_logits(net, batch: dict, device):
    return net(batch["input_ids"].to(device), batch["position_ids"].to(device), batch["targets"].to(device))


def lockstep_micro_batches(examples: list[dict], cfg: FineTuneConfig, ranks) -> list[tuple[dict, bool]]:
    """This rank's micro-batches of a step (or an evaluation), as many as the busiest rank's: (batch, real).
    Padding micro-batches repeat a real example and count for nothing."""
    def of(rank_examples):
        return micro_batches(rank_examples, cfg.max_tokens_per_micro_batch, cfg.micro_batch_size)
    mine = of(dist_.shard(examples, ranks))
    if not ranks.distributed:
        return [(b, True) for b in mine]
    most = max(len(of(examples[r::ranks.world_size])) for r in range(ranks.world_size))
    filler = mine[0] if mine else of(examples[:1])[0]
    return [(b, True) for b in mine] + [(filler, False)] * (most - len(mine))


def target_logits(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, labels, row of each) at target positions only.

    The LM head runs on the hidden states of target positions alone: with short assistant answers
    and a 49k vocabulary, full logits would cost more than the rest of the model.
    """
    lm = causal_lm(model)
    hidden = lm.model(input_ids=batch["input_ids"].to(device), position_ids=batch["position_ids"].to(device),
                      use_cache=False).last_hidden_state
    targets = batch["targets"].to(device)
    keep = targets != IGNORE_INDEX
    rows = keep.nonzero()[:, 0]
    return lm.lm_head(hidden[keep]).float(), targets[keep], rows


def target_loss(model, batch: dict, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of cross-entropy, number of correct argmax) over target positions only."""
    logits, labels, _ = target_logits(model, batch, device)
    loss_sum = F.cross_entropy(logits, labels, reduction="sum")
    correct = (logits.detach().argmax(-1) == labels).sum()
    return loss_sum, correct


def learning_rate_at(step: int, cfg: FineTuneConfig, total_steps: int) -> float:
    """Linear warmup, then cosine or linear decay to 0 at total_steps (step counts from 1)."""
    warmup = round(cfg.warmup_ratio * total_steps)
    if step <= warmup:
        return cfg.learning_rate * step / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if cfg.lr_scheduler == "linear":
        return cfg.learning_rate * (1 - progress)
    return cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * progress))


def reports_exact_match(examples: list[dict], cfg: FineTuneConfig) -> bool:
    """Short completions (labels, short extractions): exact match is the task's measure."""
    return (cfg.task_type == "CHAT_COMPLETION" and bool(examples)
            and max(target_count(e) for e in examples) <= EXACT_MATCH_MAX_TARGETS)


@torch.no_grad()
def evaluate(model, examples: list[dict], cfg: FineTuneConfig, device, dtype, exact_match: bool = False,
             net=None, ranks=None) -> dict:
    """Validation loss and token accuracy (OCI's), and valid_exact_match when asked for; over ranks, each
    evaluates its share and the sums are all-reduced."""
    ranks = ranks or dist_.Ranks()
    net = dist_.unwrap(net) if net is not None else TargetLogits(model)
    if cfg.objective == "dpo":  # one process (refused over ranks)
        return dpo.evaluate(model, examples, cfg, device, dtype, target_logits)
    model.eval()
    loss_sum = correct = exact = 0.0
    n = sum(target_count(e) for e in examples)
    for batch, real in lockstep_micro_batches(examples, cfg, ranks):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits, labels, rows = net_logits(net, batch, device)
        if not real:
            continue
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        hits = logits.argmax(-1) == labels
        correct += hits.sum().item()
        # one example per row: a row is an exact match when none of its targets is missed
        misses = torch.zeros(batch["input_ids"].shape[0], dtype=torch.long, device=hits.device)
        misses.index_add_(0, rows, (~hits).long())
        has_targets = torch.zeros_like(misses).index_add_(0, rows, torch.ones_like(rows))
        exact += ((misses == 0) & (has_targets > 0)).sum().item()
    loss_sum, correct, exact = ranks.sum([loss_sum, correct, exact])
    out = {"valid_loss": loss_sum / max(n, 1), "valid_mean_token_accuracy": correct / max(n, 1)}
    if exact_match:
        out["valid_exact_match"] = exact / max(len(examples), 1)
    return out


def improves(metrics: dict, best: dict | None, threshold: float) -> bool:
    """Whether an evaluation beats the best so far: higher exact match when reported (ties: loss lower by
    ``threshold``), else validation loss lower by ``threshold``."""
    if not best:
        return True
    loss_better = best["valid_loss"] - metrics["valid_loss"] >= threshold
    if "valid_exact_match" in metrics and "valid_exact_match" in best:
        em, best_em = metrics["valid_exact_match"], best["valid_exact_match"]
        return em > best_em or (em == best_em and loss_better)
    return loss_better


def run_info(cfg: FineTuneConfig, device, dtype, base_model_path, ranks=None) -> dict:
    import peft
    import transformers

    import graftlm
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "graftlm": getattr(graftlm, "__version__", "unknown"), "python": platform.python_version(),
            "device": str(device), "autocast_dtype": str(dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(), "seed": cfg.seed,
            "base_model_path": str(base_model_path), "config": cfg.model_dump(mode="json"),
            "distributed": (ranks or dist_.Ranks()).describe()}


@dataclass
class TrainState:
    """Where a run stands after its last optimizer step: what every checkpoint stores (``state.json``) and a
    resume restores. Everything else a run needs is rebuilt from the config, the data and the base model."""
    step: int = 0  # optimizer steps done
    epoch: int = 0  # epoch of the last step, from 0
    best_loss: float | None = None  # validation loss at best_step
    best_step: int | None = None  # the best evaluation so far (see improves)
    bad_evals: int = 0  # evaluations since best_step that did not improve on it
    trained_tokens: int = 0
    metrics: dict = field(default_factory=dict)  # of the last step
    best_metrics: dict = field(default_factory=dict)  # of best_step
    last_saved_step: int | None = None

    @classmethod
    def from_dict(cls, saved: dict) -> TrainState:
        return cls(**{f.name: saved[f.name] for f in fields(cls) if f.name in saved})


@dataclass
class Run:
    """What a run works with and does not change between steps: the data, the model and its optimizer,
    the schedule, where it writes and whom it tells."""
    cfg: FineTuneConfig
    method: ModuleType
    tokenizer: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]  # the trainable ones
    train_set: list[dict]
    valid_set: list[dict]
    device: torch.device
    dtype: torch.dtype
    total_steps: int
    per_epoch: int
    exact_match: bool  # whether validation reports (and selects by) valid_exact_match
    label_set: list[tuple[int, ...]] | None  # the training answers, with label_set_losses (else None)
    out_dir: Path
    info: dict  # run_info.json
    auto: dict  # the auto picks, {} when none
    trainable: int
    total: int
    emit: Callable[[dict], None]
    ranks: dist_.Ranks = field(default_factory=dist_.Ranks)
    net: torch.nn.Module | None = None  # the model's TargetLogits, wrapped by DDP or FSDP2 over ranks
    started: float = field(default_factory=time.time)
    throughput_since: tuple[float, int] = (0.0, 0)  # (perf_counter, trained tokens) at the last metrics event
    pending: tuple | None = None  # (PendingCheckpoint, step, metrics, steps to keep): being written in the background

    @property
    def checkpoints(self) -> Path:
        return self.out_dir / "checkpoints"

    def say(self, message: str, **data) -> None:
        self.emit({"type": "message", "level": "info", "message": message, "data": data})


def train(cfg: FineTuneConfig | dict, base_model_path, train_examples: list[dict],
          valid_examples: list[dict] | None, out_dir, on_event: Callable[[dict], None] | None = None,
          should_stop: Callable[[], str | None] | None = None, resume_from=None, init_adapter=None) -> TrainResult:
    """Train ``cfg`` on the examples into ``out_dir``; ``should_stop()`` may answer "pause" or "cancel" after
    any step, and ``resume_from`` (a checkpoint directory) continues a paused or killed run exactly.
    ``init_adapter`` (a PEFT adapter directory of the same method, a custom model's) is where training starts."""
    run = prepare(cfg, base_model_path, train_examples, valid_examples, out_dir, on_event or (lambda event: None),
                  init_adapter=init_adapter)
    state = resume(run, resume_from) if resume_from is not None else start(run)
    run.say(f"trainable parameters: {run.trainable:,} of {run.total:,} ({100 * run.trainable / run.total:.4f}%)",
            trainable_params=run.trainable, total_params=run.total, trainable_share=run.trainable / run.total)
    run.throughput_since = (time.perf_counter(), state.trained_tokens)
    while state.step < run.total_steps:
        metrics = train_step(run, state)
        finish_pending(run)  # the last checkpoint's shards were written (in the background) during this step
        at_eval = is_eval_step(run, state.step)
        stop_early = False
        if at_eval and run.valid_set:
            metrics.update(evaluate(run.model, run.valid_set, run.cfg, run.device, run.dtype, run.exact_match,
                                    net=run.net, ranks=run.ranks))
            stop_early = track_best(run, state, metrics)
        state.metrics = metrics
        log_metrics(run, state, at_eval)
        maybe_checkpoint(run, state, at_eval)
        if stop_early:
            announce_early_stop(run, state)
            break
        request = run.ranks.agree(should_stop() if should_stop and run.ranks.main else None)
        if request in ("pause", "cancel"):
            return interrupt(run, state, request)
    return finish(run, state)


def load_adapter_weights(model, adapter_dir) -> None:
    """Start from a trained adapter: its weights into the freshly prepared PEFT model, every key matched."""
    from peft import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(adapter_dir), device="cpu")
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as e:  # a shape mismatch: the parent was trained with other adapter hyperparameters
        raise GraftError(f"the parent model's adapter does not fit this job's adapter ({str(e).splitlines()[0][:200]}); "
                         "train with the parent's adapter hyperparameters", param="model") from e
    missing = [k for k in result.missing_keys if "lora_" in k or "ia3_" in k]
    if missing or result.unexpected_keys:
        raise GraftError(f"the parent model's adapter does not fit this job's adapter (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]}); train with the parent's adapter "
                         "hyperparameters", param="model")


def prepare(cfg: FineTuneConfig | dict, base_model_path, train_examples: list[dict],
            valid_examples: list[dict] | None, out_dir, emit: Callable[[dict], None], init_adapter=None) -> Run:
    """Tokenize the data, load the base model, let the method decide what trains, resolve auto, build AdamW."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg if isinstance(cfg, FineTuneConfig) else parse_config(cfg)
    check_runtime(cfg)
    ranks, device = dist_.setup(cfg, default_device())
    if not ranks.main:
        emit = lambda event: None  # noqa: E731 - rank 0 alone writes events, metrics and checkpoint metadata
    started = time.time()
    dtype = training_dtype(device)
    torch.manual_seed(cfg.seed)  # the same on every rank: identical adapter initialisation

    # data
    tokenizer = AutoTokenizer.from_pretrained(str(base_model_path))
    train_set = encode_examples(tokenizer, train_examples, cfg)
    valid_set = encode_examples(tokenizer, valid_examples or [], cfg)
    if not train_set:
        raise GraftError("no training example has a token to learn (assistant turns with weight 1, or text)",
                         param="training_file")

    # model: fp32 master weights; the method decides what trains
    method = get_method(cfg.training_method)
    extra = method.load_kwargs(cfg)
    model = AutoModelForCausalLM.from_pretrained(str(base_model_path), dtype=torch.float32, **extra)
    if "device_map" not in extra:
        model.to(device)
    model = method.prepare(model, cfg)
    if init_adapter is not None:
        load_adapter_weights(model, init_adapter)
    sft_view = train_set
    if cfg.objective == "dpo":  # the reference log-probs, once per example (before any step; cached on disk)
        for name, pairs in (("train", train_set), ("valid", valid_set)):
            dpo.attach_reference(model, pairs, cfg, device, dtype, target_logits, Path(out_dir), name,
                                 disable_adapter=init_adapter is None)
        sft_view = [p["chosen"] for p in train_set]
    # auto: epochs, batch size, learning rate from the data and the model (deterministic, so a resumed run agrees)
    cfg, auto = auto_hp.resolve(cfg, auto_hp.dataset_stats(sft_view), model.config.hidden_size)
    per_epoch = steps_per_epoch(len(train_set), cfg.training_batch_size)
    if cfg.gradient_checkpointing:
        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    net = dist_.wrap(TargetLogits(model), causal_lm(model).model.layers, ranks, cfg, device)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # FSDP2: this rank's shards
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, **adamw_kernel(ranks, params))
    info = run_info(cfg, device, dtype, base_model_path, ranks)
    if auto:
        info["auto"] = auto
    return Run(cfg=cfg, method=method, tokenizer=tokenizer, model=model, optimizer=optimizer,
               params=[p for _, p in params], train_set=train_set, valid_set=valid_set, device=device, dtype=dtype,
               total_steps=cfg.max_steps or cfg.total_training_epochs * per_epoch, per_epoch=per_epoch,
               exact_match=cfg.objective != "dpo" and reports_exact_match(valid_set, cfg),
               label_set=losses.label_set(train_set) if cfg.label_set_losses else None,
               out_dir=Path(out_dir), info=info, auto=auto,
               trainable=trainable, total=total, emit=emit, ranks=ranks, net=net, started=started)


def start(run: Run) -> TrainState:
    """A fresh run: write run_info.json and say what will train."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "run_info.json").write_text(json.dumps(run.info, indent=1))
    if run.auto.get("picks"):
        run.say(auto_hp.describe(run.auto), auto_hyperparameters=run.auto)
    if run.label_set is not None:
        run.say(f"label_set_losses: unlikelihood and length-normalised losses over {len(run.label_set)} labels, "
                f"up to {losses.MAX_CANDIDATES} wrong ones per example and step", labels=len(run.label_set))
    run.say(f"training started: {run.cfg.training_method}, {len(run.train_set)} examples, {run.total_steps} steps",
            train_examples=len(run.train_set), valid_examples=len(run.valid_set), total_steps=run.total_steps,
            steps_per_epoch=run.per_epoch, device=str(run.device), dtype=run.info["autocast_dtype"])
    say_ranks(run)
    return TrainState()


def say_ranks(run: Run) -> None:
    """World size, strategy and each rank's share of the weights and its peak memory (gathered to rank 0)."""
    if not run.ranks.distributed:
        return
    local = sum(dist_.local_numel(p) for p in run.model.parameters())
    peak = (torch.cuda.max_memory_allocated(run.device) if run.device.type == "cuda" else _peak_rss())
    shares = run.ranks.gather([local, peak])
    d = run.cfg.distributed
    run.say(f"distributed: {run.ranks.world_size} ranks ({run.ranks.launcher}), strategy {run.ranks.strategy}"
            + (f", sharding {d.sharding}" + (", cpu_offload" if d.cpu_offload else "")
               + (", mixed_precision" if d.mixed_precision else "") if run.ranks.strategy == "fsdp" else ""),
            **run.ranks.describe(), sharding=d.sharding if run.ranks.strategy == "fsdp" else None,
            cpu_offload=d.cpu_offload, mixed_precision=d.mixed_precision,
            rank_parameters=[int(a) for a, _ in shares], rank_peak_memory_bytes=[int(b) for _, b in shares],
            total_params=run.total)


def _peak_rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def resume(run: Run, path) -> TrainState:
    """Continue from a checkpoint: trainable weights, optimizer, RNG states and the TrainState it stored."""
    saved = ckpt.load_checkpoint(path)
    if ckpt.has_sharded(path):  # any world size and strategy wrote it: DCP reshards
        ckpt.load_sharded(path, run.model, run.optimizer)
    elif run.ranks.distributed:
        raise GraftError(f"checkpoint {path} predates sharded checkpoints; resume it with world size 1",
                         param="distributed.world_size")
    else:
        ckpt.load_trainable_state(run.model, saved["weights"])
        run.optimizer.load_state_dict(saved["optimizer"])
    state = TrainState.from_dict(saved["state"])
    ckpt.set_rng_state(saved["rng"])
    written_by = json.loads((Path(path) / "run_info.json").read_text()).get("distributed", {}) \
        if (Path(path) / "run_info.json").exists() else {}
    run.say(f"resumed from step {state.step}", step=state.step, path=str(path), total_steps=run.total_steps,
            checkpoint_world_size=written_by.get("world_size", 1), world_size=run.ranks.world_size)
    say_ranks(run)
    return state


def adamw_kernel(ranks, params) -> dict:
    """Fused AdamW (one kernel over all parameters) where torch has it for these tensors: plain fp32 tensors
    on CPU or CUDA, so not FSDP2's DTensor shards. Measured alone on the ~420 LoRA r8 tensors of SmolLM2-135M
    (2.4M values, 1 thread, loaded 2-core AMD EPYC): 55-66 ms per step fused vs 198-212 ms foreach."""
    plain = ranks.strategy != "fsdp" and all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda")
                                              for _, p in params)
    return {"fused": True} if plain and params else {}


def train_step(run: Run, state: TrainState) -> dict:
    """One optimizer step: accumulate over packed micro-batches (loss = mean cross-entropy over the step's
    targets), clip, AdamW. Returns the step's training metrics."""
    cfg, step = run.cfg, state.step + 1
    epoch, indices = step_examples(len(run.train_set), cfg.training_batch_size, cfg.seed, step - 1)
    if (step - 1) % run.per_epoch == 0:
        run.say(f"epoch {epoch + 1} started", epoch=epoch + 1, step=step)
    run.model.train()
    lr = learning_rate_at(step, cfg, run.total_steps)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    examples = [run.train_set[i] for i in indices]
    if cfg.objective == "dpo":
        metrics, tokens = dpo.backward_step(run.model, examples, cfg, run.device, run.dtype, target_logits)
        state.trained_tokens += tokens
        torch.nn.utils.clip_grad_norm_(run.params, MAX_GRAD_NORM)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        state.step, state.epoch = step, epoch
        return {"step": step, **metrics}
    n_targets = sum(target_count(e) for e in examples)  # global: every rank knows the whole step
    extra = {}
    if run.label_set is not None:  # one process (refused over ranks)
        loss_sum, correct, extra = label_set_backward(run, state, step, examples, n_targets)
    else:
        # DDP and FSDP2 average gradients over ranks: x world size makes it the mean over the global targets
        loss_sum = correct = tokens = 0.0
        batches = lockstep_micro_batches(examples, cfg, run.ranks)
        for i, (batch, real) in enumerate(batches):
            with no_sync(run, last=i == len(batches) - 1):
                with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32):
                    logits, labels, _ = net_logits(run.net, batch, run.device)
                    s = F.cross_entropy(logits, labels, reduction="sum")
                (s * run.ranks.world_size / n_targets if real else s * 0.0).backward()
            if real:
                loss_sum += s.item()
                correct += (logits.detach().argmax(-1) == labels).sum().item()
                tokens += batch["n_tokens"]
        loss_sum, correct, tokens = run.ranks.sum([loss_sum, correct, tokens])
        state.trained_tokens += int(tokens)
    torch.nn.utils.clip_grad_norm_(run.params, MAX_GRAD_NORM)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    state.step, state.epoch = step, epoch
    return {"step": step, "train_loss": loss_sum / n_targets, "train_mean_token_accuracy": correct / n_targets,
            **extra}


def label_set_backward(run: Run, state: TrainState, step: int, examples: list[dict],
                       n_targets: int) -> tuple[float, float, dict]:
    """T-Few's L_LM + L_UL + L_LN over the step's examples and their wrong labels (graftlm.train.losses),
    backpropagated group by group. Returns (cross-entropy sum, argmax hits, the two extra terms' metrics)."""
    rng = losses.step_rng(run.cfg.seed, step)  # the same wrong labels when a resumed run replays the step
    per_example = [losses.candidate_rows(e, run.label_set, rng) for e in examples]
    n_candidate = max(1, sum(target_count(r) for rows in per_example for r in rows[1:]))
    loss_sum = correct = ul_total = ln_total = 0.0
    for group in losses.group_examples(per_example, run.cfg.max_tokens_per_micro_batch):
        rows = [r for j in group for r in per_example[j]]
        owner = [j for j in group for _ in per_example[j]]
        with torch.autocast(run.device.type, dtype=run.dtype, enabled=run.dtype != torch.float32):
            lm, hits, ul, ln, _ = losses.label_set_terms(run.model, rows, owner, run.device, target_logits)
        (lm / n_targets + ul / n_candidate + ln / len(examples)).backward()
        loss_sum, correct = loss_sum + lm.item(), correct + hits.item()
        ul_total, ln_total = ul_total + ul.item(), ln_total + ln.item()
        state.trained_tokens += sum(len(examples[j]["input_ids"]) for j in group)  # billed: the examples
    return loss_sum, correct, {"train_unlikelihood_loss": ul_total / n_candidate,
                               "train_length_normalized_loss": ln_total / len(examples)}


def no_sync(run: Run, last: bool):
    """DDP reduces gradients in the last micro-batch's backward only (FSDP2 reduce-scatters in each)."""
    from contextlib import nullcontext
    if last or run.ranks.strategy != "ddp":
        return nullcontext()
    return run.net.no_sync()


def is_eval_step(run: Run, step: int) -> bool:
    """The last step, and every eval_interval_steps (else every epoch's end)."""
    interval = run.cfg.eval_interval_steps
    return step == run.total_steps or (step % interval == 0 if interval else step % run.per_epoch == 0)


def track_best(run: Run, state: TrainState, metrics: dict) -> bool:
    """Record an evaluation: a new best, or one more that did not improve. Returns whether to stop early
    (patience used up before the last step; at the last step training simply finishes)."""
    cfg = run.cfg
    if improves(metrics, state.best_metrics if state.best_step is not None else None, cfg.early_stopping_threshold):
        state.best_loss, state.best_step, state.bad_evals, state.best_metrics = (
            metrics["valid_loss"], state.step, 0, metrics)
    else:
        state.bad_evals += 1
    return bool(cfg.early_stopping_patience and state.bad_evals >= cfg.early_stopping_patience
                and state.step < run.total_steps)


def log_metrics(run: Run, state: TrainState, at_eval: bool) -> None:
    """A metrics event at every evaluation, and every step up to 20 then every log interval, with the
    tokens/s since the previous one."""
    interval, step = run.cfg.log_model_metrics_interval_in_steps, state.step
    if (at_eval and run.valid_set) or (interval and (step <= 20 or step % interval == 0)):
        now, tokens = time.perf_counter(), state.trained_tokens
        since, since_tokens = run.throughput_since
        speed = (tokens - since_tokens) / max(now - since, 1e-9)
        run.throughput_since = (now, tokens)
        run.emit({"type": "metrics", "data": {**state.metrics, "trained_tokens": tokens,
                                              "tokens_per_second": round(speed, 1)}})


def maybe_checkpoint(run: Run, state: TrainState, at_eval: bool) -> None:
    """A checkpoint at every evaluation step, and every checkpoint_interval_steps."""
    interval = run.cfg.checkpoint_interval_steps
    if at_eval or (interval and state.step % interval == 0):
        checkpoint(run, state)


def finish_pending(run: Run) -> None:
    """Put a checkpoint written in the background into place (every rank), then prune and announce it."""
    if run.pending is None:
        return
    pending, step, metrics, keep = run.pending
    run.pending = None
    announce_checkpoint(run, pending.finish(), step, metrics, keep)


def announce_checkpoint(run: Run, path: Path, step: int, metrics: dict, keep: set) -> None:
    if run.ranks.main:
        ckpt.prune(run.checkpoints, keep)
    run.emit({"type": "checkpoint", "data": {"step": step, "path": str(path), "metrics": metrics}})


def checkpoint(run: Run, state: TrainState) -> Path:
    """Save the step (keeping only it and the best one) and announce it once it is in place: at once, or,
    written in the background (``dcp.async_save``, the default), at the next step."""
    finish_pending(run)
    # an adapter method's checkpoints carry their adapter, so each can be served as a model (full weights: not)
    export = None if run.method.ADAPTER_TYPE == "full" else (
        lambda d, weights: run.method.save(run.model, d, tokenizer=run.tokenizer,
                                           state_dict=weights if run.ranks.distributed else None))
    saved = ckpt.save_checkpoint(run.checkpoints, run.model, run.optimizer,
                                 {**asdict(state), "last_saved_step": state.step}, run.info, export=export,
                                 ranks=run.ranks, asynchronous=ckpt.async_default())
    state.last_saved_step = state.step
    keep = {state.step, state.best_step}
    if isinstance(saved, ckpt.PendingCheckpoint):
        run.pending = (saved, state.step, dict(state.metrics or {}), keep)
        return saved.path
    announce_checkpoint(run, saved, state.step, state.metrics, keep)
    return saved


def announce_early_stop(run: Run, state: TrainState) -> None:
    threshold = run.cfg.early_stopping_threshold
    measure = ("validation exact match has not risen (nor, at equal exact match, validation loss fallen "
               f"by {threshold})" if run.exact_match else f"validation loss has not improved by {threshold}")
    run.say(f"early stopping at step {state.step} of {run.total_steps}: {measure} for {state.bad_evals} "
            f"evaluations; best step {state.best_step}", step=state.step, best_step=state.best_step,
            best_valid_loss=state.best_loss, best_valid_exact_match=state.best_metrics.get("valid_exact_match"))


def interrupt(run: Run, state: TrainState, request: str) -> TrainResult:
    """Pause (checkpoint this step unless it just was) or cancel (keep the latest checkpoint)."""
    finish_pending(run)
    if request == "pause" and state.last_saved_step != state.step:
        checkpoint(run, state)  # every rank: the request was agreed on
        finish_pending(run)
    path = ckpt.latest_checkpoint(run.out_dir)
    status = "paused" if request == "pause" else "cancelled"
    run.say(f"training {status} at step {state.step}", step=state.step)
    return result(run, state, status, None, path, state.metrics)


def finish(run: Run, state: TrainState) -> TrainResult:
    """The result: the best evaluated weights when validated, else the last ones, saved by the method."""
    finish_pending(run)
    if state.best_step is not None and state.best_step != state.step:
        best_dir = run.checkpoints / f"{ckpt.PREFIX}{state.best_step:06d}"
        if run.ranks.distributed:
            ckpt.load_sharded(best_dir, run.model)
        else:
            ckpt.load_trainable_state(run.model, ckpt.load_checkpoint(best_dir)["weights"])
    model_dir = run.out_dir / "model"
    if run.ranks.distributed:  # gathered on every rank (a collective), saved by rank 0 in today's format
        whole = (dist_.full_model_state_dict(run.model) if run.cfg.training_method == "vanilla"
                 else dist_.full_state(run.model, {n for n, p in run.model.named_parameters() if p.requires_grad}))
        if run.ranks.main:
            with ckpt.atomic_dir(model_dir) as tmp:
                run.method.save(run.model, tmp, tokenizer=run.tokenizer, state_dict=whole)
                (tmp / "run_info.json").write_text(json.dumps(run.info, indent=1))
        run.ranks.barrier()
    else:
        with ckpt.atomic_dir(model_dir) as tmp:
            run.method.save(run.model, tmp, tokenizer=run.tokenizer)
            (tmp / "run_info.json").write_text(json.dumps(run.info, indent=1))
    run.say(f"training finished in {time.time() - run.started:.1f}s", steps=state.step, best_step=state.best_step,
            trained_tokens=state.trained_tokens, model_dir=str(model_dir))
    return result(run, state, "succeeded", model_dir, ckpt.latest_checkpoint(run.out_dir),
                  state.best_metrics or state.metrics)


def result(run: Run, state: TrainState, status: str, model_dir: Path | None, checkpoint_dir: Path | None,
           metrics: dict) -> TrainResult:
    return TrainResult(status, model_dir, checkpoint_dir, state.step, run.total_steps, state.best_step,
                       state.trained_tokens, metrics, run.trainable, run.total, run.info)
