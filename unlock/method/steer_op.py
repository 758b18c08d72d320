"""Steering as one graph-safe operation on a step's flattened rows, for engines that compile the model.

A Python hook that picks the rows to steer with data-dependent indexing cannot live inside a
compiled graph: torch.compile and CUDA graphs skip it or break on it. This op takes everything as
tensors of fixed shape that an engine writes before each step (persistent buffers), and reads no
Python state, so a captured graph replays it with whatever the buffers hold at replay time:

* ``shifts`` (S, d) float32: what each steering slot adds (:func:`unlock.method.steer.steering_shift`
  of its vector: alpha * r / ||r|| for the norm-preserving rule, alpha * r for add);
* ``rules`` (S,) int: each slot's rule (:data:`RULE_CODES`);
* ``slots`` (N,) int, N at least the step's rows: the slot of each row, -1 for a row not steered.

A steered row gets exactly :func:`unlock.method.steer.apply_shift`'s update (the same float32 ops);
every other row is left bit for bit as it was. Its fake (meta) implementation is registered, so
torch.compile traces through it as one opaque node.
"""

from __future__ import annotations

import torch

RULE_CODES = {"add": 0, "norm_preserving": 1}


@torch.library.custom_op("unlock::steer_rows", mutates_args=("hidden",))
def steer_rows(hidden: torch.Tensor, shifts: torch.Tensor, slots: torch.Tensor, rules: torch.Tensor) -> None:
    """Steer row i of ``hidden`` (n, d) in place by slot ``slots[i]`` where it is >= 0."""
    slot = slots[: hidden.shape[0]]
    index = slot.clamp(min=0).long()
    shift = shifts.index_select(0, index)
    h = hidden.float()
    norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    shifted = torch.addcdiv(shift, h, norm)  # h / ||h|| + shift, as apply_shift computes it
    preserved = shifted * (norm / torch.linalg.vector_norm(shifted, dim=-1, keepdim=True))
    rule = rules.index_select(0, index).unsqueeze(-1)
    steered = torch.where(rule == RULE_CODES["norm_preserving"], preserved, h + shift).to(hidden.dtype)
    hidden.copy_(torch.where((slot >= 0).unsqueeze(-1), steered, hidden))


@steer_rows.register_fake
def _steer_rows_fake(hidden: torch.Tensor, shifts: torch.Tensor, slots: torch.Tensor, rules: torch.Tensor) -> None:
    return None
