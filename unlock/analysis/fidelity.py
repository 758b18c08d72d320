"""Transfer fidelity: does the mapped Source direction point where the Target's own direction points?

The Master Key Hypothesis predicts it: r_j = v^T W_j should align with the native direction n_j (the
same contrast run on the Target) more than a random Source direction sent through the same map does.
The comparison needs that null: every mapped vector lies in the Target's top-k activation subspace,
so even random directions reach |cos| far above the naive 1/sqrt(d) there. The null here draws
isotropic Gaussian Source directions u (seeded), maps each through W_j and measures |cos(u^T W_j, n_j)|.

The same fact bounds it from above: every mapped vector lies in the row space of W_j (for the paper's
map, the span of the Target's top-k right singular vectors of its Locked activations, with the map's
rank, N and centring), so |cos(r_j, n_j)| <= ||P n_j|| / ||n_j||, P the projection onto that space.
This self-transfer ceiling is what the map reaches with Source == Target; a fidelity far below a
high ceiling locates the loss in the cross-model correspondence, a low ceiling in the subspace.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from unlock.method.align import LinearMap

NULL_DRAWS = 1000
TIE = 1e-6  # cosines closer than this are equal (the vectors are float32)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of each row of ``a`` with the vector ``b``, float64 (0 for a zero row)."""
    a, b = a.double(), b.double()
    return (a @ b) / (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b)).clamp_min(1e-300)


def self_ceiling(linear_map: LinearMap, native: torch.Tensor) -> float:
    """||P n|| / ||n||, P the orthogonal projection onto the row space of W = left @ right (float64):
    the largest |cos| any mapped vector can have with ``native``."""
    q, r = torch.linalg.qr(linear_map.left.double())
    rows = r @ linear_map.right.double()  # (k, d_t): W's row space, since x^T W = (x^T q) rows
    _, sigma, vh = torch.linalg.svd(rows, full_matrices=False)
    basis = vh[sigma > sigma.max().clamp_min(1e-300) * 1e-6]
    n = native.double()
    norm = torch.linalg.vector_norm(n)
    return float(torch.linalg.vector_norm(basis @ n) / norm) if norm > 0 else 0.0


def layer_fidelity(
    linear_map: LinearMap, mapped: torch.Tensor, native: torch.Tensor, draws: int = NULL_DRAWS, seed: int = 0
) -> dict[str, float]:
    """cos(mapped, native), the null's 95th percentile of |cos| over ``draws`` random Source
    directions through the same map, and the p-value of |cos| under that null (add-one estimate)."""
    if draws < 1:
        raise ValueError(f"draws {draws} is out of range: must be >= 1 (200 or more for a p-value to 0.005)")
    gen = torch.Generator().manual_seed(seed)
    random = torch.randn(draws, linear_map.left.shape[0], generator=gen, dtype=torch.float64)
    null = _cos(random @ linear_map.left.double() @ linear_map.right.double(), native).abs()
    cos = float(_cos(mapped[None], native)[0])
    return {
        "cos": cos,
        "null_p95": float(torch.quantile(null, 0.95)),
        "null_mean_abs": float(null.mean()),
        # A tie counts against the mapped vector: at rank 1 every draw maps onto the same line.
        "p_value": float((1 + (null >= abs(cos) - TIE).sum()) / (1 + draws)),
        "draws": draws,
        "self_ceiling": self_ceiling(linear_map, native),
    }


def transfer_fidelity(
    maps: Mapping[int, LinearMap],
    unlock: Mapping[int, torch.Tensor],
    native: Mapping[int, torch.Tensor],
    draws: int = NULL_DRAWS,
    seed: int = 0,
) -> dict[int, dict[str, float]]:
    """:func:`layer_fidelity` for every Target layer with a map, an UNLOCK vector and a native one
    (each layer's null seeded by ``seed`` and its index, so layers draw different directions)."""
    return {
        j: layer_fidelity(maps[j], unlock[j], native[j], draws, seed + j)
        for j in sorted(maps)
        if j in unlock and j in native
    }


def summarise(fidelity: Mapping[int, Mapping[str, float]]) -> dict[str, float]:
    """How many layers beat the null (cos above the null's 95th percentile of |cos|: pointing the same
    way as the native direction, more than 95% of random directions manage either way), and means."""
    if not fidelity:
        return {}
    layers = list(fidelity.values())
    return {
        "layers": len(layers),
        "beat_null": sum(f["cos"] > f["null_p95"] + TIE for f in layers),
        "mean_cos": sum(f["cos"] for f in layers) / len(layers),
        "mean_null_p95": sum(f["null_p95"] for f in layers) / len(layers),
        "mean_self_ceiling": sum(f["self_ceiling"] for f in layers) / len(layers),
    }


def verdict(summary: Mapping[str, float]) -> str:
    """Where the transfer loses the native direction, read from fidelity against its ceiling."""
    ceiling, cos = summary["mean_self_ceiling"], summary["mean_cos"]
    if ceiling < 0.5:
        return "the map's subspace misses much of the native direction (a higher rank or N may help)"
    if cos < 0.5 * ceiling:
        return "the map's subspace holds the direction, the cross-model correspondence does not"
    return "the map reaches most of what its subspace allows"
