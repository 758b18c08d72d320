"""Where the tiny model's steering and capture overheads go (the figures in README's Performance).

    .venv/bin/python scripts/tiny_overheads.py [--pairs 300]

Same model, prompts and pairing as `make bench`: each line is a median ratio over --pairs A/B pairs
against the unsteered scoring pass (steering) or the full pass with hidden states (capture), then the
time spent inside each steering hook during real forward passes.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from unlock.bench import MODELS, paired_ratios, prompts, random_vectors
from unlock.capture import capture_activations
from unlock.loading import load_model
from unlock.models import decoder_layers
from unlock.steer import Steering


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


def median_ratio(a, b, pairs: int) -> str:
    ratios = paired_ratios(a, b, repeats=pairs, min_time=0.0)
    return f"{statistics.median(ratios):.4f}  ({len(ratios)} pairs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--cache", default="cache")
    args = parser.parse_args()
    loaded = load_model({**MODELS["tiny"], "device": "cpu"}, args.cache)
    model, tok = loaded.model, loaded.tokenizer
    texts = prompts(8)
    batch = tok(texts, return_tensors="pt", padding=True)
    vectors = random_vectors(model)
    blocks = decoder_layers(model)

    def score(ctx=None):
        def call():
            with torch.inference_mode(), (ctx or contextlib.nullcontext()):
                model(**batch)
        return call

    print(f"tiny model, batch {tuple(batch['input_ids'].shape)}, {torch.get_num_threads()} threads")
    print("steered / unsteered scoring, median of per-pair ratios:")
    for label, ctx in [("unsteered (A/A)", None), ("no-op hook on every block", NoopHooks(blocks)),
                       ("Steering, alpha 0", Steering(model, vectors, 0.0)),
                       ("Steering, one layer", Steering(model, vectors, 0.1, layers=[len(blocks) // 2])),
                       ("Steering, every layer (paper's rule)", Steering(model, vectors, 0.1)),
                       ("Steering, every layer, add rule", Steering(model, vectors, 0.1, rule="add"))]:
        print(f"  {label:38s} {median_ratio(score(ctx), score(), args.pairs)}", flush=True)

    # Time inside the hooks during real forward passes, where they run between the model's kernels.
    steering = Steering(model, vectors, 0.1)
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
                model(input_ids=torch.tensor(encoded["input_ids"]), attention_mask=torch.tensor(encoded["attention_mask"]),
                      use_cache=False)
            except _Stop:
                pass
            finally:
                handle.remove()

    print(f"capture of layer {layer} of {len(blocks)} / full pass (target {1.1 * (layer + 1) / len(blocks):.3f}):")
    print(f"  {'capture_activations':38s} {median_ratio(capture, full, args.pairs)}")
    print(f"  {'bare early exit':38s} {median_ratio(bare_early_exit, full, args.pairs)}")


if __name__ == "__main__":
    main()
