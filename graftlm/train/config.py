"""Fine-tuning hyperparameters: one pydantic model, OCI names, OpenAI/Databricks aliases.

Two sets of defaults, chosen by ``defaults``:

- ``"auto"`` (the default): LoRA r 16, alpha 2r, dropout 0.05, warmup 10%; epochs, batch size and
  learning rate are left ``None`` here and chosen at training time from the dataset and the model
  (``graftlm.train.auto``), unless given.
- ``"oci"``: OCI's documented values (3 epochs, batch 8, T-Few 0.01 / LoRA 2e-4 / vanilla 1e-5,
  LoRA r 8, alpha 8, dropout 0.1, warmup 3%), all resolved here.

Explicit values always win. Early-stopping defaults are method-specific in both. What is method-specific
(learning rates, the fields a method reads and their defaults, early stopping) is declared by the method's own
module in graftlm.train.methods; the tables here are built from them. Aliases
(``n_epochs``, ``batch_size``, ``learning_rate_multiplier``, ``training_duration``, ``method``,
``max_seq_length``) are mapped onto the OCI names and kept as given, so a job records what the user
asked for. A field that belongs to another method is refused, naming the method it belongs to.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from graftlm.errors import GraftError
from graftlm.train.methods import METHODS, get_method, method_fields
from graftlm.train.methods.lora import LLAMA_LINEAR_MODULES

Method = Literal[METHODS]
TaskType = Literal["CHAT_COMPLETION", "CONTINUED_PRETRAIN"]

Defaults = Literal["auto", "oci"]

OCI_GENERAL_DEFAULTS = {"total_training_epochs": 3, "training_batch_size": 8, "warmup_ratio": 0.03}
AUTO_GENERAL_DEFAULTS = {"warmup_ratio": 0.1}  # epochs, batch size, learning rate: graftlm.train.auto
AUTO_MAX_LR_SCALE = 2.0  # the auto learning rate is at most 2x the method's auto base (graftlm.train.auto)
# per-method tables, from each method's module
DEFAULT_LEARNING_RATE = {m: get_method(m).OCI_LEARNING_RATE for m in METHODS}  # OCI's
AUTO_BASE_LEARNING_RATE = {m: get_method(m).AUTO_BASE_LEARNING_RATE for m in METHODS}  # see graftlm.train.auto
METHOD_FIELDS = method_fields()  # hyperparameters only some methods read
DEFAULT_PATIENCE = {m: get_method(m).EARLY_STOPPING_PATIENCE for m in METHODS}
DEFAULT_THRESHOLD = {m: get_method(m).EARLY_STOPPING_THRESHOLD for m in METHODS}
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every linear layer of the decoder (not the LM head)

_DURATION = re.compile(r"^\s*(\d+)\s*(ep|ba)\s*$")

Strategy = Literal["auto", "none", "ddp", "fsdp"]
Sharding = Literal["full", "grad_op", "none"]
ZERO_STAGES = {"ddp": "ZeRO-0 (replicated weights, gradients and optimizer state; gradients all-reduced)",
               "grad_op": "ZeRO-2 (gradients and optimizer state sharded; weights gathered for the step)",
               "full": "ZeRO-3 (weights, gradients and optimizer state sharded; weights gathered per layer)",
               "cpu_offload": "ZeRO-Offload / ZeRO-Infinity's CPU offload (sharded weights, gradients and "
                              "optimizer state live in CPU memory)"}


class DistributedConfig(BaseModel):
    """How one job spreads over its ranks (the units of its FINE_TUNING cluster). DeepSpeed's words:
    ``ddp`` = ZeRO-0, ``fsdp`` + ``sharding: grad_op`` = ZeRO-2, ``fsdp`` + ``sharding: full`` = ZeRO-3,
    ``cpu_offload`` = ZeRO-Offload."""
    model_config = ConfigDict(extra="forbid")

    world_size: int | None = Field(None, ge=1, description="ranks (processes) of the job; None: the cluster's "
                                   "unit_count (1 without a named cluster)")
    strategy: Strategy = Field("auto", description="auto: none at 1 rank, else ddp for adapters (lora, tfew) "
                               "and fsdp for vanilla; none: one process; ddp: replicated (ZeRO-0); fsdp: FSDP2 "
                               "fully_shard per decoder layer and the root")
    sharding: Sharding = Field("full", description="fsdp: full (ZeRO-3, reshard after forward) or grad_op "
                               "(ZeRO-2, weights stay gathered from forward to backward); none = replicate, "
                               "i.e. strategy ddp")
    cpu_offload: bool = Field(False, description="fsdp: keep sharded weights, gradients and optimizer state "
                              "in CPU memory (FSDP2 CPUOffloadPolicy, ZeRO-Offload)")
    mixed_precision: bool = Field(False, description="fsdp: bf16 weights and compute, fp32 gradient reduction "
                                  "(FSDP2 MixedPrecisionPolicy)")
    timeout_seconds: int = Field(600, ge=10, le=86400, description="a collective that waits longer fails the "
                                 "job naming the rank (a hung or dead rank)")

    @model_validator(mode="after")
    def _check(self):
        if self.strategy == "fsdp" and self.sharding == "none":
            raise _field_error("sharding", "none with strategy fsdp: replicated weights are strategy "
                               "ddp (ZeRO-0); use full (ZeRO-3) or grad_op (ZeRO-2)")
        if self.strategy == "none" and (self.world_size or 1) > 1:
            raise _field_error("strategy", f"none runs one process, but world_size is {self.world_size}")
        for name in ("cpu_offload", "mixed_precision"):
            if getattr(self, name) and self.strategy in ("none", "ddp"):
                raise _field_error(name, f"applies to strategy fsdp, not {self.strategy}")
        return self

    def resolve(self, method: str, world_size: int) -> str:
        """The strategy a run of ``world_size`` ranks uses (auto resolved); GraftError naming the field."""
        strategy = self.strategy
        if strategy == "auto":
            strategy = ("none" if world_size == 1 else "fsdp" if method == "vanilla" and self.sharding != "none"
                        else "ddp")
        where = f"world size {world_size}"
        if strategy == "fsdp" and world_size == 1:
            raise GraftError(f"invalid hyperparameter distributed.strategy: fsdp shards over ranks and this job "
                             f"has one ({where}); run it on a FINE_TUNING cluster of 2 or more units or set "
                             "distributed.world_size", param="distributed.strategy", code="invalid_hyperparameter")
        if strategy == "none" and world_size > 1:
            raise GraftError(f"invalid hyperparameter distributed.strategy: none runs one process, but the job "
                             f"has {where}", param="distributed.strategy", code="invalid_hyperparameter")
        if strategy == "fsdp" and method == "qlora":
            raise GraftError("invalid hyperparameter distributed.strategy: qlora with fsdp (4-bit base weights "
                             "sharded, the fsdp_qlora route) is not supported yet; use strategy ddp",
                             param="distributed.strategy", code="invalid_hyperparameter")
        if strategy != "fsdp":
            for name in ("cpu_offload", "mixed_precision"):
                if getattr(self, name):
                    raise GraftError(f"invalid hyperparameter distributed.{name}: it applies to strategy fsdp, "
                                     f"and this job runs {strategy} ({where})", param=f"distributed.{name}",
                                     code="invalid_hyperparameter")
        return strategy


class FineTuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_default=True)

    training_method: Method = Field("lora", validation_alias=AliasChoices("training_method", "method"))
    defaults: Defaults = Field("auto", description='"auto": chosen from the data and model at training time; '
                               '"oci": OCI\'s documented defaults')
    task_type: TaskType = "CHAT_COMPLETION"
    total_training_epochs: int | None = Field(None, ge=1, description="passes over the training split; None: default")
    learning_rate: float | None = Field(None, gt=0, le=1, description="None: the method's default")
    training_batch_size: int | None = Field(None, ge=1, description="examples per optimizer step; None: default")
    early_stopping_patience: int | None = Field(None, ge=0, description="evaluations without improvement; 0 disables")
    early_stopping_threshold: float | None = Field(None, ge=0, description="minimum decrease of validation loss")
    log_model_metrics_interval_in_steps: int = Field(10, ge=0, description="every step up to 20, then every N; 0 disables")
    lora_r: int | None = Field(None, ge=1, description="LoRA rank; None: 16 (auto) or 8 (oci)")
    lora_alpha: int | None = Field(None, ge=1, description="None: 2 x lora_r (auto) or 8 (oci)")
    lora_dropout: float | None = Field(None, ge=0, lt=1, description="None: 0.05 (auto) or 0.1 (oci)")
    lora_target_modules: list[str] | None = Field(None, description="None: every linear layer of the decoder")
    num_of_last_layers: int | None = Field(None, ge=1, description="vanilla: train only the last N decoder layers; None = all")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides total_training_epochs")
    eval_interval_steps: int | None = Field(None, ge=1, description="None: evaluate at the end of every epoch")
    checkpoint_interval_steps: int | None = Field(None, ge=1, description="extra checkpoints between evaluations")
    seed: int = 42
    context_length: int = Field(2048, ge=8, validation_alias=AliasChoices("context_length", "max_seq_length"))
    gradient_checkpointing: bool = False
    micro_batch_size: int | None = Field(None, ge=1, description="max examples per forward pass; None = token budget only")
    max_tokens_per_micro_batch: int = Field(2048, ge=8, description="token budget of one packed forward pass")
    warmup_ratio: float | None = Field(None, ge=0, le=1, description="None: 0.1 (auto) or 0.03 (oci)")
    lr_scheduler: Literal["cosine", "linear"] = "cosine"
    weight_decay: float = Field(0.0, ge=0)
    objective: Literal["supervised", "dpo"] = Field(
        "supervised", description='"dpo": Direct Preference Optimization on preference pairs (OpenAI\'s method '
        'type "dpo"); the reference model is the policy before its first step (the base with the adapter '
        'disabled, or the parent custom model)')
    parent_model: str | None = Field(None, description="set by the job service when the job's model is a custom "
                                     "model (ft:...): training starts from its adapter")
    dpo_beta: float | None = Field(None, gt=0, le=10, description="DPO: how far the policy may move from the "
                                   "reference (OpenAI's beta); None: 0.1")
    label_set_losses: bool = Field(False, description="T-Few's unlikelihood and length-normalised losses (Liu et al. "
                                   "2022) over the other labels, for data whose answers come from a small label set")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig,
                                           description="ranks, DDP / FSDP2 (ZeRO stages), CPU offload")

    # aliases from other APIs, mapped onto the fields above
    n_epochs: int | Literal["auto"] | None = Field(None, description="OpenAI alias of total_training_epochs")
    batch_size: int | Literal["auto"] | None = Field(None, description="OpenAI alias of training_batch_size")
    learning_rate_multiplier: float | Literal["auto"] | None = Field(
        None, description="OpenAI: scales the method's default learning rate")
    training_duration: str | None = Field(None, description='Databricks: "3ep" (epochs) or "100ba" (batches)')

    @field_validator("n_epochs", "batch_size")
    @classmethod
    def _positive_or_auto(cls, v):
        if isinstance(v, int) and v < 1:
            raise ValueError("must be an integer >= 1 or \"auto\"")
        return v

    @field_validator("learning_rate_multiplier")
    @classmethod
    def _positive_multiplier(cls, v):
        if isinstance(v, float) and v <= 0:
            raise ValueError("must be > 0 or \"auto\"")
        return v

    @field_validator("training_duration")
    @classmethod
    def _duration(cls, v):
        if v is not None and not _DURATION.match(v):
            raise ValueError('must look like "3ep" (epochs) or "100ba" (batches)')
        return v

    @field_validator("lora_target_modules", mode="before")
    @classmethod
    def _expand_all_linear(cls, v):
        if v == ALL_LINEAR or v == [ALL_LINEAR]:
            return list(LLAMA_LINEAR_MODULES)
        return v

    @field_validator("lora_target_modules")
    @classmethod
    def _targets(cls, v):
        if v is None:
            return v
        if not v:
            raise ValueError("name at least one module")
        unknown = [m for m in v if m not in LLAMA_LINEAR_MODULES]
        if unknown:
            raise ValueError(f"unknown module {unknown[0]!r}; choose from {', '.join(LLAMA_LINEAR_MODULES)} "
                             f"or \"{ALL_LINEAR}\"")
        return v

    @model_validator(mode="after")
    def _resolve(self):
        method = self.training_method
        if isinstance(self.n_epochs, int):
            self.total_training_epochs = self.n_epochs
        if isinstance(self.batch_size, int):
            self.training_batch_size = self.batch_size
        if self.training_duration is not None:
            n, unit = _DURATION.match(self.training_duration).groups()
            if int(n) < 1:
                raise _field_error("training_duration", "must be at least 1")
            if unit == "ep":
                self.total_training_epochs = int(n)
            else:
                self.max_steps = int(n)
        if self.learning_rate_multiplier not in (None, "auto"):
            if self.learning_rate is not None:
                raise _field_error("learning_rate_multiplier", "give learning_rate or learning_rate_multiplier, not both")
            if self.defaults == "oci":
                lr = DEFAULT_LEARNING_RATE[method] * self.learning_rate_multiplier
                if lr > 1:
                    raise _field_error("learning_rate_multiplier", f"gives a learning rate of {lr:g}, above 1")
                self.learning_rate = lr
            else:  # scales the auto learning rate, chosen at training time
                lr = AUTO_BASE_LEARNING_RATE[method] * AUTO_MAX_LR_SCALE * self.learning_rate_multiplier
                if lr > 1:
                    raise _field_error("learning_rate_multiplier", f"can give a learning rate of {lr:g}, above 1")
        if self.objective == "dpo":
            if self.task_type != "CHAT_COMPLETION" or self.label_set_losses:
                raise _field_error("objective", "dpo trains chat preference pairs (task_type CHAT_COMPLETION, "
                                   "no label_set_losses)")
            self.dpo_beta = 0.1 if self.dpo_beta is None else self.dpo_beta
        elif self.dpo_beta is not None:
            raise _field_error("dpo_beta", 'applies to objective "dpo" only')
        if self.label_set_losses and self.task_type != "CHAT_COMPLETION":
            raise _field_error("label_set_losses", "needs task_type CHAT_COMPLETION (answers from a label set)")
        m = get_method(method)
        defaults = ({**OCI_GENERAL_DEFAULTS, **m.OCI_DEFAULTS} if self.defaults == "oci"
                    else {**AUTO_GENERAL_DEFAULTS, **m.AUTO_DEFAULTS})
        if self.defaults == "oci" and self.learning_rate is None:
            self.learning_rate = DEFAULT_LEARNING_RATE[method]
        for name, value in defaults.items():  # a field another method reads stays None (and unstored)
            if getattr(self, name) is None:
                setattr(self, name, value)
        m.fill_defaults(self)
        if self.early_stopping_patience is None:
            self.early_stopping_patience = DEFAULT_PATIENCE[method]
        if self.early_stopping_threshold is None:
            self.early_stopping_threshold = DEFAULT_THRESHOLD[method]
        return self


    def strategy_for(self, world_size: int) -> str:
        """The distributed strategy at ``world_size`` ranks (auto resolved); GraftError naming the field."""
        if world_size > 1 and self.label_set_losses:
            raise GraftError(f"invalid hyperparameter label_set_losses: it trains in one process, and this job "
                             f"has {world_size} ranks; set distributed.world_size 1 or leave label_set_losses out",
                             param="label_set_losses", code="invalid_hyperparameter")
        if world_size > 1 and self.objective == "dpo":
            raise GraftError(f"invalid hyperparameter objective: dpo trains in one process, and this job has "
                             f"{world_size} ranks; set distributed.world_size 1", param="objective",
                             code="invalid_hyperparameter")
        return self.distributed.resolve(self.training_method, world_size)

    @property
    def resolved(self) -> bool:
        """Whether epochs, batch size and learning rate are all known (auto resolves them at training time)."""
        return None not in (self.total_training_epochs, self.training_batch_size, self.learning_rate)


def oci_defaults(method: str) -> dict:
    """Every value ``defaults: "oci"`` gives a job of ``method`` (the console shows them)."""
    m = get_method(method)
    return {**OCI_GENERAL_DEFAULTS, **m.OCI_DEFAULTS, "learning_rate": m.OCI_LEARNING_RATE,
            "early_stopping_patience": m.EARLY_STOPPING_PATIENCE,
            "early_stopping_threshold": m.EARLY_STOPPING_THRESHOLD}


def check_method_fields(data: dict) -> None:
    """A hyperparameter another method reads is refused: it would silently do nothing."""
    method = data.get("training_method", data.get("method", "lora"))
    for name, methods in METHOD_FIELDS.items():
        if data.get(name) is not None and method not in methods:
            hint = " or ".join(f'"{m}"' for m in methods)
            raise GraftError(f"invalid hyperparameter {name}: it applies to training_method {hint}, not "
                             f'"{method}"; did you mean training_method {hint}, or to leave {name} out?',
                             param=name, code="invalid_hyperparameter")


def _field_error(field: str, message: str) -> ValidationError:
    from pydantic_core import InitErrorDetails, PydanticCustomError
    return ValidationError.from_exception_data("FineTuneConfig", [InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=(field,), input=None)])


def graft_error(exc: ValidationError) -> GraftError:
    """The first validation problem as a GraftError whose param names the field."""
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or None
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden" and field:
        nested = len(err["loc"]) == 2 and err["loc"][0] == "distributed"
        names = DistributedConfig.model_fields if nested else FineTuneConfig.model_fields
        close = difflib.get_close_matches(str(err["loc"][-1]), names, n=1, cutoff=0.6)
        msg = "unknown hyperparameter" + (f"; did you mean {'distributed.' if nested else ''}{close[0]}?"
                                          if close else "")
    return GraftError(f"invalid hyperparameter {field}: {msg}", param=field, code="invalid_hyperparameter")


def parse_config(data: dict | FineTuneConfig | None = None, **overrides) -> FineTuneConfig:
    """Validate user hyperparameters; raises GraftError(param=field) on the first bad one."""
    if isinstance(data, FineTuneConfig):
        data = data.model_dump(exclude_unset=True)
    data = {**(data or {}), **overrides}
    if data.get("training_method", data.get("method", "lora")) in METHODS:
        check_method_fields(data)  # an unknown method is reported by validation instead
    try:
        return FineTuneConfig.model_validate(data)
    except ValidationError as exc:
        raise graft_error(exc) from None


def check_runtime(cfg: FineTuneConfig) -> None:
    """Refuse what this machine cannot run, before a job is queued (the method's own check)."""
    get_method(cfg.training_method).check_runtime()
