"""Turn a GGUF file into a plain safetensors Hugging Face model directory (done once per pull)."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open


def gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize GGUF weights with transformers' loader and save safetensors + tokenizer + template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # The weights are plain fp32 now: drop the quantizer so the saved model reloads as a normal one.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def describe_model_dir(path: Path) -> dict:
    """Family, parameter count and context length read from config.json and safetensors headers."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(f"{path} has no config.json: not a Hugging Face model directory")
    config = json.loads(config_file.read_text())
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"{path} has no *.safetensors weights")
    params = 0
    for w in weights:
        with safe_open(str(w), framework="pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                params += n
    return {
        "family": config.get("model_type", "unknown"),
        "architectures": config.get("architectures", []),
        "parameter_count": params,
        "context_length": config.get("max_position_embeddings"),
        "tie_word_embeddings": config.get("tie_word_embeddings", False),
    }
