"""Steering: identity at alpha 0, exact placement, the paper's update rule, batching, cleanup."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unlock.method.capture import capture_activations, position_ids_from_mask
from unlock.method.steer import (
    EVERY_POSITION,
    LAST_COLUMN,
    Steering,
    SteeringSettings,
    apply_rule,
    apply_shift,
    steering_shift,
)
from unlock.models.tiny import tiny_tokenizer

LAYERS = 4
WIDTH = 64


def _vectors(seed: int = 0, layers: int = LAYERS, width: int = WIDTH) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(width, generator=gen) for layer in range(layers)}


def _logits(model, tokenizer, prompts) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))
    return out.logits, batch["attention_mask"]


def _generate(model, tokenizer, prompts, max_new_tokens: int = 6) -> torch.Tensor:
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, batch["input_ids"].shape[1] :]


def _hook_count(model) -> int:
    """Hooks on every module (transformers registers some of its own, so compare counts)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_alpha_zero_is_bit_identical(llama, tokenizer, prompts):
    plain, _ = _logits(llama, tokenizer, prompts)
    plain_tokens = _generate(llama, tokenizer, prompts)
    for rule in ("norm_preserving", "add"):
        for positions in ("last", "all"):
            with Steering(llama, _vectors(), SteeringSettings(0.0, rule, positions)):
                steered, _ = _logits(llama, tokenizer, prompts)
                tokens = _generate(llama, tokenizer, prompts)
            assert torch.equal(steered, plain)
            assert torch.equal(tokens, plain_tokens)


def test_default_mode_changes_only_last_prompt_position(llama, tokenizer, prompts):
    plain = capture_activations(llama, tokenizer, prompts, position="all", progress=False)
    with Steering(llama, _vectors(), SteeringSettings(0.5)) as steering:
        steered = capture_activations(llama, tokenizer, prompts, position="all", progress=False)
    ends = np.cumsum(plain.token_counts) - 1  # row index of each prompt's last token in the flat layout
    for layer in range(LAYERS):
        changed = (steered[layer] - plain[layer]).abs().amax(dim=1) > 0
        assert changed.nonzero().flatten().tolist() == ends.tolist(), f"layer {layer}"
    assert steering.steered_calls == {"prefill": 1, "decode": 0}


def test_added_vector_shows_up_exactly_in_next_layer_input(llama, tokenizer, prompts):
    layer, alpha = 1, 0.7
    vector = _vectors(2)[layer]
    seen: list[torch.Tensor] = []
    handle = llama.model.layers[layer + 1].register_forward_pre_hook(lambda _m, args: seen.append(args[0].clone()))
    try:
        _logits(llama, tokenizer, prompts)
        with Steering(llama, {layer: vector}, SteeringSettings(alpha, "add", "prompt")):
            _, mask = _logits(llama, tokenizer, prompts)
    finally:
        handle.remove()
    delta = seen[1] - seen[0]
    expected = alpha * vector * mask[..., None]
    torch.testing.assert_close(delta, expected, atol=1e-5, rtol=0)


def test_norm_preserving_update_matches_float64_reference(llama, tokenizer, prompts):
    layer, alpha = 2, 0.2
    vector = _vectors(3)[layer]
    plain = capture_activations(llama, tokenizer, prompts, layers=[layer], progress=False)[layer]
    with Steering(llama, {layer: vector}, SteeringSettings(alpha)):
        steered = capture_activations(llama, tokenizer, prompts, layers=[layer], progress=False)[layer]
    h, r = plain.double().numpy(), vector.double().numpy()
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    shifted = h / norm + alpha * r / np.linalg.norm(r)
    expected = norm * shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
    np.testing.assert_allclose(steered.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(steered.numpy(), axis=1), norm[:, 0], rtol=1e-5)


def test_apply_rule_add_and_dtype():
    h = torch.randn(3, 8, dtype=torch.bfloat16)
    v = torch.randn(8)
    out = apply_rule(h, v, 0.5, "add")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), (h.float() + 0.5 * v).bfloat16().float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", ["norm_preserving", "add"])
def test_apply_shift_into_out_is_bitwise_the_returned_update(dtype, rule):
    """The hooks write a view's update in place (``out=``, the view itself); the values must be the
    ones the out-of-place update returns, bit for bit."""
    gen = torch.Generator().manual_seed(5)
    hidden = (torch.randn(3, 7, WIDTH, generator=gen) * 4).to(dtype)
    shift = steering_shift(torch.randn(WIDTH, generator=gen), 0.3, rule)
    expected = apply_shift(hidden, shift, rule)
    written = hidden.clone()
    returned = apply_shift(written, shift, rule, out=written)
    assert returned.data_ptr() == written.data_ptr() and written.dtype == dtype
    assert torch.equal(written, expected)
    assert not torch.equal(written, hidden)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", ["norm_preserving", "add"])
def test_a_low_precision_stream_gets_its_float32_update_rounded_once(dtype, rule):
    """A bf16/fp16 stream's update is the float32 stream's update rounded once to its dtype, whether
    returned or written into the view it came from (the last float32 op writes into ``out``)."""
    gen = torch.Generator().manual_seed(6)
    hidden = (torch.randn(4, 9, WIDTH, generator=gen) * 3).to(dtype)
    shift = steering_shift(torch.randn(WIDTH, generator=gen), 0.4, rule)
    reference = apply_shift(hidden.float(), shift, rule).to(dtype)
    assert torch.equal(apply_shift(hidden, shift, rule), reference)
    written = hidden.clone()
    apply_shift(written[:, -1], shift, rule, out=written[:, -1])
    assert torch.equal(written[:, -1], reference[:, -1]) and torch.equal(written[:, :-1], hidden[:, :-1])


def test_generated_mode_leaves_prompt_logits_untouched(llama, tokenizer, prompts):
    plain, mask = _logits(llama, tokenizer, prompts)
    plain_tokens = _generate(llama, tokenizer, prompts)
    with Steering(llama, _vectors(4), SteeringSettings(2.0, "add", "generated")):
        steered, _ = _logits(llama, tokenizer, prompts)
        tokens = _generate(llama, tokenizer, prompts)
    assert torch.equal(steered, plain)
    assert torch.equal(tokens[:, 0], plain_tokens[:, 0]), "the first token comes from unsteered prompt logits"
    assert not torch.equal(tokens, plain_tokens), "later tokens are steered"


def test_prompt_boundary_for_loglikelihood_scoring(llama, tokenizer):
    """One pass over context + continuation: only positions after the boundary see the vector."""
    texts = ["Question: What is 3 plus 4?\nAnswer: 7", "Hi there 5"]
    plain, mask = _logits(llama, tokenizer, texts)
    boundary = torch.tensor([mask.shape[1] - 3, mask.shape[1] - 2])
    steering = Steering(llama, _vectors(5), SteeringSettings(1.0, "add", "generated"))
    with steering, steering.prompt_boundary(boundary):
        steered, _ = _logits(llama, tokenizer, texts)
    for row, last in enumerate(boundary.tolist()):
        assert torch.equal(steered[row, : last + 1], plain[row, : last + 1])
        assert not torch.allclose(steered[row, last + 1 :], plain[row, last + 1 :])


def test_batched_left_padded_equals_one_by_one(llama, tokenizer, prompts):
    vectors = _vectors(6)
    with Steering(llama, vectors, SteeringSettings(0.5)):
        batch_logits, mask = _logits(llama, tokenizer, prompts)
        batch_tokens = _generate(llama, tokenizer, prompts)
        for row, prompt in enumerate(prompts):
            single_logits, _ = _logits(llama, tokenizer, [prompt])
            n = single_logits.shape[1]
            torch.testing.assert_close(batch_logits[row, -n:], single_logits[0], atol=1e-4, rtol=1e-4)
            assert torch.equal(batch_tokens[row], _generate(llama, tokenizer, [prompt])[0])


def test_hooks_removed_even_after_exception(llama, tokenizer, prompts):
    plain, _ = _logits(llama, tokenizer, prompts)
    before = _hook_count(llama)
    with pytest.raises(RuntimeError, match="boom"):
        with Steering(llama, _vectors(), SteeringSettings(0.5)):
            assert _hook_count(llama) == before + 1 + LAYERS
            raise RuntimeError("boom")
    assert _hook_count(llama) == before
    after, _ = _logits(llama, tokenizer, prompts)
    assert torch.equal(after, plain)


def test_layer_subset_and_single_layer(llama, tokenizer, prompts):
    plain = capture_activations(llama, tokenizer, prompts, progress=False)
    with Steering(llama, _vectors(), SteeringSettings(0.5), layers=[2]):
        steered = capture_activations(llama, tokenizer, prompts, progress=False)
    for layer in (0, 1):
        assert torch.equal(steered[layer], plain[layer])
    for layer in (2, 3):
        assert not torch.allclose(steered[layer], plain[layer])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"alpha": float("nan")}, ValueError, r"alpha nan is out of range: must be a finite number"),
        ({"alpha": float("inf")}, ValueError, r"alpha inf is out of range"),
        ({"rule": "multiply"}, ValueError, r"unknown steering rule 'multiply'; allowed: norm_preserving, add"),
        (
            {"positions": "first"},
            ValueError,
            r"unknown steering positions 'first'; allowed: last, prompt, generated, all",
        ),
        ({"vectors": {7: torch.ones(WIDTH)}}, ValueError, r"steering layer 7 is out of range.*\[0, 3\]"),
        ({"vectors": {0: torch.ones(5)}}, ValueError, r"shape \(5,\), expected \(64,\)"),
        ({"vectors": {0: torch.zeros(WIDTH)}}, ValueError, r"layer 0 is zero"),
        ({"vectors": {}}, ValueError, r"no steering vectors given"),
        ({"layers": [1]}, ValueError, r"steering layers \[1\] have no vector"),
    ],
)
def test_bad_steering_arguments(llama, kwargs, error, message):
    args = {"vectors": {0: torch.ones(WIDTH)}, "alpha": 0.1, **kwargs}
    how = {key: args.pop(key) for key in ("alpha", "rule", "positions") if key in args}
    with pytest.raises(error, match=message):
        Steering(llama, settings=SteeringSettings(**how), **args)


def test_steering_takes_its_settings_whole(llama):
    """alpha, rule and positions arrive as one checked SteeringSettings; a bare number is refused, naming
    the form to use."""
    with pytest.raises(TypeError, match=r"one SteeringSettings, got 0.1: Steering\(model, vectors, SteeringSettings"):
        Steering(llama, {0: torch.ones(WIDTH)}, 0.1)
    steering = Steering(llama, {0: torch.ones(WIDTH)}, SteeringSettings(0.1, "add", "all"))
    assert steering.settings == SteeringSettings(0.1, "add", "all") and steering.alpha == 0.1


@pytest.mark.parametrize("rule", ["norm_preserving", "add"])
@pytest.mark.parametrize("positions", ["last", "prompt", "all"])
def test_inference_fast_path_matches_differentiable_path(llama, tokenizer, prompts, rule, positions):
    """Under no_grad the hook writes the steered rows back in place; with grad it writes them into a
    copy (out of place). Both must give the same logits, and the differentiable path must carry a gradient."""
    batch = tokenizer(prompts[:3], return_tensors="pt", padding=True)
    kwargs = dict(position_ids=position_ids_from_mask(batch["attention_mask"]))
    steering = Steering(llama, _vectors(), SteeringSettings(0.3, rule, positions))
    with torch.no_grad(), steering:
        fast = llama(**batch, **kwargs).logits
    embeds = llama.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    with torch.enable_grad(), steering:
        slow = llama(inputs_embeds=embeds, attention_mask=batch["attention_mask"], **kwargs).logits
    plain, _ = _logits(llama, tokenizer, prompts[:3])
    valid = batch["attention_mask"].bool()
    assert torch.allclose(fast[valid], slow.detach()[valid], atol=1e-5)
    assert not torch.allclose(fast[valid], plain[valid], atol=1e-4)
    slow[valid].sum().backward()
    assert embeds.grad is not None and torch.isfinite(embeds.grad).all()


@pytest.mark.parametrize("rule", ["norm_preserving", "add"])
def test_last_column_view_path_equals_gather_path(llama, tokenizer, prompts, rule):
    """With left padding every prompt ends in the final column, and the hooks use a view of it instead
    of gathering (rows, cols); the same positions given as an explicit boundary take the gather path.
    Both must steer identically, with and without gradients."""
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    assert not batch["attention_mask"][:, 0].all()  # some rows padded, on the left
    kwargs = dict(**batch, position_ids=position_ids_from_mask(batch["attention_mask"]))
    steering = Steering(llama, _vectors(9), SteeringSettings(0.4, rule))
    last = torch.full((len(prompts),), batch["input_ids"].shape[1] - 1)
    results = {}
    for grad in (False, True):
        with torch.set_grad_enabled(grad), steering:
            view = llama(**kwargs).logits
            assert steering._index is LAST_COLUMN
            with steering.prompt_boundary(last):
                gathered = llama(**kwargs).logits
            assert isinstance(steering._index[0], torch.Tensor)
        torch.testing.assert_close(view, gathered, atol=1e-6, rtol=0)
        results[grad] = view.detach()
    torch.testing.assert_close(results[False], results[True], atol=1e-5, rtol=0)
    plain, _ = _logits(llama, tokenizer, prompts)
    assert not torch.allclose(results[False], plain, atol=1e-4)


def test_right_padding_steers_each_rows_own_last_token(llama, tokenizer, prompts):
    """Right padding: prompts end in different columns, so the view path must not be taken."""
    right = tiny_tokenizer(padding_side="right")
    plain = capture_activations(llama, right, prompts, position="all", padding_side="right", progress=False)
    with Steering(llama, _vectors(), SteeringSettings(0.5)):
        steered = capture_activations(llama, right, prompts, position="all", padding_side="right", progress=False)
    ends = np.cumsum(plain.token_counts) - 1
    for layer in range(LAYERS):
        changed = (steered[layer] - plain[layer]).abs().amax(dim=1) > 0
        assert changed.nonzero().flatten().tolist() == ends.tolist(), f"layer {layer}"


@pytest.mark.parametrize("rule", ["norm_preserving", "add"])
@pytest.mark.parametrize("positions", ["last", "all"])
def test_the_measured_dose_is_the_relative_change_of_a_float64_reference(llama, tokenizer, prompts, rule, positions):
    """Steering one layer: the recorded dose is mean ||h' - h|| / ||h|| over the steered positions, with h
    the unsteered state there (the last token; every real token of a padded batch, the mask path, whose
    pads must not count) and h' the rule's update of it, both in float64."""
    layer, alpha = 2, 0.3
    vector = _vectors(4)[layer]
    capture = dict(layers=[layer], position="last" if positions == "last" else "all", progress=False)
    plain = capture_activations(llama, tokenizer, prompts, **capture)[layer]
    settings = SteeringSettings(alpha, rule, positions)
    with Steering(llama, {layer: vector}, settings, measure_dose=True) as steering:
        capture_activations(llama, tokenizer, prompts, **capture)
    h, r = plain.double().numpy(), vector.double().numpy()
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    if rule == "add":
        after = h + alpha * r
    else:
        shifted = h / norm + alpha * r / np.linalg.norm(r)
        after = norm * shifted / np.linalg.norm(shifted, axis=1, keepdims=True)
    expected = (np.linalg.norm(after - h, axis=1) / norm[:, 0]).mean()
    assert steering.dose.means() == pytest.approx({layer: expected}, rel=1e-5)
    with Steering(llama, {layer: vector}, settings) as unmeasured:
        capture_activations(llama, tokenizer, prompts, **capture)
    assert unmeasured.dose is None, "measured only when asked"


@pytest.mark.parametrize("positions", ["all", "prompt"])
def test_every_position_view_path_equals_mask_path(llama, tokenizer, prompts, positions):
    """Without padding, steering every position uses the whole hidden state as a view (no index tensors,
    no gather or scatter). The same prompt left-padded in a batch with a longer one takes the gather
    path, a mask that leaves its pads unsteered: its real positions come out the same."""
    short, long = sorted(prompts, key=lambda p: len(tokenizer(p)["input_ids"]))[:: len(prompts) - 1]
    steering = Steering(llama, _vectors(11), SteeringSettings(0.3, positions=positions))
    with torch.no_grad(), steering:
        alone = tokenizer([short], return_tensors="pt")
        view = llama(**alone).logits[0]
        assert steering._index == EVERY_POSITION
        batch = tokenizer([short, long], return_tensors="pt", padding=True)
        masked = llama(**batch, position_ids=position_ids_from_mask(batch["attention_mask"])).logits[0]
        assert steering._index.dtype == torch.bool and not steering._index.all()
    torch.testing.assert_close(view, masked[-view.shape[0] :], atol=1e-5, rtol=0)
    with torch.no_grad():
        plain = llama(**alone).logits[0]
    assert not torch.allclose(view, plain, atol=1e-4)
