"""What one layer's steering update costs, by implementation, beside what the model's forward pass costs.

    python -m benchmarks.steer_kernels [--device cuda] [--width 3584] [--layers 28]

Per shape (batch x tokens steered): the unsteered forward pass of a random Qwen2 model of that width and
depth, and 28 (layers) calls of each implementation of the update: the hooks' eager ops on a view
(``apply_shift`` written into the view, as the hooks write it), the same ops reading a bf16 stream
by type promotion instead of through a float32 copy (a candidate: on a CPU such mixed-dtype ops are
slower, on a GPU the copy is memory traffic), the hooks' update compiled by torch.compile (one fused
kernel where Inductor fuses it), and the graph-safe op (``steer_rows``) eager. Times by CUDA events (or perf_counter on
CPU), median of 30; the ratio column is (forward + one update per layer) / forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from unlock.method.steer import _TINY, apply_shift, steering_shift
from unlock.method.steer_op import RULE_CODES, steer_rows


def _time(fn: Callable[[], object], device: str, repeats: int = 30) -> float:
    """Median seconds of ``fn`` (after 3 warm-up calls)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            begin = time.perf_counter()
            fn()
            times.append(time.perf_counter() - begin)
    return statistics.median(times)


# (batch, tokens, which positions are steered)
SHAPES = ((8, 40, "last"), (8, 40, "all"), (64, 512, "last"), (64, 512, "all"))


def _write_back(hidden: torch.Tensor, shift: torch.Tensor) -> None:
    apply_shift(hidden, shift, "norm_preserving", out=hidden)


def _promoted(hidden: torch.Tensor, shift: torch.Tensor) -> None:
    """apply_shift's norm-preserving update with no float32 copy of ``hidden``: each op reads it and
    computes in float32 by type promotion (the same values; ``tests/test_steer.py`` pins the hooks' own)."""
    norm = torch.linalg.vector_norm(hidden, dim=-1, keepdim=True, dtype=torch.float32).clamp_min(_TINY)
    shifted = torch.addcdiv(shift, hidden, norm)
    torch.mul(shifted, norm / torch.linalg.vector_norm(shifted, dim=-1, keepdim=True), out=hidden)


def _model(width: int, layers: int, intermediate: int, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=384,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // 128),
        num_key_value_heads=max(1, width // 896),
        intermediate_size=intermediate,
    )
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()


def measure(width: int, layers: int, intermediate: int, device: str, dtype: torch.dtype | None = None) -> list[dict]:
    """One row per (shape, implementation): forward ms, ``layers`` updates ms, (forward + updates) / forward.
    ``dtype``: bf16 on CUDA (as the paper's models run there), float32 elsewhere, unless given."""
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
    model = _model(width, layers, intermediate, device, dtype)
    shift = steering_shift(torch.randn(width), 0.1, "norm_preserving").to(device)
    compiled = torch.compile(_write_back, dynamic=True)
    shifts, rules = shift.unsqueeze(0), torch.tensor([RULE_CODES["norm_preserving"]], device=device)
    results = []
    for batch, tokens, steered in SHAPES:
        ids = torch.randint(3, 384, (batch, tokens), device=device)
        with torch.inference_mode():
            forward = _time(lambda ids=ids: model(input_ids=ids), device)
        rows = batch if steered == "last" else batch * tokens
        hidden = torch.randn(batch, tokens, width, device=device, dtype=dtype)
        view = hidden[:, -1] if steered == "last" else hidden
        flat = hidden.view(-1, width)[-rows:] if steered == "all" else hidden[:, -1].contiguous()
        slots = torch.zeros(rows, dtype=torch.long, device=device)
        updates = {
            "eager ops on a view": lambda t: _write_back(t, shift),
            "eager, no float32 copy": lambda t: _promoted(t, shift),
            "torch.compile": lambda t: compiled(t, shift),
            "steer_rows op": lambda t, slots=slots: steer_rows(t.reshape(-1, width), shifts, slots, rules),
        }
        for name, update in updates.items():
            target = flat if name == "steer_rows op" else view
            with torch.inference_mode():
                _check(name, update, target, shift)
                cost = _time(lambda update=update, target=target: [update(target) for _ in range(layers)], device)
            shape = f"{batch} x {tokens}, {steered} ({rows} rows)"
            results.append({"shape": shape, "forward_ms": forward * 1e3, "impl": name, "updates_ms": cost * 1e3})
            results[-1]["ratio"] = (forward + cost) / forward
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--intermediate", type=int, default=18944)
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16 on CUDA, else float32")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(f"{'shape':<28} {'forward ms':>10} {'impl':<22} {f'{args.layers} updates ms':>13} {'ratio':>7}", flush=True)
    try:
        results = measure(args.width, args.layers, args.intermediate, args.device, dtype)
    except WrongUpdate as error:
        raise SystemExit(f"steer_kernels: {error}") from None
    for r in results:
        print(f"{r['shape']:<28} {r['forward_ms']:10.2f} {r['impl']:<22} {r['updates_ms']:13.3f} {r['ratio']:7.3f}")
    return results


class WrongUpdate(RuntimeError):
    """An implementation gave another update than the hooks': it is not timed (``make gpu-check`` turns
    this into a FAILED row and goes on; the command line exits with it)."""


def _check(name: str, update: Callable[[torch.Tensor], object], target: torch.Tensor, shift: torch.Tensor) -> None:
    """Time an implementation only once it gives the hooks' update: a wrong kernel's speed means nothing."""
    expected = apply_shift(target, shift, "norm_preserving")
    got = target.clone()
    update(got)
    tol = 1e-5 if got.dtype == torch.float32 else 1e-2  # a fused kernel may round a bf16 result the other way
    if not torch.allclose(got.float(), expected.float(), rtol=tol, atol=tol):
        raise WrongUpdate(
            f"{name} does not compute the hooks' update (max |diff| "
            f"{float((got.float() - expected.float()).abs().max()):.2e}); not timed"
        )


if __name__ == "__main__":
    main()
