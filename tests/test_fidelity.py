"""Transfer fidelity against an honest null, on planted structure where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlock.align import fit_map
from unlock.fidelity import layer_fidelity, summarise, transfer_fidelity

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
    p_values = [layer_fidelity(linear_map, linear_map.map_direction(v), unrelated, draws=500, seed=s)["p_value"]
                for s in range(3)]
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
    from unlock.analysis import spectral_entropy

    basis = torch.linalg.qr(torch.randn(30, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64))[0]
    signs = torch.tensor([[1.0], [-1.0]], dtype=torch.float64).repeat(5, 1)
    rows = torch.cat([basis.T, -basis.T])  # centred already, 5 equal singular values
    assert spectral_entropy(rows) == pytest.approx(np.log(5), abs=1e-9)
    assert spectral_entropy(torch.outer(signs[:, 0], basis[:, 0])) == pytest.approx(0.0, abs=1e-9)
