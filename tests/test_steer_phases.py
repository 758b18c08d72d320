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

from tests.phases import assert_same_generation, greedy_generate, reference_generate
from unlock.method.blocks import hidden_size, num_layers
from unlock.method.steer import Steering, SteeringSettings
from unlock.models.tiny import TINY_FAMILIES, tiny_model

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
    mask = torch.cat([batch["attention_mask"], torch.ones_like(batch["attention_mask"][:, :1])], dim=1)
    with (
        Steering(family_model, _vectors(family_model), SteeringSettings(0.5)),
        pytest.raises(RuntimeError, match="cannot tell the prefill"),
    ):
        family_model(input_ids=batch["input_ids"][:, -1:], attention_mask=mask, use_cache=False)


def test_prompt_tokens_after_a_cached_part_are_refused(family_model, batch):
    """Chunked prefill: the second chunk carries prompt tokens after cached ones; the default rule
    cannot know which is the prompt's last, so it refuses instead of steering the wrong token."""
    from transformers import DynamicCache

    from tests.phases import cache_keyword

    ids, mask = batch["input_ids"], batch["attention_mask"]
    cache = DynamicCache(config=family_model.config)
    with torch.no_grad():
        keyword = {cache_keyword(family_model): cache}  # the keyword this transformers version takes
        family_model(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True, **keyword)
        with (
            Steering(family_model, _vectors(family_model), SteeringSettings(0.5)),
            pytest.raises(RuntimeError, match="one prefill pass"),
        ):
            family_model(input_ids=ids[:, 5:8], attention_mask=mask[:, :8], use_cache=True, **keyword)


def test_static_cache_generation_equals_reference(batch):
    """generate(cache_implementation="static") passes a StaticCache and a 4-D mask: still the phases
    of the default rule."""
    model = tiny_model("llama", hidden_size=64, num_layers=4, seed=3)
    vectors = _vectors(model)
    with Steering(model, vectors, SteeringSettings(1.0)):
        _, logits = greedy_generate(model, batch, STEPS, cache_implementation="static")
    _, reference = reference_generate(model, batch, vectors, 1.0, "last", STEPS)
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)


def _compiled_generate(model, batch, **kwargs):
    """generate() with a static cache whose decoding steps transformers compiles. It compiles them on
    accelerators only; CompileConfig's testing flag ``_compile_all_devices`` (private, so the control
    below checks that compiling really happens) does it on this CPU. Dynamo's eager backend: the
    tracing that drops hooks, without Inductor's build time."""
    from transformers import CompileConfig

    compile_config = CompileConfig(backend="eager", mode=None)
    compile_config._compile_all_devices = True
    _, logits = greedy_generate(
        model, batch, STEPS, cache_implementation="static", compile_config=compile_config, **kwargs
    )
    return logits


def test_a_graph_compiled_before_steering_cannot_skip_its_decoding_steps(batch):
    """The unsteered condition runs first and transformers keeps the graph it compiled for the
    decoding steps; that graph never calls hooks registered later. Under Steering, generate() must
    stay eager and steer every decoding step of ``all``; the control, with compiling forced back on,
    shows the stale graph really is there (and skips the steering) on this transformers version."""
    model = tiny_model("llama", hidden_size=64, num_layers=4, seed=3)
    vectors = _vectors(model)
    _, reference = reference_generate(model, batch, vectors, 1.0, "all", STEPS)
    _, plain_reference = reference_generate(model, batch, {}, 0.0, "last", STEPS)
    settings = SteeringSettings(1.0, positions="all")
    with torch.no_grad():
        plain = _compiled_generate(model, batch)  # compiles the decoding steps, no hooks in the graph
        with Steering(model, vectors, settings):
            steered = _compiled_generate(model, batch)
            stale = _compiled_generate(model, batch, disable_compile=False)
    assert model.generation_config.disable_compile is None  # restored on exit
    torch.testing.assert_close(plain, plain_reference, atol=1e-4, rtol=0)
    torch.testing.assert_close(steered, reference, atol=1e-4, rtol=0)
    # The control: the prefill is steered (eager), the decoding steps ran the stale graph unsteered.
    torch.testing.assert_close(stale[:, 0], reference[:, 0], atol=1e-4, rtol=0)
    assert not torch.allclose(stale[:, 1:], reference[:, 1:], atol=1e-3)
