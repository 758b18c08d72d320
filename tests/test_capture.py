"""Capture equals Hugging Face's hidden states, exits early without changing values, ignores padding."""

from __future__ import annotations

import pytest
import torch

from unlock.method.capture import (
    capture_activations,
    last_token_index,
    position_ids_from_mask,
)
from unlock.models.tiny import TINY_FAMILIES, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_capture_equals_hf_hidden_states(family, tokenizer, prompts):
    model = tiny_model(family, hidden_size=32, num_layers=3, seed=3)
    # Without this flag transformers replaces hidden_states[-1] by the final-norm output; layer L is
    # the raw output of block L, so compare against the untied hidden states.
    model.config.tie_last_hidden_states = False
    acts = capture_activations(model, tokenizer, prompts, position="last", batch_size=2, progress=False)
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    positions = position_ids_from_mask(batch["attention_mask"])
    with torch.no_grad():
        hidden = model(**batch, position_ids=positions, output_hidden_states=True).hidden_states
    assert acts.layers == [0, 1, 2]
    for layer in range(3):
        # Left padding: the last prompt token of every row is the final column.
        expected = hidden[layer + 1][:, -1]
        torch.testing.assert_close(acts[layer], expected, rtol=1e-5, atol=1e-5)


def test_last_layer_differs_from_hf_default_by_final_norm(llama, tokenizer, prompts):
    """Documented caveat: HF's default hidden_states[-1] is post final norm; ours is the block output."""
    acts = capture_activations(llama, tokenizer, prompts[:2], progress=False)
    batch = tokenizer(prompts[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = llama(**batch, output_hidden_states=True).hidden_states
    torch.testing.assert_close(llama.model.norm(acts[3]), hidden[4][:, -1], rtol=1e-5, atol=1e-5)


def test_early_exit_gives_identical_activations_and_skips_later_blocks(llama, tokenizer, prompts):
    full = capture_activations(llama, tokenizer, prompts, progress=False)
    ran: list[int] = []
    handles = [
        block.register_forward_pre_hook(lambda _m, _a, i=i: ran.append(i)) for i, block in enumerate(llama.model.layers)
    ]
    try:
        early = capture_activations(llama, tokenizer, prompts, layers=[0, 1], batch_size=len(prompts), progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert ran == [0, 1], "blocks after the deepest requested layer must not run"
    assert early.layers == [0, 1]
    for layer in (0, 1):
        assert torch.equal(early[layer], full[layer])


@pytest.mark.parametrize("position", ["last", "mean", "all"])
def test_left_and_right_padding_agree(llama, tokenizer, prompts, position):
    left = capture_activations(llama, tokenizer, prompts, position=position, padding_side="left", progress=False)
    right = capture_activations(llama, tokenizer, prompts, position=position, padding_side="right", progress=False)
    single = [capture_activations(llama, tokenizer, [p], position=position, progress=False) for p in prompts]
    assert left.token_counts == right.token_counts == [s.token_counts[0] for s in single]
    for layer in left.layers:
        torch.testing.assert_close(left[layer], right[layer], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(left[layer], torch.cat([s[layer] for s in single]), rtol=1e-4, atol=1e-4)
    if position == "all":
        assert left[0].shape[0] == sum(left.token_counts)


def test_mean_rule_excludes_padding(llama, tokenizer):
    prompts = ["Hi", "Question: What is 3 plus 4?\nAnswer:"]
    acts = capture_activations(llama, tokenizer, prompts, position="mean", progress=False)
    tokens = capture_activations(llama, tokenizer, prompts[:1], position="all", progress=False)
    torch.testing.assert_close(acts[2][0], tokens[2].mean(dim=0), rtol=1e-5, atol=1e-5)


def test_last_token_index_handles_both_paddings():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [3, 2, 3]


def test_forward_pass_count(llama, tokenizer, prompts):
    acts = capture_activations(llama, tokenizer, prompts, batch_size=2, progress=False)
    assert acts.n_forward_passes == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": [4]}, r"layer 4 is out of range.*\[0, 3\]"),
        ({"layers": [-5]}, r"layer -5 is out of range"),
        ({"position": "first"}, r"unknown position rule 'first'; allowed: last, mean, all"),
        ({"padding_side": "middle"}, r"unknown padding side 'middle'"),
        ({"batch_size": 0}, r"batch_size 0 is out of range"),
    ],
)
def test_bad_capture_arguments(llama, tokenizer, prompts, kwargs, message):
    with pytest.raises(ValueError, match=message):
        capture_activations(llama, tokenizer, prompts, progress=False, **kwargs)


def test_empty_prompt_set_is_rejected(llama, tokenizer):
    with pytest.raises(ValueError, match=r"empty prompt set.*at least 1"):
        capture_activations(llama, tokenizer, [], progress=False)
