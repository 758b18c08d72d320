"""Two independent paths to a steered greedy generation, for the phase tests.

``steered_generate`` is what users run: ``model.generate()`` inside :class:`Steering`, which must tell
the prefill pass from decoding steps by itself. ``reference_generate`` never asks that question: the
test decides which positions of which call are steered, applies :func:`apply_rule` with hooks of its
own, and decodes greedily by hand from the prefill's KV cache. Per-step logits of the two must agree.
"""

from __future__ import annotations

import contextlib
import inspect

import torch
from transformers import Cache

from unlock.method.blocks import decoder_layers
from unlock.method.capture import position_ids_from_mask
from unlock.method.steer import Steering, SteeringSettings, apply_rule

# What each Steering ``positions`` mode steers, by phase: (prefill positions, decoding steps steered).
PHASES = {"last": ("last", False), "generated": (None, True), "all": ("valid", True), "prompt": ("valid", False)}


def greedy_generate(model, batch, steps, **kwargs):
    """(tokens (B, steps), logits (B, steps, V)) of greedy generate(), exactly ``steps`` new tokens;
    ``kwargs`` go to generate() (a cache implementation, a compile config)."""
    with torch.no_grad():
        out = model.generate(
            **batch,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            output_logits=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    prompt_len = batch["input_ids"].shape[1]
    return out.sequences[:, prompt_len:], torch.stack(out.logits, dim=1).float()


def steered_generate(model, batch, vectors, alpha, positions, steps):
    """(tokens (B, steps), logits (B, steps, V)) of greedy generate() under Steering."""
    with Steering(model, vectors, SteeringSettings(alpha, positions=positions)):
        return greedy_generate(model, batch, steps)


@contextlib.contextmanager
def _manual_steering(model, vectors, alpha, index):
    """Forward hooks adding the paper's rule at ``index`` (an index into (B, T, d)), or nothing if None."""
    blocks = decoder_layers(model)

    def make(layer):
        def hook(_module, _inputs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[index] = apply_rule(hidden[index], vectors[layer], alpha, "norm_preserving")

        return hook

    handles = [] if index is None else [blocks[j].register_forward_hook(make(j)) for j in vectors]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cache_keyword(model) -> str:
    """The keyword this transformers version's forward takes the KV cache under (the test's own
    bookkeeping; the library code finds the cache by type)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(output) -> Cache:
    return next(value for value in output.values() if isinstance(value, Cache))


def reference_generate(model, batch, vectors, alpha, positions, steps):
    """Prefill with the test's own hooks at the mode's prompt positions (left padding: the last prompt
    token is the last column), then greedy decoding step by step from that KV cache, each step steered
    at its one new token or not at all."""
    prefill, decode = PHASES[positions]
    mask = batch["attention_mask"]
    if prefill == "last":
        prefill_index = (slice(None), -1)
    elif prefill == "valid":
        prefill_index = mask.bool()
    else:
        prefill_index = None
    tokens, logits = [], []
    with torch.no_grad():
        with _manual_steering(model, vectors, alpha, prefill_index):
            out = model(
                input_ids=batch["input_ids"],
                attention_mask=mask,
                position_ids=position_ids_from_mask(mask),
                use_cache=True,
            )
        for step in range(steps):
            logits.append(out.logits[:, -1].float())
            tokens.append(out.logits[:, -1].argmax(-1))
            if step == steps - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            with _manual_steering(model, vectors, alpha, (slice(None), slice(None)) if decode else None):
                out = model(
                    input_ids=tokens[-1][:, None],
                    attention_mask=mask,
                    position_ids=mask.sum(1, keepdim=True) - 1,
                    use_cache=True,
                    **{cache_keyword(model): _cache_of(out)},
                )
    return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)


def assert_same_generation(model, batch, vectors, alpha, positions, steps, atol=1e-4, rtol=0.0):
    tokens, logits = steered_generate(model, batch, vectors, alpha, positions, steps)
    ref_tokens, ref_logits = reference_generate(model, batch, vectors, alpha, positions, steps)
    torch.testing.assert_close(
        logits, ref_logits, atol=atol, rtol=rtol, msg=lambda m: f"positions={positions}: per-step logits differ\n{m}"
    )
    assert torch.equal(tokens, ref_tokens), f"positions={positions}: greedy tokens differ"
    return logits
