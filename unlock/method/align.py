"""Stage 3: fit a low-rank linear map from Source to Target activation space and carry directions.

The default is the paper's map (docs/method.md, step 4), fit on Source-Locked and
Target-Locked activations of the same N prompts:
    V_s, V_t = top-k right singular vectors of X_s, X_t     (k = min(rank, N, d_s, d_t))
    T = pinv(X_s V_s) (X_t V_t)                              (k x k)
    W = V_s T V_t^T                                          (d_s x d_t), and r = v_s^T W.
Maps are stored factored, W = left @ right with left (d_s x k) and right (k x d_t), so big pairs
stay small on disk. All fitting is done in float64.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from unlock.method.blocks import check_layers


@dataclass
class LinearMap:
    """x_t ≈ (x_s - source_mean) @ left @ right + target_mean; directions map without the means."""

    left: torch.Tensor  # (d_s, k)
    right: torch.Tensor  # (k, d_t)
    source_mean: torch.Tensor  # (d_s,), zeros when the fit was not centred
    target_mean: torch.Tensor  # (d_t,)
    method: str
    rank_requested: int
    rank_effective: int
    centred: bool

    @property
    def weight(self) -> torch.Tensor:
        return self.left @ self.right

    def map_direction(self, vector: torch.Tensor) -> torch.Tensor:
        """r = v^T W: a direction has no offset, so the means do not enter."""
        return ((vector.double() @ self.left.double()) @ self.right.double()).float()

    def predict(self, source_activations: torch.Tensor) -> torch.Tensor:
        centred = source_activations.double() - self.source_mean.double()
        return (centred @ self.left.double() @ self.right.double() + self.target_mean.double()).float()


def effective_rank(rank: int, n: int, d_source: int, d_target: int) -> int:
    """k = min(rank, N, d_s, d_t), warning when the request is clipped so rank x N sweeps stay usable."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank {rank!r} is out of range: must be an int >= 1 (paper grid 1..512, rank <= N)")
    limit = min(n, d_source, d_target)
    if rank > limit:
        warnings.warn(
            f"rank {rank} exceeds min(N={n}, d_s={d_source}, d_t={d_target}) = {limit}; clipped to {limit}",
            stacklevel=3,
        )
        return limit
    return rank


def _top_right_singular_vectors(matrix: torch.Tensor, k: int) -> torch.Tensor:
    _, _, vh = torch.linalg.svd(matrix, full_matrices=False)
    return vh[:k].T  # (d, k)


def _check_pair(source: torch.Tensor, target: torch.Tensor) -> None:
    if source.ndim != 2 or target.ndim != 2:
        raise ValueError(f"activations must be 2-D (N, d), got {tuple(source.shape)} and {tuple(target.shape)}")
    if source.shape[0] != target.shape[0]:
        raise ValueError(
            f"mismatched activation counts: {source.shape[0]} Source rows vs {target.shape[0]} Target rows; "
            "the map is fit on the same N prompts in both models"
        )
    if source.shape[0] == 0:
        raise ValueError("empty activation set: the map needs N >= 1 prompts")
    if not (torch.isfinite(source).all() and torch.isfinite(target).all()):
        raise ValueError("activations contain NaN or inf; refusing to fit a map on them")


# A solver takes centred float64 activations X_s (N, d_s), X_t (N, d_t), the effective rank k and its own
# options as keywords, and returns the map's factors (left (d_s, k), right (k, d_t)), W = left @ right.
Solver = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _unlock_map(xs: torch.Tensor, xt: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's map (docs/method.md step 4): T = pinv(X_s V_s)(X_t V_t), W = V_s T V_t^T."""
    v_s = _top_right_singular_vectors(xs, k)
    v_t = _top_right_singular_vectors(xt, k)
    transfer = torch.linalg.pinv(xs @ v_s) @ (xt @ v_t)  # (k, k)
    return v_s @ transfer, v_t.T


def _procrustes_map(xs: torch.Tensor, xt: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A scaled orthogonal map between the top-k principal subspaces."""
    v_s = _top_right_singular_vectors(xs, k)
    v_t = _top_right_singular_vectors(xt, k)
    p_s, p_t = xs @ v_s, xt @ v_t
    u, sigma, vh = torch.linalg.svd(p_s.T @ p_t)
    scale = sigma.sum() / p_s.pow(2).sum().clamp(min=torch.finfo(torch.float64).tiny)
    return v_s @ (u @ vh) * scale, v_t.T


def _ridge_map(xs: torch.Tensor, xt: torch.Tensor, k: int, ridge: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge reduced-rank regression: a ridge fit projected onto the top-k directions of its fitted
    values; ``ridge`` is the penalty relative to the mean squared singular value of X_s."""
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge {ridge!r} is out of range: must be a finite float >= 0")
    n, d_s = xs.shape
    penalty = ridge * xs.pow(2).sum() / min(n, d_s)
    # Dual form: B = X_s^T (X_s X_s^T + λI)^-1 X_t, cheap when N << d_s (the usual case).
    gram = xs @ xs.T + penalty * torch.eye(n, dtype=torch.float64)
    coef = xs.T @ torch.linalg.lstsq(gram, xt).solution  # (d_s, d_t)
    v_k = _top_right_singular_vectors(xs @ coef, k)
    return coef @ v_k, v_k.T


# A new alignment method is one solver here: the config's rank.method choices, its options (rank.options,
# checked against the solver's keyword parameters) and the align cache key follow from this table.
SOLVERS: dict[str, Solver] = {"unlock": _unlock_map, "ridge": _ridge_map, "procrustes": _procrustes_map}
METHODS = tuple(SOLVERS)  # the built-in methods; checks read SOLVERS itself, so later rows count too


def solver_options(method: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A solver's options with its defaults filled in; an unknown method or option is named with the
    allowed ones."""
    if method not in SOLVERS:
        raise ValueError(f"unknown alignment method {method!r}; allowed: {', '.join(SOLVERS)}")
    defaults = {
        name: p.default
        for name, p in inspect.signature(SOLVERS[method]).parameters.items()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.default is not inspect.Parameter.empty
    }
    unknown = sorted(set(options or {}) - set(defaults))
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)} is not an option of the {method!r} alignment method; its options: "
            f"{', '.join(defaults) or 'none'}"
        )
    return {**defaults, **(options or {})}


def fit_map(
    source: torch.Tensor,
    target: torch.Tensor,
    rank: int,
    method: str = "unlock",
    centre: bool = False,
    **options: Any,
) -> LinearMap:
    """Fit a rank-k map from Source activations (N, d_s) to Target activations (N, d_t) with one of
    ``SOLVERS``: ``unlock`` (the paper's map, default), ``ridge`` (option ``ridge``, the penalty) or
    ``procrustes``. ``centre`` mean-centres both sides first (the paper's pca variant)."""
    options = solver_options(method, options)
    _check_pair(source, target)
    n, d_s = source.shape
    d_t = target.shape[1]
    k = effective_rank(rank, n, d_s, d_t)
    xs, xt = source.double(), target.double()
    mu_s = xs.mean(dim=0) if centre else torch.zeros(d_s, dtype=torch.float64)
    mu_t = xt.mean(dim=0) if centre else torch.zeros(d_t, dtype=torch.float64)
    left, right = SOLVERS[method](xs - mu_s, xt - mu_t, k, **options)
    return LinearMap(
        left=left.float(),
        right=right.float(),
        source_mean=mu_s.float(),
        target_mean=mu_t.float(),
        method=method,
        rank_requested=rank,
        rank_effective=k,
        centred=centre,
    )


def fit_quality(linear_map: LinearMap, source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Relative Frobenius error and R^2 of the map's predictions (use held-out prompts)."""
    _check_pair(source, target)
    prediction = linear_map.predict(source).double()
    truth = target.double()
    residual = (prediction - truth).pow(2).sum()
    total = (truth - truth.mean(dim=0)).pow(2).sum()
    return {
        "rel_error": float(residual.sqrt() / truth.norm().clamp(min=1e-30)),
        "r2": float(1.0 - residual / total.clamp(min=1e-30)),
        "n": int(source.shape[0]),
    }


def pair_layers_linear(n_source: int, n_target: int) -> dict[int, int]:
    """Target layer j -> Source layer min(floor((S - 1) j / (T - 1)), S - 1), linear in depth."""
    if n_source < 1 or n_target < 1:
        raise ValueError(f"layer counts must be >= 1, got Source {n_source} and Target {n_target}")
    if n_target == 1:
        return {0: n_source - 1}
    return {j: min(((n_source - 1) * j) // (n_target - 1), n_source - 1) for j in range(n_target)}


def pair_layers(
    n_source: int,
    n_target: int,
    target_layers: list[int] | None = None,
    explicit: Mapping[int, int] | None = None,
) -> dict[int, int]:
    """Target->Source layer pairs: linear in depth by default, or an explicit {target: source} map."""
    if explicit is not None:
        pairs = {int(j): int(l) for j, l in explicit.items()}
        check_layers(list(pairs), n_target, "Target layer")
        check_layers(list(pairs.values()), n_source, "Source layer")
        return {j % n_target: l % n_source for j, l in sorted(pairs.items())}
    pairs = pair_layers_linear(n_source, n_target)
    if target_layers is None:
        return pairs
    return {j: pairs[j] for j in check_layers(list(target_layers), n_target, "Target layer")}
