"""Steering tells the prefill pass from decoding steps by behaviour, on every tiny family.

``generate()`` under Steering must equal a generation whose steered positions the test chose itself
(tests/phases.py): the default steers the last prompt token in the prefill and then decodes plainly
from that KV cache; ``generated`` prefills plainly and steers every decoding step; ``all`` does both.
Left-padded batches, per-step logits within 1e-4. These failed with transformers 5.24 before the KV
cache was found by type (every decoding step was then steered like a prefill).
"""

from __future__ import annotations

import pytest
import torch

from tests.phases import assert_same_generation, reference_generate
from unlock.models import hidden_size, num_layers
from unlock.tiny import TINY_FAMILIES, tiny_model

STEPS = 6
PROMPTS = [
    "Question: What is 3 plus 4?\nAnswer:",
    "Hi",
    "Q: A farmer has 12 apples and buys 7 more. How many apples does he have? A:",
]


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def family_model(request):
    return tiny_model(request.param, hidden_size=64, num_layers=4, seed=3)


def _vectors(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {j: torch.randn(hidden_size(model), generator=gen) for j in range(num_layers(model))}


@pytest.fixture(scope="module")
def batch(tokenizer):
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    assert tokenizer.padding_side == "left" and not encoded["attention_mask"][:, 0].all()
    return encoded


@pytest.mark.parametrize("positions", ["last", "generated", "all", "prompt"])
def test_generate_equals_reference_by_phase(family_model, batch, positions):
    logits = assert_same_generation(family_model, batch, _vectors(family_model), 1.0, positions, STEPS)
    _, plain = reference_generate(family_model, batch, {}, 0.0, "last", STEPS)
    assert not torch.allclose(logits, plain, atol=1e-3), "the vectors must change the generation"


def test_default_rule_does_not_steer_decoding_steps(family_model, batch):
    """The reference for ``last`` differs from one that also steers every decoding step, so the
    equality above cannot hold for a Steering that steers both (the transformers 5.24 failure)."""
    vectors = _vectors(family_model, seed=1)
    _, last = reference_generate(family_model, batch, vectors, 1.0, "last", STEPS)
    _, all_steps = reference_generate(family_model, batch, vectors, 1.0, "all", STEPS)
    assert not torch.allclose(last[:, 1:], all_steps[:, 1:], atol=1e-3)


def test_a_mask_longer_than_the_input_without_a_cache_is_an_error(family_model, batch):
    from unlock.steer import Steering

    mask = torch.cat([batch["attention_mask"], torch.ones_like(batch["attention_mask"][:, :1])], dim=1)
    with Steering(family_model, _vectors(family_model), 0.5), pytest.raises(RuntimeError, match="cannot tell the prefill"):
        family_model(input_ids=batch["input_ids"][:, -1:], attention_mask=mask, use_cache=False)
