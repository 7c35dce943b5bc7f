"""Tiny random Llama models with a real tokenizer and chat template, for tests and benchmarks.

Two decoder layers, hidden size 64, a byte-level BPE vocabulary of a few hundred tokens and the
same ChatML template family as SmolLM2, so every code path (chat rendering, EOS, GQA) is exercised
in seconds.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is my account balance please tell me",
    "book a flight to paris and a hotel in london",
    "hello how are you today i am fine thank you",
    "user assistant system question answer intent label",
    "transfer money between accounts and check the weather",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
] * 4


def build_tiny_tokenizer(vocab_size: int = 384):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>",
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_llama(path: str | Path, *, seed: int = 0, layers: int = 2, hidden: int = 64,
                     heads: int = 4, kv_heads: int = 2, max_positions: int = 512) -> Path:
    """Write a random tiny Llama model directory (config, safetensors, tokenizer) and return it."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                         num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def build_learnable_llama(path: str | Path, *, hidden: int = 64) -> Path:
    """A tiny random Llama whose frozen final norm is scaled up, so adapters alone can reach low loss."""
    import torch
    from transformers import AutoModelForCausalLM

    build_tiny_llama(path, hidden=hidden)
    model = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        model.model.norm.weight.mul_(8)
    model.save_pretrained(path)
    return Path(path)


def build_smollm_shaped_llama(path: str | Path, *, layers: int = 30, vocab_size: int | None = None) -> Path:
    """SmolLM2-135M's shape (hidden 576, 9 heads, 3 KV heads, FFN 1536) with random weights and the tiny test
    tokenizer, for benchmarks: ``layers`` deep (30 like the real model), ``vocab_size`` rows of embeddings
    (None: the tokenizer's; 49152 for the real model's LM-head cost; ids stay below the tokenizer's size)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=vocab_size or len(tok), hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=layers, num_attention_heads=9, num_key_value_heads=3,
                      max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return Path(path)
