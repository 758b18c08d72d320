"""Transfer fidelity against an honest null, on planted structure where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlock.analysis.fidelity import layer_fidelity, summarise, transfer_fidelity
from unlock.method.align import fit_map

N, D_S, D_T, R = 64, 48, 40, 6


def _planted(seed: int = 0):
    """Target activations are a rank-R map of the Source's plus noise; the capability direction is
    planted in the Source's active subspace and its native counterpart is its image under the map."""
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D_S, R, generator=gen, dtype=torch.float64))[0]  # (D_S, R)
    source = torch.randn(N, R, generator=gen, dtype=torch.float64) @ basis.T * 3
    a = basis @ torch.randn(R, D_T, generator=gen, dtype=torch.float64)  # rank R, D_S -> D_T
    target = source @ a + 0.05 * torch.randn(N, D_T, generator=gen, dtype=torch.float64)
    v = basis @ torch.randn(R, generator=gen, dtype=torch.float64)
    return source.float(), target.float(), v.float(), (v @ a).float()


def test_planted_direction_is_carried_over_far_above_the_null():
    source, target, v, native = _planted()
    linear_map = fit_map(source, target, rank=R)
    result = layer_fidelity(linear_map, linear_map.map_direction(v), native, draws=500)
    assert result["cos"] > 0.99
    assert result["cos"] > result["null_p95"] + 0.2 and result["p_value"] <= 2 / 501


def test_an_unrelated_target_direction_stays_inside_the_null():
    source, target, v, _ = _planted()
    linear_map = fit_map(source, target, rank=R)
    unrelated = torch.randn(D_T, generator=torch.Generator().manual_seed(7))
    p_values = [
        layer_fidelity(linear_map, linear_map.map_direction(v), unrelated, draws=500, seed=s)["p_value"]
        for s in range(3)
    ]
    result = layer_fidelity(linear_map, linear_map.map_direction(v), unrelated, draws=500)
    assert abs(result["cos"]) < result["null_p95"] and min(p_values) > 0.05


def test_the_null_is_a_direct_float64_computation():
    """The same random directions, drawn again, mapped and compared one by one with numpy."""
    source, target, v, native = _planted(1)
    linear_map = fit_map(source, target, rank=4)
    draws, seed = 300, 11
    result = layer_fidelity(linear_map, linear_map.map_direction(v), native, draws=draws, seed=seed)
    us = torch.randn(draws, D_S, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    w = (linear_map.left.double() @ linear_map.right.double()).numpy()
    n = native.double().numpy()
    null = np.array([abs(u @ w @ n) / (np.linalg.norm(u @ w) * np.linalg.norm(n)) for u in us])
    assert result["null_p95"] == pytest.approx(np.quantile(null, 0.95), abs=1e-12)
    r = linear_map.map_direction(v).double().numpy()
    cos = r @ n / (np.linalg.norm(r) * np.linalg.norm(n))
    assert result["cos"] == pytest.approx(cos, abs=1e-6)
    assert result["p_value"] == pytest.approx((1 + (null >= abs(cos)).sum()) / (1 + draws))


def test_transfer_fidelity_per_layer_and_summary():
    source, target, v, native = _planted(2)
    maps = {0: fit_map(source, target, rank=R), 1: fit_map(source, target, rank=R)}
    unrelated = torch.randn(D_T, generator=torch.Generator().manual_seed(3))
    fidelity = transfer_fidelity(maps, {j: m.map_direction(v) for j, m in maps.items()}, {0: native, 1: unrelated}, 300)
    assert fidelity[0]["null_p95"] != fidelity[1]["null_p95"] or fidelity[0]["cos"] != fidelity[1]["cos"]
    summary = summarise(fidelity)
    assert summary["layers"] == 2 and summary["beat_null"] == 1
    with pytest.raises(ValueError, match="draws 0 is out of range"):
        layer_fidelity(maps[0], native, native, draws=0)


def test_at_rank_one_nothing_beats_the_null():
    """Every direction maps onto one line at rank 1: the mapped vector ties with every null draw."""
    source, target, v, native = _planted(3)
    linear_map = fit_map(source, target, rank=1)
    result = layer_fidelity(linear_map, linear_map.map_direction(v), native, draws=200)
    assert result["p_value"] == 1.0 and summarise({0: result})["beat_null"] == 0


def test_spectral_entropy_is_log_of_the_number_of_equal_directions():
    from unlock.analysis.grid import spectral_entropy

    basis = torch.linalg.qr(torch.randn(30, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    signs = torch.tensor([[1.0], [-1.0]], dtype=torch.float64).repeat(5, 1)
    rows = torch.cat([basis.T, -basis.T])  # centred already, 5 equal singular values
    assert spectral_entropy(rows) == pytest.approx(np.log(5), abs=1e-9)
    assert spectral_entropy(torch.outer(signs[:, 0], basis[:, 0])) == pytest.approx(0.0, abs=1e-9)


def _random_pair(seed: int, n: int = 24):
    gen = torch.Generator().manual_seed(seed)
    source = torch.randn(n, D_S, generator=gen) @ torch.randn(D_S, D_S, generator=gen) * 0.3
    target = torch.randn(n, D_T, generator=gen) @ torch.randn(D_T, D_T, generator=gen) * 0.3 + 0.5
    return source, target, gen


@pytest.mark.parametrize("centre", [False, True])
def test_self_ceiling_is_the_float64_projection_onto_the_targets_top_k_subspace(centre):
    """The paper's map: ||V_k V_k^T n|| / ||n||, V_k the top-k right singular vectors of the Target's
    (centred, for the pca variant) activations, computed here with numpy in float64."""
    from unlock.analysis.fidelity import self_ceiling

    source, target, gen = _random_pair(5)
    native = torch.randn(D_T, generator=gen)
    for rank in (1, 3, 8, 23):  # centred, 24 rows span 23 directions: a 24th would be arbitrary
        linear_map = fit_map(source, target, rank=rank, centre=centre)
        x = target.double().numpy()
        x = x - x.mean(axis=0) if centre else x
        v_k = np.linalg.svd(x, full_matrices=False)[2][:rank]
        n = native.double().numpy()
        expected = np.linalg.norm(v_k.T @ (v_k @ n)) / np.linalg.norm(n)
        assert self_ceiling(linear_map, native) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("method", ["unlock", "ridge", "procrustes"])
def test_no_mapped_direction_exceeds_the_self_ceiling(method):
    """Random and planted data, every solver, several ranks: |cos(v^T W, n)| <= the ceiling for any v,
    and some v (the one whose image is the projection of n) comes close on the paper's map."""
    from unlock.analysis.fidelity import self_ceiling

    for seed in range(4):
        source, target, gen = (
            _random_pair(seed) if seed % 2 else _planted(seed)[:2] + (torch.Generator().manual_seed(seed),)
        )
        natives = [torch.randn(D_T, generator=gen), _planted(seed)[3]]
        for rank in (1, 4, 12):
            linear_map = fit_map(source, target, rank=rank, method=method)
            for native in natives:
                ceiling = self_ceiling(linear_map, native)
                assert 0.0 <= ceiling <= 1.0 + 1e-9
                vs = torch.randn(200, D_S, generator=gen)
                cos = torch.nn.functional.cosine_similarity(
                    torch.stack([linear_map.map_direction(v) for v in vs]).double(), native.double()[None], dim=1
                )
                assert float(cos.abs().max()) <= ceiling + 1e-6


def test_with_source_equal_to_target_fidelity_equals_the_self_ceiling():
    """One model on both sides: W = V_k V_k^T, so the native direction maps to its own projection."""
    from unlock.analysis.fidelity import self_ceiling

    _, target, gen = _random_pair(9, n=32)
    for rank in (2, 6, 20):
        linear_map = fit_map(target, target, rank=rank)
        for _ in range(3):
            native = torch.randn(D_T, generator=gen)
            result = layer_fidelity(linear_map, linear_map.map_direction(native), native, draws=10)
            assert result["cos"] == pytest.approx(self_ceiling(linear_map, native), abs=1e-5)
            assert result["self_ceiling"] == pytest.approx(result["cos"], abs=1e-5)
