"""One module per fine-tuning method; each owns its facts and says which weights train and how they are saved.

Every method module declares

- ``ADAPTER_TYPE``: what the model registry records for its result (``lora`` | ``ia3`` | ``full``);
- ``FIELDS``: the hyperparameters only this method reads (another method's job that sets one is refused);
- ``OCI_DEFAULTS`` / ``AUTO_DEFAULTS``: its values of those fields under ``defaults: "oci"`` / ``"auto"``;
- ``OCI_LEARNING_RATE``, ``AUTO_BASE_LEARNING_RATE`` (see graftlm.train.auto), ``EARLY_STOPPING_PATIENCE``,
  ``EARLY_STOPPING_THRESHOLD``;

and the hooks ``fill_defaults(cfg)`` (derived defaults once the values are known), ``check_runtime()``
(refuse what this machine cannot run), ``load_kwargs(cfg) -> dict`` (extra ``from_pretrained`` arguments),
``prepare(model, cfg) -> model`` and ``save(model, out_dir, tokenizer=None)``. Adding a method is adding a
module here and its name to ``METHODS``. ``dpo.py`` is not a method but an objective (``objective: "dpo"``) that
trains any adapter method's weights on preference pairs in the same loop.
"""

from __future__ import annotations

from importlib import import_module

METHODS = ("tfew", "lora", "qlora", "vanilla")


def get_method(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown training method {name!r}")
    return import_module(f"graftlm.train.methods.{name}")


def method_fields() -> dict[str, tuple[str, ...]]:
    """{hyperparameter: the methods that read it} for the fields only some methods read."""
    out: dict[str, tuple[str, ...]] = {}
    for name in METHODS:
        for f in get_method(name).FIELDS:
            out[f] = out.get(f, ()) + (name,)
    return out


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters, shared tensors counted once."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 if p.__class__.__name__ == "Params4bit" else 1)  # 4-bit packs two values a byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def no_defaults_to_fill(cfg) -> None:
    """fill_defaults of a method whose fields have no derived defaults."""


def runs_anywhere() -> None:
    """check_runtime of a method that runs on CPU and CUDA."""


def no_load_kwargs(cfg) -> dict:
    """load_kwargs of a method that loads the base model as it is (fp32 master weights)."""
    return {}


def save_adapter(model, out_dir, tokenizer=None, state_dict=None) -> None:
    """PEFT format (adapter_config.json + adapter_model.safetensors), loadable by PeftModel.from_pretrained;
    ``state_dict``: the weights gathered from sharded ranks."""
    if state_dict is None:
        model.save_pretrained(str(out_dir), safe_serialization=True)
    else:
        model.save_pretrained(str(out_dir), safe_serialization=True, state_dict=state_dict)
