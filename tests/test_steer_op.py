"""The graph-safe steering op: exactly the hooks' update on the rows its slots name, nothing elsewhere, and
the same under torch.compile with the buffers' contents changing between calls."""

from __future__ import annotations

import pytest
import torch

from unlock.method.steer import apply_shift, steering_shift
from unlock.method.steer_op import RULE_CODES, steer_rows


def _buffers(width: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(3, width, generator=gen)
    settings = [(0.2, "norm_preserving"), (1.5, "add"), (0.7, "norm_preserving")]
    shifts = torch.stack([steering_shift(v, a, rule) for v, (a, rule) in zip(vectors, settings, strict=True)])
    rules = torch.tensor([RULE_CODES[rule] for _, rule in settings])
    return shifts, rules, [rule for _, rule in settings]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_row_gets_its_slots_update_and_the_others_stay_bit_for_bit(dtype):
    shifts, rules, names = _buffers()
    hidden = torch.randn(7, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    slots = torch.tensor([-1, 0, 1, 2, -1, 1, 0, -1, -1])  # longer than the rows, as a persistent buffer is
    out = hidden.clone()
    steer_rows(out, shifts, slots, rules)
    for i, slot in enumerate(slots[:7].tolist()):
        if slot < 0:
            assert torch.equal(out[i], hidden[i]), f"row {i} was not to be touched"
        else:
            expected = apply_shift(hidden[i : i + 1], shifts[slot], names[slot])[0]
            torch.testing.assert_close(out[i], expected, atol=0, rtol=0 if dtype == torch.float32 else 1e-2)


def test_it_compiles_into_one_graph_and_follows_the_buffers_between_calls():
    """fullgraph=True: no graph break. The compiled step reads the buffers at call time, so changing
    their contents (as an engine does before every step) changes what is steered, without a recompile."""
    shifts, rules, _ = _buffers()
    slots = torch.full((16,), -1)

    def step(hidden: torch.Tensor) -> torch.Tensor:
        hidden = hidden * 1.0  # the layer's output, as the engine computes it
        steer_rows(hidden, shifts, slots, rules)
        return hidden + 0.0

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    hidden = torch.randn(5, 32, generator=torch.Generator().manual_seed(2))
    for pattern in ([-1] * 5, [0, -1, 2, 1, -1], [1, 1, 1, 1, 1], [2, -1, -1, -1, 0]):
        slots.fill_(-1)
        slots[:5] = torch.tensor(pattern)
        assert torch.equal(compiled(hidden), step(hidden)), pattern
    assert torch.equal(compiled(hidden), step(hidden))
    shifts.mul_(2.0)  # new vectors in the same bank
    assert torch.equal(compiled(hidden), step(hidden))
