"""Where the tiny model's steering and capture overheads go (the figures in README's Performance).

    .venv/bin/python benchmarks/tiny_overheads.py [--pairs 300] [--kernels]

Same model, prompts and pairing as `make bench`: each line is a median ratio over --pairs A/B pairs
against the unsteered scoring pass (steering) or the full pass with hidden states (capture), then the
time spent inside each steering hook during real forward passes.

--kernels also tries to fuse the paper's rule into one kernel, which is what the steering miss would
need: torch.compile of the rule, and a hand-written C++ op (torch.utils.cpp_extension.load_inline,
needs a C++ compiler; about a minute to build here). It times one update of the last column both ways
and the steered pass with the C++ op in every hook. The harness itself does not ship either.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from benchmarks.bench import MODELS, paired_ratios, prompts, random_vectors
from unlock.method.blocks import decoder_layers
from unlock.method.capture import capture_activations
from unlock.method.steer import LAST_COLUMN, Steering, SteeringSettings, apply_shift
from unlock.models.loading import load_model

# h <- ||h|| * normalize(h / ||h|| + shift) on hidden[:, -1, :], in place (float32, last dim contiguous).
FUSED_RULE_CPP = r"""
#include <torch/extension.h>
#include <cmath>
void steer_last_(torch::Tensor hidden, torch::Tensor shift) {
  TORCH_CHECK(hidden.dtype() == torch::kFloat32 && hidden.dim() == 3 && hidden.stride(2) == 1, "float32 (B, T, D)");
  const int64_t rows = hidden.size(0), last = hidden.size(1) - 1, dim = hidden.size(2);
  float* base = hidden.data_ptr<float>();
  const float* s = shift.contiguous().data_ptr<float>();
  for (int64_t b = 0; b < rows; ++b) {
    float* h = base + b * hidden.stride(0) + last * hidden.stride(1);
    double n = 0, m = 0;
    for (int64_t i = 0; i < dim; ++i) n += double(h[i]) * h[i];
    n = std::max(std::sqrt(n), 1e-30);
    for (int64_t i = 0; i < dim; ++i) { double t = h[i] / n + s[i]; m += t * t; }
    const double scale = n / std::sqrt(m);
    for (int64_t i = 0; i < dim; ++i) h[i] = float((h[i] / n + s[i]) * scale);
  }
}
"""


class _Stop(Exception):
    pass


def _raise(*_args):
    raise _Stop


class NoopHooks(contextlib.AbstractContextManager):
    """A forward hook on every block that does nothing: the price of having hooks at all."""

    def __init__(self, blocks) -> None:
        self.blocks, self.handles = blocks, []

    def __enter__(self):
        self.handles = [b.register_forward_hook(lambda *_: None) for b in self.blocks]
        return self

    def __exit__(self, *_exc) -> None:
        for h in self.handles:
            h.remove()


class FusedSteering(Steering):
    """Steering whose layer hooks run the paper's rule as one C++ op (last column, inference only)."""

    op = None

    def _make_layer_hook(self, layer: int):
        shift = self._shifts[layer].contiguous()

        def hook(_module, _inputs, output):
            if self._index is None:
                return None
            assert self._index is LAST_COLUMN and not torch.is_grad_enabled()
            self.op(output[0] if isinstance(output, tuple) else output, shift)
            return None

        return hook


def per_call_us(fn, number: int = 2000) -> float:
    import timeit

    return min(timeit.repeat(fn, number=number, repeat=7)) / number * 1e6


def kernels(model, batch, vectors, score, pairs: int) -> None:
    from torch.utils.cpp_extension import load_inline

    start = time.perf_counter()
    module = load_inline(
        "unlock_fused_rule", cpp_sources=FUSED_RULE_CPP, functions=["steer_last_"], extra_cflags=["-O2"]
    )
    print(f"fusing the paper's rule (C++ op built in {time.perf_counter() - start:.0f} s):")
    FusedSteering.op = staticmethod(module.steer_last_)
    hidden = torch.randn(8, batch["input_ids"].shape[1], model.config.hidden_size)
    shift = Steering(model, vectors, SteeringSettings(0.1))._shifts[0]

    def eager_rule():
        hidden[LAST_COLUMN] = apply_shift(hidden[LAST_COLUMN], shift, "norm_preserving")

    start = time.perf_counter()
    compiled = torch.compile(lambda h: apply_shift(h, shift, "norm_preserving"), dynamic=False)
    with torch.inference_mode():
        compiled(hidden[LAST_COLUMN])
        built = time.perf_counter() - start

        def compiled_rule():
            hidden[LAST_COLUMN] = compiled(hidden[LAST_COLUMN])

        for label, fn in [
            ("eager (the harness)", eager_rule),
            (f"torch.compile (built in {built:.0f} s)", compiled_rule),
            ("C++ op", lambda: module.steer_last_(hidden, shift)),
        ]:
            print(f"  one update of the last column, {label:30s} {per_call_us(fn):6.1f} us")
        eager, fused = (
            Steering(model, vectors, SteeringSettings(0.1)),
            FusedSteering(model, vectors, SteeringSettings(0.1)),
        )
        with eager:
            reference = model(**batch).logits
        with fused:
            difference = (model(**batch).logits - reference).abs().max().item()
    print(
        f"  steered scoring, every layer, C++ op in each hook {median_ratio(score(fused), score(), pairs)}"
        f"  (max logit difference from eager {difference:.1e})"
    )


def median_ratio(a, b, pairs: int) -> str:
    ratios = paired_ratios(a, b, repeats=pairs, min_time=0.0)
    return f"{statistics.median(ratios):.4f}  ({len(ratios)} pairs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--cache", default="cache")
    parser.add_argument("--kernels", action="store_true", help="also time fused versions of the rule (builds a C++ op)")
    args = parser.parse_args()
    loaded = load_model({**MODELS["tiny"], "device": "cpu"}, args.cache)
    model, tok = loaded.model, loaded.tokenizer
    texts = prompts(8)
    batch = tok(texts, return_tensors="pt", padding=True)
    vectors = random_vectors(model)
    blocks = decoder_layers(model)

    def score(ctx=None):
        def call():
            with torch.inference_mode(), ctx or contextlib.nullcontext():
                model(**batch)

        return call

    print(f"tiny model, batch {tuple(batch['input_ids'].shape)}, {torch.get_num_threads()} threads")
    print("steered / unsteered scoring, median of per-pair ratios:")
    for label, ctx in [
        ("unsteered (A/A)", None),
        ("no-op hook on every block", NoopHooks(blocks)),
        ("Steering, alpha 0", Steering(model, vectors, SteeringSettings(0.0))),
        ("Steering, one layer", Steering(model, vectors, SteeringSettings(0.1), layers=[len(blocks) // 2])),
        ("Steering, every layer (paper's rule)", Steering(model, vectors, SteeringSettings(0.1))),
        ("Steering, every layer, add rule", Steering(model, vectors, SteeringSettings(0.1, "add"))),
    ]:
        print(f"  {label:38s} {median_ratio(score(ctx), score(), args.pairs)}", flush=True)

    if args.kernels:
        kernels(model, batch, vectors, score, args.pairs)

    # Time inside the hooks during real forward passes, where they run between the model's kernels.
    steering = Steering(model, vectors, SteeringSettings(0.1))
    spent = {"pre-forward position lookup": 0.0, "layer hooks (all layers)": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[key] += time.perf_counter() - start

        return wrapper

    steering._pre_forward = timed(steering._pre_forward, "pre-forward position lookup")
    make_hook = steering._make_layer_hook
    steering._make_layer_hook = lambda layer: timed(make_hook(layer), "layer hooks (all layers)")
    calls = 200
    for _ in range(5):
        score(steering)()
    spent.update(dict.fromkeys(spent, 0.0))
    start = time.perf_counter()
    for _ in range(calls):
        score(steering)()
    steered_ms = (time.perf_counter() - start) / calls * 1e3
    start = time.perf_counter()
    for _ in range(calls):
        with steering:
            pass
    enter_exit = (time.perf_counter() - start) / calls
    print(f"inside a steered scoring pass ({steered_ms:.1f} ms, mean of {calls}):")
    for key, total in spent.items():
        print(f"  {key:38s} {total / calls * 1e6:7.1f} us")
    print(f"  {'entering and leaving the context':38s} {enter_exit * 1e6:7.1f} us")

    layer = len(blocks) // 4

    def full():
        with torch.inference_mode():
            model(**tok(texts, return_tensors="pt", padding=True), output_hidden_states=True)

    def capture():
        with torch.inference_mode():
            capture_activations(model, tok, texts, layers=[layer], batch_size=8, progress=False)

    def bare_early_exit():  # tokenize, run blocks 0..layer, stop: no capture code at all
        with torch.inference_mode():
            encoded = tok(texts, padding=True)
            handle = blocks[layer].register_forward_hook(_raise)
            try:
                model(
                    input_ids=torch.tensor(encoded["input_ids"]),
                    attention_mask=torch.tensor(encoded["attention_mask"]),
                    use_cache=False,
                )
            except _Stop:
                pass
            finally:
                handle.remove()

    print(f"capture of layer {layer} of {len(blocks)} / full pass (target {1.1 * (layer + 1) / len(blocks):.3f}):")
    print(f"  {'capture_activations':38s} {median_ratio(capture, full, args.pairs)}")
    print(f"  {'bare early exit':38s} {median_ratio(bare_early_exit, full, args.pairs)}")


if __name__ == "__main__":
    main()
