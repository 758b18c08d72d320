"""Direction extraction recovers planted directions and matches the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlock.method.capture import Activations, capture_activations
from unlock.method.extract import direction_from_pairs, extract_directions


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def test_difference_of_means_recovers_planted_direction():
    gen = torch.Generator().manual_seed(0)
    n, d = 64, 96
    planted = torch.randn(d, generator=gen)
    locked = torch.randn(n, d, generator=gen) * 3.0
    unlocked = locked + 2.0 * planted + 0.1 * torch.randn(n, d, generator=gen)
    direction = direction_from_pairs(unlocked, locked, "mean")
    assert _cos(direction, planted) > 0.99
    # Not normalised: the mean difference keeps the effect size.
    assert abs(float(direction.norm()) / float(2.0 * planted.norm()) - 1.0) < 0.02


def test_pca_recovers_planted_axis_with_sign_of_mean():
    gen = torch.Generator().manual_seed(1)
    n, d = 64, 96
    planted = torch.nn.functional.normalize(torch.randn(d, generator=gen), dim=0)
    scales = 1.0 + 4.0 * torch.rand(n, generator=gen)  # positive: the mean points along +planted
    locked = torch.randn(n, d, generator=gen)
    unlocked = locked + scales[:, None] * planted + 0.05 * torch.randn(n, d, generator=gen)
    direction = direction_from_pairs(unlocked, locked, "pca")
    assert abs(float(direction.norm()) - 1.0) < 1e-5
    assert _cos(direction, planted) > 0.99
    # Flipping the pairs flips the mean difference, so the fixed sign flips too.
    assert _cos(direction_from_pairs(locked, unlocked, "pca"), planted) < -0.99


def test_pca_matches_float64_reference():
    rng = np.random.default_rng(2)
    unlocked, locked = rng.normal(size=(16, 24)), rng.normal(size=(16, 24))
    diffs = unlocked - locked
    _, _, vh = np.linalg.svd(diffs - diffs.mean(axis=0), full_matrices=False)
    reference = vh[0] * np.sign(vh[0] @ diffs.mean(axis=0))
    ours = direction_from_pairs(torch.tensor(unlocked), torch.tensor(locked), "pca").double().numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    np.testing.assert_allclose(
        direction_from_pairs(torch.tensor(unlocked), torch.tensor(locked), "mean").double().numpy(),
        diffs.mean(axis=0),
        atol=1e-6,
    )


def test_prompt_contrast_on_one_model(llama, tokenizer):
    """Contrast (a): one model, direct vs step-by-step prompt; one direction per layer."""
    questions = [f"Question: What is {a} plus {b}?" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
    locked = capture_activations(llama, tokenizer, [q + "\nAnswer:\n" for q in questions], progress=False)
    unlocked = capture_activations(
        llama, tokenizer, [q + "\nAnswer: Let's think step by step.\n" for q in questions], progress=False
    )
    directions = extract_directions(unlocked, locked, "mean")
    assert directions.layers == [0, 1, 2, 3]
    assert directions.n_pairs == 4
    for layer in directions.layers:
        torch.testing.assert_close(directions.vectors[layer], (unlocked[layer] - locked[layer]).mean(0))


def test_checkpoint_contrast_on_two_models(tokenizer, prompts):
    """Contrast (b): base vs post-trained checkpoints of one architecture, same prompts."""
    from unlock.models.tiny import tiny_model

    base, tuned = tiny_model("llama", seed=10), tiny_model("llama", seed=11)
    locked = capture_activations(base, tokenizer, prompts, progress=False)
    unlocked = capture_activations(tuned, tokenizer, prompts, progress=False)
    directions = extract_directions(unlocked, locked, "pca")
    for layer in directions.layers:
        diffs = unlocked[layer] - locked[layer]
        assert float(directions.vectors[layer] @ diffs.mean(0)) > 0


def test_extraction_errors():
    a, b = torch.zeros(4, 8), torch.zeros(5, 8)
    with pytest.raises(ValueError, match=r"mismatched activation counts: unlocked \(4, 8\) vs locked \(5, 8\)"):
        direction_from_pairs(a, b)
    with pytest.raises(ValueError, match=r"unknown aggregation 'median'; allowed: mean, pca"):
        direction_from_pairs(a, a, "median")
    with pytest.raises(ValueError, match=r"pca aggregation needs N >= 2"):
        direction_from_pairs(a[:1], a[:1], "pca")
    unlocked = Activations({0: torch.zeros(3, 8)}, "last", [1, 1, 1])
    locked = Activations({0: torch.zeros(2, 8)}, "last", [1, 1])
    with pytest.raises(ValueError, match=r"mismatched activation counts: 3 unlocked vs 2 locked"):
        extract_directions(unlocked, locked)
