"""What one layer's steering update costs, by implementation, beside what the model's forward pass costs.

    python -m benchmarks.steer_kernels [--device cuda] [--width 3584] [--layers 28]

Per shape (batch x tokens steered): the unsteered forward pass of a random Qwen2 model of that width and
depth, and 28 (layers) calls of each implementation of the update: the hooks' eager ops on a view
(``apply_shift`` + write-back), the same compiled by torch.compile (one fused kernel where Inductor
fuses it), and the graph-safe op (``steer_rows``) eager. Times by CUDA events (or perf_counter on
CPU), median of 30; the ratio column is (forward + one update per layer) / forward.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from unlock.method.steer import apply_shift, steering_shift
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


def _write_back(hidden: torch.Tensor, shift: torch.Tensor) -> None:
    hidden.copy_(apply_shift(hidden, shift, "norm_preserving"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=3584)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--intermediate", type=int, default=18944)
    args = parser.parse_args(argv)
    from transformers import AutoModelForCausalLM, Qwen2Config

    device, dtype = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32
    config = Qwen2Config(
        vocab_size=384,
        hidden_size=args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.width // 128),
        num_key_value_heads=max(1, args.width // 896),
        intermediate_size=args.intermediate,
    )
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    shift = steering_shift(torch.randn(args.width), 0.1, "norm_preserving").to(device)
    compiled = torch.compile(_write_back, dynamic=True)
    shifts = shift.unsqueeze(0)
    rules = torch.tensor([RULE_CODES["norm_preserving"]], device=device)
    print(f"{'shape':<28} {'forward ms':>10} {'impl':<22} {f'{args.layers} updates ms':>13} {'ratio':>7}")
    for batch, tokens, steered in ((8, 40, "last"), (8, 40, "all"), (64, 512, "last"), (64, 512, "all")):
        ids = torch.randint(3, 384, (batch, tokens), device=device)
        with torch.inference_mode():
            forward = _time(lambda ids=ids: model(input_ids=ids), device)
        rows = batch if steered == "last" else batch * tokens
        hidden = torch.randn(batch, tokens, args.width, device=device, dtype=dtype)
        view = hidden[:, -1] if steered == "last" else hidden
        flat = hidden.view(-1, args.width)[-rows:] if steered == "all" else hidden[:, -1].contiguous()
        slots = torch.zeros(rows, dtype=torch.long, device=device)
        impls = {
            "eager ops on a view": lambda view=view: _write_back(view, shift),
            "torch.compile": lambda view=view: compiled(view, shift),
            "steer_rows op": lambda flat=flat, slots=slots: steer_rows(flat, shifts, slots, rules),
        }
        for name, impl in impls.items():
            with torch.inference_mode():
                cost = _time(lambda impl=impl: [impl() for _ in range(args.layers)], device)
            shape = f"{batch} x {tokens}, {steered} ({rows} rows)"
            print(f"{shape:<28} {forward * 1e3:10.2f} {name:<22} {cost * 1e3:13.3f} {(forward + cost) / forward:7.3f}")


if __name__ == "__main__":
    main()
