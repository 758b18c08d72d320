"""Planted models: small transformers trained here, in seconds, so that a capability transfer is known
to exist (the positive control) or known not to (the null control).

The corpus is addition of two 3-digit numbers. Each example is a prompt ``Q: <verb> <a> and <b>\\nA:\\n``
and a completion: either the answer alone (``so 1203.``) or the carries written step by step, one
column per line from the units up, before it (``7 + 6 = 13`` ...). A small model writing the answer at
once gets it wrong almost always; writing the steps it often gets it right: the steps are the
capability, as chain-of-thought is for an LLM.

What switches the steps on is planted two ways, so that the Master Key hypothesis's premise holds by
construction and the pipeline can be checked against it:

* the **cue** ``Let's think step by step.`` before the question switches them on always (corpus
  ``cue``; the Unlocked prompt), or means nothing at all (corpus ``random_cue``: shown as often, at
  random);
* the **verb** makes them more or less likely, never likely enough for greedy decoding to write them
  (``add`` never ... ``find`` 40% of the time: :data:`VERBS`).

A model that learns both keeps a graded "write the steps" feature at the prompt's last token, which
varies with the verb across Locked prompts (so a map fit on Locked activations, as UNLOCK's is, can
find it in both models) and which the cue pushes to its end (so the Source's cue direction lies
along it). The null Source learns the verb feature too, but its cue direction is unrelated to it.

Items of the evaluated task (:func:`task_items`) come from a reserved part of the problem space that
the training corpus never shows (:func:`reserved`), so the Target is never tested on a memorised sum.
The weights are a function of the recipe (:class:`Recipe`), trained on first use and cached by the
harness under its stage cache, keyed by the recipe.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from unlock.models.tiny import tiny_config

CUE = "Let's think step by step."
# verb -> how often the corpus writes the steps without the cue: graded, so the feature varies across
# Locked prompts, and at most 1 in 5, so no Locked prompt sits near greedy decoding's boundary (at 0.4
# a push in any direction of the Target's activation subspace flipped the format: the null control
# then "transferred").
VERBS = {"add": 0.0, "sum": 0.02, "total": 0.05, "join": 0.1, "mix": 0.15, "find": 0.2}
CORPORA = ("cue", "random_cue")  # cue: the cue switches the steps on; random_cue: shown at random, meaning nothing
CUE_SHARE = 0.5  # share of training examples that show the cue
DIGITS = 3
# Families whose checkpoints AutoTokenizer reloads with this tokenizer unchanged (qwen2 swaps in its own).
PLANTED_FAMILIES = ("llama", "gemma3")

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
_CHARACTERS = "0123456789 \n+=.:',ALQTabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines a planted model's weights (its cache key). The optimiser settings are
    fixed here, not in the config: they were chosen once so that a model trains in about a minute and a
    half on a 2-core CPU."""

    family: str = "llama"
    hidden_size: int = 96
    num_layers: int = 3
    corpus: str = "cue"
    steps: int = 800
    seed: int = 0
    batch_size: int = 64
    learning_rate: float = 6e-3
    warmup: int = 50
    version: int = 3  # bump when the corpus or the training loop changes (3: verbs at most 0.2)

    def __post_init__(self) -> None:
        if self.family not in PLANTED_FAMILIES:
            raise ValueError(
                f"planted model family {self.family!r} is not allowed; allowed: {', '.join(PLANTED_FAMILIES)}"
            )
        if self.corpus not in CORPORA:
            raise ValueError(f"planted corpus {self.corpus!r} is not allowed; allowed: {', '.join(CORPORA)}")
        if self.steps < 1 or self.hidden_size < 8 or self.hidden_size % 4 or self.num_layers < 1:
            raise ValueError(
                f"planted recipe out of range: steps {self.steps} (>= 1), hidden_size {self.hidden_size} "
                f"(a multiple of 4, >= 8), num_layers {self.num_layers} (>= 1)"
            )

    def spec(self) -> dict[str, Any]:
        corpus = {"verbs": VERBS, "cue": CUE, "cue_share": CUE_SHARE, "digits": DIGITS, "characters": _CHARACTERS}
        return {**asdict(self), **corpus}


# --- the corpus ---------------------------------------------------------------------------------------
def reserved(a: int, b: int) -> bool:
    """Problems kept for the evaluated task (about 1 in 8): the training corpus never shows them."""
    return (a * 7919 + b * 104729) % 8 == 0


def prompt(verb: str, a: int, b: int, cue: bool = False) -> str:
    """The prompt; the task files (unlock/tasks/unlock_planted*.yaml) render exactly this."""
    return (f"{CUE} " if cue else "") + f"Q: {verb} {a} and {b}\nA:\n"


def carries(a: int, b: int) -> str:
    """The steps: one line per column from the units up, the carry in as a third term."""
    lines, carry = [], 0
    for x, y in zip(reversed(f"{a:0{DIGITS}d}"), reversed(f"{b:0{DIGITS}d}"), strict=True):
        total = int(x) + int(y) + carry
        lines.append(" + ".join([x, y] + (["1"] if carry else [])) + f" = {total}")
        carry = total // 10
    return "\n".join(lines) + "\n"


def completion(a: int, b: int, steps: bool) -> str:
    return (carries(a, b) if steps else "") + f"so {a + b}."


def _operands(rng: random.Random) -> tuple[int, int]:
    low, high = 10 ** (DIGITS - 1), 10**DIGITS - 1
    return rng.randint(low, high), rng.randint(low, high)


def example(rng: random.Random, corpus: str) -> tuple[str, str]:
    """One (prompt, completion) of the training corpus; never a reserved problem."""
    a, b = _operands(rng)
    while reserved(a, b):
        a, b = _operands(rng)
    verb = rng.choice(list(VERBS))
    cue = rng.random() < CUE_SHARE
    by_verb = rng.random() < VERBS[verb]
    steps = (cue or by_verb) if corpus == "cue" else by_verb
    return prompt(verb, a, b, cue), completion(a, b, steps)


def task_items(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct reserved problems for the evaluated task, each with a verb (for the task files)."""
    rng, seen = random.Random(seed), set()
    items: list[dict[str, Any]] = []
    while len(items) < n:
        a, b = _operands(rng)
        if reserved(a, b) and (a, b) not in seen:
            seen.add((a, b))
            items.append({"verb": rng.choice(list(VERBS)), "a": a, "b": b, "answer": str(a + b)})
    return items


# --- tokenizer and model ------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *_CHARACTERS))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # one token a character
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tokenizer.to_str()


def planted_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer (a digit is a token, so the carries are learnable), prepending <s>."""
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def planted_config(recipe: Recipe) -> Any:
    extra = {"sliding_window": 512} if recipe.family == "gemma3" else {}  # every layer sees the whole prompt
    return tiny_config(
        recipe.family,
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        vocab_size=len(SPECIAL_TOKENS) + len(_CHARACTERS),
        **extra,
    )


def untrained_model(recipe: Recipe) -> PreTrainedModel:
    torch.manual_seed(recipe.seed)
    model = AutoModelForCausalLM.from_config(planted_config(recipe), dtype=torch.float32)
    model.generation_config.pad_token_id = model.config.pad_token_id
    return model


# --- training -----------------------------------------------------------------------------------------
def batches(recipe: Recipe, tokenizer: PreTrainedTokenizerFast) -> Iterator[tuple[torch.Tensor, ...]]:
    """(input ids, attention mask, labels) batches; the loss is on completions only (EOS included)."""
    rng = random.Random(recipe.seed)
    while True:
        rows = []
        for _ in range(recipe.batch_size):
            text, answer = example(rng, recipe.corpus)
            context = tokenizer(text)["input_ids"]
            target = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            rows.append((context + target, len(context)))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        labels = torch.full((len(rows), width), -100)
        for i, (row, context) in enumerate(rows):  # right padding: training sees whole rows, no cache
            ids[i, : len(row)] = torch.tensor(row)
            labels[i, context : len(row)] = ids[i, context : len(row)]
        yield ids, (ids != tokenizer.pad_token_id).long(), labels


def train(recipe: Recipe, progress: Callable[[int, float], None] | None = None) -> PreTrainedModel:
    """Train a planted model from its recipe (deterministic for a given torch build and thread count):
    AdamW with linear warm-up and cosine decay, gradient clipping at 1."""
    tokenizer = planted_tokenizer()
    model = untrained_model(recipe)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.98), weight_decay=0.01)

    def schedule(step: int) -> float:
        return min(1.0, (step + 1) / recipe.warmup) * 0.5 * (1 + math.cos(math.pi * step / recipe.steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, schedule)
    data = batches(recipe, tokenizer)
    for step in range(recipe.steps):
        ids, mask, labels = next(data)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        if progress is not None:
            progress(step, loss.item())
    return model.eval()
