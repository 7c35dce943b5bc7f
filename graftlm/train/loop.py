"""The training loop: one function, read top to bottom.

    tokenize -> load base model -> method.prepare -> for each optimizer step:
        packed micro-batches -> loss on target positions only -> backward (accumulate) -> AdamW
        -> log metrics -> evaluate / early-stop / checkpoint -> obey pause or cancel
    -> best weights -> method.save

Events (``on_event`` receives plain dicts):
    {"type": "message", "level": "info", "message": str, "data": {...}}
    {"type": "metrics", "data": {"step", "train_loss", "train_mean_token_accuracy",
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from graftlm.data.render import encode_example
from graftlm.device import device as default_device, training_dtype
from graftlm.errors import GraftError
from graftlm.train import auto as auto_hp
from graftlm.train import checkpoint as ckpt
from graftlm.train.batching import IGNORE_INDEX, micro_batches, step_examples, steps_per_epoch, target_count
from graftlm.train.config import FineTuneConfig, check_runtime, parse_config
from graftlm.train.methods import count_parameters, get_method

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
def evaluate(model, examples: list[dict], cfg: FineTuneConfig, device, dtype, exact_match: bool = False) -> dict:
    """Validation loss and token accuracy (OCI's), and valid_exact_match when asked for."""
    model.eval()
    loss_sum = correct = exact = 0.0
    n = sum(target_count(e) for e in examples)
    for batch in micro_batches(examples, cfg.max_tokens_per_micro_batch, cfg.micro_batch_size):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            logits, labels, rows = target_logits(model, batch, device)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        hits = logits.argmax(-1) == labels
        correct += hits.sum().item()
        # one example per row: a row is an exact match when none of its targets is missed
        misses = torch.zeros(batch["input_ids"].shape[0], dtype=torch.long, device=hits.device)
        misses.index_add_(0, rows, (~hits).long())
        has_targets = torch.zeros_like(misses).index_add_(0, rows, torch.ones_like(rows))
        exact += ((misses == 0) & (has_targets > 0)).sum().item()
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


def run_info(cfg: FineTuneConfig, device, dtype, base_model_path) -> dict:
    import peft
    import transformers

    import graftlm
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "graftlm": getattr(graftlm, "__version__", "unknown"), "python": platform.python_version(),
            "device": str(device), "autocast_dtype": str(dtype).removeprefix("torch."),
            "torch_threads": torch.get_num_threads(), "seed": cfg.seed,
            "base_model_path": str(base_model_path), "config": cfg.model_dump(mode="json")}


def train(cfg: FineTuneConfig | dict, base_model_path, train_examples: list[dict],
          valid_examples: list[dict] | None, out_dir, on_event: Callable[[dict], None] | None = None,
          should_stop: Callable[[], str | None] | None = None, resume_from=None) -> TrainResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = cfg if isinstance(cfg, FineTuneConfig) else parse_config(cfg)
    check_runtime(cfg)
    emit = on_event or (lambda event: None)
    say = lambda message, **data: emit({"type": "message", "level": "info", "message": message, "data": data})  # noqa: E731
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    device, started = default_device(), time.time()
    dtype = training_dtype(device)
    torch.manual_seed(cfg.seed)

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
    # auto: epochs, batch size, learning rate from the data and the model (deterministic, so a resumed run agrees)
    cfg, auto = auto_hp.resolve(cfg, auto_hp.dataset_stats(train_set), model.config.hidden_size)
    per_epoch = steps_per_epoch(len(train_set), cfg.training_batch_size)
    total_steps = cfg.max_steps or cfg.total_training_epochs * per_epoch
    exact_match = reports_exact_match(valid_set, cfg)
    if cfg.gradient_checkpointing:
        causal_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = count_parameters(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    info = run_info(cfg, device, dtype, base_model_path)
    if auto:
        info["auto"] = auto
    state = {"step": 0, "epoch": 0, "best_loss": None, "best_step": None, "bad_evals": 0,
             "trained_tokens": 0, "metrics": {}, "best_metrics": {}, "last_saved_step": None}
    if resume_from is not None:
        saved = ckpt.load_checkpoint(resume_from)
        ckpt.load_trainable_state(model, saved["weights"])
        optimizer.load_state_dict(saved["optimizer"])
        state.update(saved["state"])
        ckpt.set_rng_state(saved["rng"])
        say(f"resumed from step {state['step']}", step=state["step"], path=str(resume_from), total_steps=total_steps)
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "run_info.json").write_text(json.dumps(info, indent=1))
        if auto.get("picks"):
            say(auto_hp.describe(auto), auto_hyperparameters=auto)
        say(f"training started: {cfg.training_method}, {len(train_set)} examples, {total_steps} steps",
            train_examples=len(train_set), valid_examples=len(valid_set), total_steps=total_steps,
            steps_per_epoch=per_epoch, device=str(device), dtype=info["autocast_dtype"])
    say(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)",
        trainable_params=trainable, total_params=total, trainable_share=trainable / total)

    def checkpoint() -> Path:
        path = ckpt.save_checkpoint(ckpt_root, model, optimizer, {**state, "last_saved_step": state["step"]}, info)
        state["last_saved_step"] = state["step"]
        ckpt.prune(ckpt_root, {state["step"], state["best_step"]})
        emit({"type": "checkpoint", "data": {"step": state["step"], "path": str(path), "metrics": state["metrics"]}})
        return path

    stop_reason = None
    throughput_since = (time.perf_counter(), state["trained_tokens"])  # for tokens/s between metric events
    while state["step"] < total_steps:
        step = state["step"] + 1
        epoch, indices = step_examples(len(train_set), cfg.training_batch_size, cfg.seed, step - 1)
        if (step - 1) % per_epoch == 0:
            say(f"epoch {epoch + 1} started", epoch=epoch + 1, step=step)

        # one optimizer step: accumulate over packed micro-batches; loss = mean CE over the step's targets
        model.train()
        lr = learning_rate_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        examples = [train_set[i] for i in indices]
        n_targets = sum(target_count(e) for e in examples)
        loss_sum = correct = 0.0
        for batch in micro_batches(examples, cfg.max_tokens_per_micro_batch, cfg.micro_batch_size):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                s, c = target_loss(model, batch, device)
            (s / n_targets).backward()
            loss_sum += s.item()
            correct += c.item()
            state["trained_tokens"] += batch["n_tokens"]
        torch.nn.utils.clip_grad_norm_([p for _, p in params], MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"], state["epoch"] = step, epoch
        metrics = {"step": step, "train_loss": loss_sum / n_targets, "train_mean_token_accuracy": correct / n_targets}

        # evaluation, early stopping and checkpoints
        end_of_epoch = step % per_epoch == 0
        at_eval = step == total_steps or (step % cfg.eval_interval_steps == 0 if cfg.eval_interval_steps else end_of_epoch)
        if at_eval and valid_set:
            metrics.update(evaluate(model, valid_set, cfg, device, dtype, exact_match))
            if improves(metrics, state["best_metrics"] if state["best_step"] is not None else None,
                        cfg.early_stopping_threshold):
                state.update(best_loss=metrics["valid_loss"], best_step=step, bad_evals=0, best_metrics=metrics)
            else:
                state["bad_evals"] += 1
            if (cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience
                    and step < total_steps):  # at the last step training simply finishes
                stop_reason = "early_stop"
        state["metrics"] = metrics
        interval = cfg.log_model_metrics_interval_in_steps
        if (at_eval and valid_set) or (interval and (step <= 20 or step % interval == 0)):
            now, tokens = time.perf_counter(), state["trained_tokens"]
            speed = (tokens - throughput_since[1]) / max(now - throughput_since[0], 1e-9)
            throughput_since = (now, tokens)
            emit({"type": "metrics", "data": {**metrics, "trained_tokens": tokens, "tokens_per_second": round(speed, 1)}})
        if at_eval or (cfg.checkpoint_interval_steps and step % cfg.checkpoint_interval_steps == 0):
            checkpoint()
        if stop_reason == "early_stop":
            measure = ("validation exact match has not risen (nor, at equal exact match, validation loss fallen "
                       f"by {cfg.early_stopping_threshold})" if exact_match else
                       f"validation loss has not improved by {cfg.early_stopping_threshold}")
            say(f"early stopping at step {step} of {total_steps}: {measure} for {state['bad_evals']} evaluations; "
                f"best step {state['best_step']}", step=step, best_step=state["best_step"],
                best_valid_loss=state["best_loss"],
                best_valid_exact_match=state["best_metrics"].get("valid_exact_match"))
            break
        request = should_stop() if should_stop else None
        if request in ("pause", "cancel"):
            path = checkpoint() if request == "pause" and state["last_saved_step"] != step else ckpt.latest_checkpoint(out_dir)
            say(f"training {'paused' if request == 'pause' else 'cancelled'} at step {step}", step=step)
            return TrainResult("paused" if request == "pause" else "cancelled", None, path, step, total_steps,
                               state["best_step"], state["trained_tokens"], metrics, trainable, total, info)

    # the result: the best evaluated weights when validated, else the last ones
    if state["best_step"] is not None and state["best_step"] != state["step"]:
        best_dir = ckpt_root / f"{ckpt.PREFIX}{state['best_step']:06d}"
        ckpt.load_trainable_state(model, ckpt.load_checkpoint(best_dir)["weights"])
    model_dir = out_dir / "model"
    with ckpt.atomic_dir(model_dir) as tmp:
        method.save(model, tmp, tokenizer=tokenizer)
        (tmp / "run_info.json").write_text(json.dumps(info, indent=1))
    result_metrics = state["best_metrics"] or state["metrics"]
    say(f"training finished in {time.time() - started:.1f}s", steps=state["step"], best_step=state["best_step"],
        trained_tokens=state["trained_tokens"], model_dir=str(model_dir))
    return TrainResult("succeeded", model_dir, ckpt.latest_checkpoint(out_dir), state["step"], total_steps,
                       state["best_step"], state["trained_tokens"], result_metrics, trainable, total, info)
