"""Steering as graph-safe operations on a step's flattened rows, for engines that compile the model.

A Python hook that picks the rows to steer with data-dependent indexing cannot live inside a
compiled graph: torch.compile and CUDA graphs skip it or break on it. Here everything is a tensor of
fixed shape that an engine writes before each step (persistent buffers), and nothing reads Python
state, so a captured graph replays with whatever the buffers hold at replay time:

* ``shifts`` (S, d) float32: what each steering slot adds (:func:`unlock.method.steer.steering_shift`
  of its vector: alpha * r / ||r|| for the norm-preserving rule, alpha * r for add);
* ``rules`` (S,) int: each slot's rule (:data:`RULE_CODES`);
* ``slots`` (N,) int, N at least the step's rows: the slot of each row, -1 for a row not steered.

A steered row gets exactly :func:`unlock.method.steer.apply_shift`'s update (the same float32 ops);
every other row is left bit for bit as it was. :func:`steer_rows_update` is the update in plain
torch ops with no data-dependent shape, which torch.compile traces and Inductor fuses into the
layer's kernels (what an engine's compiled decoder layer calls); :func:`steer_rows` is the same
update as one opaque, in-place ``torch.library`` op with a fake implementation, for graphs that
must keep it as a single node (and for CUDA graphs captured by hand).
"""

from __future__ import annotations

import torch

RULE_CODES = {"add": 0, "norm_preserving": 1}


def steer_rows_update(
    hidden: torch.Tensor, shifts: torch.Tensor, slots: torch.Tensor, rules: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(every row steered as its slot says, in ``hidden``'s dtype; whether it is steered (n,) bool).

    Computed for every row (a clamped slot where there is none) and selected with ``torch.where``: no
    gather of rows, no shape that depends on the data, so one compiled graph serves every step."""
    slot = slots[: hidden.shape[0]]
    index = slot.clamp(min=0).long()
    shift = shifts.index_select(0, index)
    h = hidden.float()
    norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    shifted = torch.addcdiv(shift, h, norm)  # h / ||h|| + shift, as apply_shift computes it
    preserved = shifted * (norm / torch.linalg.vector_norm(shifted, dim=-1, keepdim=True))
    rule = rules.index_select(0, index).unsqueeze(-1)
    steered = torch.where(rule == RULE_CODES["norm_preserving"], preserved, h + shift).to(hidden.dtype)
    return steered, slot >= 0


@torch.library.custom_op("unlock::steer_rows", mutates_args=("hidden",))
def steer_rows(hidden: torch.Tensor, shifts: torch.Tensor, slots: torch.Tensor, rules: torch.Tensor) -> None:
    """Steer row i of ``hidden`` (n, d) in place by slot ``slots[i]`` where it is >= 0."""
    steered, on = steer_rows_update(hidden, shifts, slots, rules)
    hidden.copy_(torch.where(on.unsqueeze(-1), steered, hidden))


@steer_rows.register_fake
def _steer_rows_fake(hidden: torch.Tensor, shifts: torch.Tensor, slots: torch.Tensor, rules: torch.Tensor) -> None:
    return None
