"""The map: equal to the paper's formula, recovers planted maps, clips rank, pairs layers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from unlock.method.align import (
    effective_rank,
    fit_map,
    fit_quality,
    pair_layers,
    pair_layers_linear,
)


def _reference_unlock_vector(xs: np.ndarray, xt: np.ndarray, v: np.ndarray, rank: int, centre: bool) -> np.ndarray:
    """docs/method.md step 4, written independently in float64 numpy."""
    if centre:
        xs, xt = xs - xs.mean(axis=0), xt - xt.mean(axis=0)
    k = min(rank, xs.shape[0])
    vs = np.linalg.svd(xs, full_matrices=False)[2][:k].T
    vt = np.linalg.svd(xt, full_matrices=False)[2][:k].T
    transfer = np.linalg.pinv(xs @ vs) @ (xt @ vt)
    return v @ (vs @ transfer @ vt.T)


@pytest.mark.parametrize("centre", [False, True])
@pytest.mark.parametrize("rank", [1, 4, 16])
def test_default_map_equals_paper_formula(rank, centre):
    rng = np.random.default_rng(rank)
    xs, xt, v = rng.normal(size=(32, 40)), rng.normal(size=(32, 56)), rng.normal(size=40)
    fitted = fit_map(torch.tensor(xs), torch.tensor(xt), rank=rank, centre=centre)
    expected = _reference_unlock_vector(xs, xt, v, rank, centre)
    ours = fitted.map_direction(torch.tensor(v)).double().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert fitted.weight.shape == (40, 56)


def _planted(n: int, d_s: int, d_t: int, r: int, noise: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    latent_to_source = torch.randn(r, d_s, generator=gen)
    planted = torch.randn(d_s, d_t, generator=gen)
    # Exact rank-r linear relation: X_t = X_s M with M of rank r (acts on the Source's r-dim subspace).
    projector = torch.linalg.pinv(latent_to_source) @ latent_to_source
    m = projector @ planted

    def sample(count: int):
        xs = torch.randn(count, r, generator=gen) @ latent_to_source
        xt = xs @ m
        return xs + noise * torch.randn(count, d_s, generator=gen), xt + noise * torch.randn(count, d_t, generator=gen)

    return sample, latent_to_source, m


@pytest.mark.parametrize("method", ["unlock", "ridge"])
def test_planted_low_rank_map_is_recovered_on_held_out_directions(method):
    r = 6
    sample, latent_to_source, m = _planted(n=128, d_s=48, d_t=40, r=r, noise=1e-3, seed=0)
    xs, xt = sample(128)
    fitted = fit_map(xs, xt, rank=r, method=method, **({"ridge": 1e-6} if method == "ridge" else {}))
    gen = torch.Generator().manual_seed(99)
    held_out_directions = torch.randn(10, r, generator=gen) @ latent_to_source  # unseen, in the signal subspace
    for v in held_out_directions:
        cos = torch.nn.functional.cosine_similarity(fitted.map_direction(v).double(), (v @ m).double(), dim=0)
        assert cos > 0.99, f"{method}: cosine {float(cos):.4f}"
    xs_test, xt_test = sample(64)
    quality = fit_quality(fitted, xs_test, xt_test)
    assert quality["n"] == 64
    assert quality["r2"] > 0.99 and quality["rel_error"] < 0.05


def test_procrustes_recovers_a_planted_rotation():
    """An orthogonal map can only recover a planted map that is a scaled rotation."""
    gen = torch.Generator().manual_seed(5)
    d = 24
    rotation, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    xs = torch.randn(200, d, generator=gen, dtype=torch.float64) * torch.linspace(3, 1, d, dtype=torch.float64)
    fitted = fit_map(xs, 2.0 * xs @ rotation, rank=d, method="procrustes")
    torch.testing.assert_close(fitted.weight.double(), 2.0 * rotation, atol=1e-4, rtol=1e-4)


def test_fit_quality_falls_with_rank():
    sample, _, _ = _planted(n=256, d_s=48, d_t=40, r=12, noise=0.05, seed=3)
    xs, xt = sample(256)
    xs_test, xt_test = sample(128)
    errors = [fit_quality(fit_map(xs, xt, rank=k), xs_test, xt_test)["rel_error"] for k in (1, 4, 12)]
    assert errors[0] > errors[1] > errors[2]


def test_rank_is_clipped_with_warning_and_recorded():
    xs, xt = torch.randn(8, 30), torch.randn(8, 20)
    with pytest.warns(UserWarning, match=r"rank 64 exceeds min\(N=8, d_s=30, d_t=20\) = 8; clipped to 8"):
        fitted = fit_map(xs, xt, rank=64)
    assert (fitted.rank_requested, fitted.rank_effective) == (64, 8)
    assert fitted.left.shape == (30, 8) and fitted.right.shape == (8, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert effective_rank(4, 8, 30, 20) == 4


@pytest.mark.parametrize("rank", [0, -3, 2.5, True])
def test_rank_below_one_is_rejected(rank):
    with pytest.raises(ValueError, match=rf"rank {rank!r} is out of range: must be an int >= 1"):
        fit_map(torch.randn(4, 6), torch.randn(4, 5), rank=rank)


def test_alignment_input_errors():
    with pytest.raises(ValueError, match=r"mismatched activation counts: 4 Source rows vs 5 Target rows"):
        fit_map(torch.randn(4, 6), torch.randn(5, 6), rank=2)
    with pytest.raises(ValueError, match=r"unknown alignment method 'cca'; allowed: unlock, ridge, procrustes"):
        fit_map(torch.randn(4, 6), torch.randn(4, 6), rank=2, method="cca")
    with pytest.raises(ValueError, match=r"empty activation set"):
        fit_map(torch.randn(0, 6), torch.randn(0, 6), rank=2)
    bad = torch.randn(4, 6)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf"):
        fit_map(bad, torch.randn(4, 6), rank=2)


def test_linear_layer_pairing_matches_paper_rule():
    s, t = 30, 18
    pairs = pair_layers_linear(s, t)
    assert pairs == {j: min(((s - 1) * j) // (t - 1), s - 1) for j in range(t)}
    assert pairs[0] == 0 and pairs[t - 1] == s - 1
    assert pair_layers_linear(4, 6) == {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 3}
    assert pair_layers_linear(6, 1) == {0: 5}


def test_pairing_subset_and_explicit():
    assert pair_layers(4, 6, target_layers=[5, 2]) == {2: 1, 5: 3}
    assert pair_layers(4, 6, explicit={0: 3, -1: 0}) == {0: 3, 5: 0}
    with pytest.raises(ValueError, match=r"Target layer 6 is out of range.*\[0, 5\]"):
        pair_layers(4, 6, target_layers=[6])
    with pytest.raises(ValueError, match=r"Source layer 9 is out of range.*\[0, 3\]"):
        pair_layers(4, 6, explicit={0: 9})
