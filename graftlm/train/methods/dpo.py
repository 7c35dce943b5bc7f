"""The DPO objective (Rafailov et al. 2023) for the training loop: ``objective: "dpo"`` with any adapter method.

Each example is a preference pair: the prompt with its preferred answer (``chosen``) and its non-preferred one
(``rejected``). The reference model is the same weights with the adapter disabled (LoRA, QLoRA, T-Few), or for
vanilla (every weight trains) the base model itself before its first step, or for a job that continues a custom
model that model (its adapter, loaded before the first step); its summed log-probabilities of both
answers are computed once per example before training (and cached in the run directory, so a resumed run reads
them back). No frozen copy of the model is kept, so vanilla DPO needs the memory of vanilla SFT (two rows per
pair), not two models. A step's loss is the mean over its pairs of

    -log sigmoid(beta * ((log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected))))

and the metrics are the loss, ``reward_margin`` (the mean of beta * that difference: chosen reward minus rejected
reward), ``reward_accuracy`` (the share of pairs whose chosen reward is higher; a tie, as at the start, counts
half, so an untrained policy scores 0.5), ``logps_margin`` (the policy's
mean log p(chosen) - log p(rejected)), and ``mean_token_accuracy`` on the chosen answers, for training
(``train_*``) and validation (``valid_*``; ``valid_loss`` picks the best checkpoint as for supervised runs).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from graftlm.data.render import encode_example
from graftlm.errors import GraftError
from graftlm.train.batching import pad_rows, target_count

CACHE = "dpo_reference.pt"


def encode_pairs(tokenizer, examples: list[dict], cfg) -> list[dict]:
    """``{"chosen", "rejected"}`` (each ``{"input_ids", "labels"}``) per preference example."""
    out = []
    for i, ex in enumerate(examples):
        if "rejected" not in ex:
            raise GraftError(f"objective dpo trains on preference pairs (OpenAI's DPO JSONL: input, preferred_output, "
                             f"non_preferred_output); example {i + 1} has no non-preferred output",
                             param="training_file", code="invalid_file")
        prompt = ex["messages"][:-1]
        chosen = encode_example(tokenizer, {"messages": ex["messages"]}, cfg.context_length)
        rejected = encode_example(tokenizer, {"messages": prompt + [
            {"role": "assistant", "content": ex["rejected"], "weight": 1}]}, cfg.context_length)
        if target_count(chosen) and target_count(rejected):  # an answer cut off by context_length is skipped
            out.append({"chosen": chosen, "rejected": rejected})
    return out


def chunks(pairs: list, max_tokens: int, max_pairs: int | None = None) -> list[list]:
    """Consecutive groups of pairs whose padded rows (2 per pair) fit the token budget (at least one pair)."""
    groups, current, longest = [], [], 0
    for p in pairs:
        n = max(len(p["chosen"]["input_ids"]), len(p["rejected"]["input_ids"]))
        full = 2 * (len(current) + 1) * max(longest, n) > max_tokens or (max_pairs and len(current) >= max_pairs)
        if current and full:
            groups.append(current)
            current, longest = [], 0
        current.append(p)
        longest = max(longest, n)
    if current:
        groups.append(current)
    return groups


def sequence_logps(model, seqs: list[dict], device, target_logits) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probability of each sequence's targets [rows], argmax hits per row [rows])."""
    batch = pad_rows(seqs)
    logits, labels, rows = target_logits(model, batch, device)
    token_logps = -F.cross_entropy(logits, labels, reduction="none")
    sums = torch.zeros(len(seqs), device=token_logps.device, dtype=token_logps.dtype).index_add(0, rows, token_logps)
    hits = torch.zeros(len(seqs), device=token_logps.device).index_add(
        0, rows, (logits.detach().argmax(-1) == labels).float())
    return sums, hits


@torch.no_grad()
def attach_reference(model, pairs: list[dict], cfg, device, dtype, target_logits, cache_dir: Path | None,
                     name: str, disable_adapter: bool = True) -> None:
    """Each pair gets ``ref`` = (log p_ref(chosen), log p_ref(rejected)) under the adapter-disabled model, or
    with ``disable_adapter`` False (a job continuing a custom model: its adapter is the reference) or no adapter
    (vanilla) the model as it is, which the loop guarantees is untrained (called before any step or resume);
    read from ``cache_dir`` when a previous run of the same data computed them."""
    path = cache_dir / f"{name}_{CACHE}" if cache_dir is not None else None
    if path is not None and path.exists():
        cached = torch.load(path)
        if cached.shape == (len(pairs), 2):
            for p, (c, r) in zip(pairs, cached.tolist()):
                p["ref"] = (c, r)
            return
    model.eval()
    values = []
    off = disable_adapter and hasattr(model, "disable_adapter")
    with model.disable_adapter() if off else contextlib.nullcontext():
        for group in chunks(pairs, cfg.max_tokens_per_micro_batch, cfg.micro_batch_size):
            seqs = [p["chosen"] for p in group] + [p["rejected"] for p in group]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logps, _ = sequence_logps(model, seqs, device, target_logits)
            k = len(group)
            values.extend(zip(logps[:k].float().tolist(), logps[k:].float().tolist()))
    for p, ref in zip(pairs, values):
        p["ref"] = ref
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torch.tensor(values, dtype=torch.float64).reshape(len(pairs), 2), path)


def pair_terms(model, group: list[dict], beta: float, device, target_logits) -> dict:
    """The DPO loss sum of a group of pairs and its metric sums (tensors; ``loss`` carries the graph)."""
    k = len(group)
    logps, hits = sequence_logps(model, [p["chosen"] for p in group] + [p["rejected"] for p in group], device,
                                 target_logits)
    ref = torch.tensor([p["ref"] for p in group], dtype=logps.dtype, device=logps.device)
    chosen_reward = beta * (logps[:k] - ref[:, 0])
    rejected_reward = beta * (logps[k:] - ref[:, 1])
    margin = chosen_reward - rejected_reward
    wins = (margin.detach() > 0).float() + 0.5 * (margin.detach() == 0).float()  # a tie (the start) counts half
    return {"loss": -F.logsigmoid(margin).sum(), "accuracy": wins.sum().item(),
            "margin": margin.detach().sum().item(), "logps": (logps[:k] - logps[k:]).detach().sum().item(),
            "hits": hits[:k].sum().item(), "targets": sum(target_count(p["chosen"]) for p in group),
            "tokens": sum(len(p["chosen"]["input_ids"]) + len(p["rejected"]["input_ids"]) for p in group)}


def metrics(prefix: str, total: dict, n: int) -> dict:
    return {f"{prefix}_loss": total["loss"] / n, f"{prefix}_mean_token_accuracy": total["hits"] / max(1, total["targets"]),
            f"{prefix}_reward_accuracy": total["accuracy"] / n, f"{prefix}_reward_margin": total["margin"] / n,
            f"{prefix}_logps_margin": total["logps"] / n}


def backward_step(model, pairs: list[dict], cfg, device, dtype, target_logits) -> tuple[dict, int]:
    """Accumulate the gradient of the mean DPO loss over ``pairs``; returns (train metrics, tokens fed)."""
    total = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "logps": 0.0, "hits": 0.0, "targets": 0}
    tokens = 0
    for group in chunks(pairs, cfg.max_tokens_per_micro_batch, cfg.micro_batch_size):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            t = pair_terms(model, group, cfg.dpo_beta, device, target_logits)
        (t["loss"] / len(pairs)).backward()
        total["loss"] += t["loss"].item()
        for key in ("accuracy", "margin", "logps", "hits", "targets"):
            total[key] += t[key]
        tokens += t["tokens"]
    return metrics("train", total, len(pairs)), tokens


@torch.no_grad()
def evaluate(model, pairs: list[dict], cfg, device, dtype, target_logits) -> dict:
    model.eval()
    total = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "logps": 0.0, "hits": 0.0, "targets": 0}
    for group in chunks(pairs, cfg.max_tokens_per_micro_batch, cfg.micro_batch_size):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            t = pair_terms(model, group, cfg.dpo_beta, device, target_logits)
        total["loss"] += t["loss"].item()
        for key in ("accuracy", "margin", "logps", "hits", "targets"):
            total[key] += t[key]
    return metrics("valid", total, max(1, len(pairs)))
