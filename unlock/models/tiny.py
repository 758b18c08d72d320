"""Tiny random models and an offline tokenizer.

Tests, CI and dry runs need real transformers models of several families with no network: these are
built in-process from transformers configs with a byte-level BPE tokenizer trained on a fixed corpus.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# A fixed corpus in the style of the prompts UNLOCK uses; only byte-level coverage matters.
_CORPUS_TEMPLATES = (
    "Question: What is {a} plus {b}?\nAnswer:",
    "Question: What is {a} times {b}?\nAnswer: Let's think step by step.",
    "Step 1: add {a} and {b}. Step 2: the result is {c}. The final answer is {c}.",
    "Q: A farmer has {a} apples and buys {b} more. How many apples does he have? A: {c}",
)


@functools.lru_cache(maxsize=1)
def _tokenizer_json(vocab_size: int) -> str:
    corpus = [
        template.format(a=a, b=b, c=a + b)
        for a in range(0, 40, 3)
        for b in range(0, 30, 7)
        for template in _CORPUS_TEMPLATES
    ]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return tokenizer.to_str()


def tiny_tokenizer(vocab_size: int = 384, padding_side: str = "left") -> PreTrainedTokenizerFast:
    """A deterministic byte-level BPE tokenizer that prepends <s>, built without any download."""
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vocab_size)),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side=padding_side,
    )
    return tokenizer


def _decoder(config_class: type, kv_heads: int, **extra: Any):
    """A Llama-shaped decoder family: its config from the shared sizes plus the family's own keys."""

    def make(hidden_size: int, num_layers: int, heads: int, common: dict[str, Any]):
        return config_class(
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=512,
            **{k: v(hidden_size, heads) if callable(v) else v for k, v in extra.items()},
            **common,
        )

    return make


# family -> its config from (hidden_size, num_layers, heads, common token ids); a new family is one row.
FAMILY_CONFIGS: dict[str, Any] = {
    "llama": _decoder(LlamaConfig, 2, tie_word_embeddings=False),
    "qwen2": _decoder(Qwen2Config, 2, tie_word_embeddings=True),
    "gemma3": _decoder(Gemma3TextConfig, 1, head_dim=lambda hidden, heads: hidden // heads, sliding_window=16),
    "gpt2": lambda hidden_size, num_layers, heads, common: GPT2Config(
        n_embd=hidden_size, n_layer=num_layers, n_head=heads, n_positions=512, **common
    ),
}
TINY_FAMILIES = tuple(FAMILY_CONFIGS)


def tiny_config(family: str, hidden_size: int = 64, num_layers: int = 4, vocab_size: int = 384, **overrides: Any):
    """A transformers config for a random model of the given family, small enough for CPU tests."""
    if family not in FAMILY_CONFIGS:
        raise ValueError(f"unknown tiny model family {family!r}; allowed: {', '.join(TINY_FAMILIES)}")
    common: dict[str, Any] = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = FAMILY_CONFIGS[family](hidden_size, num_layers, 4, common)
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(
    family: str = "llama", hidden_size: int = 64, num_layers: int = 4, seed: int = 0, **overrides: Any
) -> PreTrainedModel:
    """A randomly initialised causal LM, identical for the same arguments (seeded init, eval mode)."""
    config = tiny_config(family, hidden_size=hidden_size, num_layers=num_layers, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    model.generation_config.pad_token_id = config.pad_token_id
    return model
