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


# --------------------------------------------------------------------------------------------------
# The steering bank compiled into vLLM's decoder layers (unlock.lm_eval.vllm_graph; no engine here)
# --------------------------------------------------------------------------------------------------
def _bank(width: int = 32):
    from unlock.lm_eval.vllm_graph import SteeringBank

    shifts, rules, names = _buffers(width)
    bank = SteeringBank(n_layers=2, width=width, max_rows=12, sets=4, meters=3)
    bank.shifts[1, :3] = shifts  # layer 1 steers with slots 0-2; slot 2 is not active at layer 0
    bank.shifts[0, :2] = shifts[:2]
    bank.active[1, :3] = True
    bank.active[0, :2] = True
    bank.rules[:3] = rules
    return bank, shifts, names


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bank_steers_the_stream_of_its_slotted_rows_and_counts_them(dtype):
    from unlock.method.steer import DoseMeter

    bank, shifts, names = _bank()
    gen = torch.Generator().manual_seed(5)
    hidden, residual = (torch.randn(6, 32, generator=gen).to(dtype) for _ in range(2))
    slots = [-1, 0, 2, 1, -1, 2]
    meters = [3, 0, 1, 0, 3, 2]
    bank.slots[:6], bank.meter[:6] = torch.tensor(slots), torch.tensor(meters)
    for layer in (0, 1):
        out_h, out_r = bank.steer(layer, (hidden.clone(), residual.clone()))
        reference = {m: DoseMeter() for m in range(3)}
        for i, slot in enumerate(slots):
            if slot < 0 or not bank.active[layer, slot]:  # left exactly as the layer returned it
                assert torch.equal(out_h[i], hidden[i]) and torch.equal(out_r[i], residual[i]), (layer, i)
                continue
            stream = (hidden[i : i + 1].float() + residual[i : i + 1].float()).to(dtype)
            expected = apply_shift(stream, shifts[slot], names[slot])
            assert torch.equal(out_h[i : i + 1], expected) and not out_r[i].any(), (layer, i)
            reference[meters[i]].add(layer, stream, expected)
        for m in range(3):
            want = reference[m].means().get(layer)
            assert int(bank.count[layer, m]) == (reference[m]._sums.get(layer, [0, 0])[1]), (layer, m)
            if want is not None:
                assert float(bank.dose[layer, m]) / int(bank.count[layer, m]) == pytest.approx(want, rel=1e-5)
        assert int(bank.count[layer, 3]) == 0, "rows not steered count nowhere"
    assert bank.count[0].sum() == 2 and bank.count[1].sum() == 4  # slot 2 steers layer 1 only


def test_the_compiled_bank_follows_its_buffers_between_steps():
    """Inductor (as vLLM compiles a decoder layer) fuses the bank's update into one graph that reads the
    buffers when it runs: new slots, shifts and meters take effect without a recompile, counts add up."""
    bank, _, _ = _bank()
    weight = torch.randn(32, 32, generator=torch.Generator().manual_seed(6)) / 8

    def layer_step(hidden: torch.Tensor, residual: torch.Tensor):
        out = (hidden @ weight, residual + hidden)  # a decoder layer's (hidden, residual)
        return bank.steer(1, out)

    compiled = torch.compile(layer_step, fullgraph=True, backend="inductor", dynamic=True)
    gen = torch.Generator().manual_seed(7)
    hidden, residual = torch.randn(5, 32, generator=gen), torch.randn(5, 32, generator=gen)
    counts = []
    for pattern, shift_scale in (([-1] * 5, 1.0), ([0, -1, 2, 1, -1], 1.0), ([1, 1, 1, 1, 1], 3.0), ([2, -1], 1.0)):
        bank.slots.fill_(-1)
        bank.slots[: len(pattern)] = torch.tensor(pattern)
        bank.meter[: len(pattern)] = torch.tensor([i % 3 for i in range(len(pattern))])
        bank.shifts.mul_(shift_scale)
        n = len(pattern) if len(pattern) > 2 else 5
        before = bank.count.clone()
        got = compiled(hidden[:n], residual[:n])
        eager_counts = bank.count.clone()
        bank.count.copy_(before)
        expected = layer_step(hidden[:n], residual[:n])
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
        assert torch.equal(bank.count, eager_counts)
        counts.append(int(bank.count[1].sum() - before[1].sum()))
    assert counts == [0, 3, 5, 1], counts
