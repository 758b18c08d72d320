"""Logit lens of steering vectors: a vector along a token's (tied) embedding promotes that token."""

from __future__ import annotations

import pytest

from unlock.analysis.lens import final_norm, lens_table, logit_lens
from unlock.models.tiny import tiny_model, tiny_tokenizer


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_a_token_embedding_promotes_its_token(family):
    model, tokenizer = tiny_model(family, hidden_size=64, num_layers=2, seed=4), tiny_tokenizer()
    embeddings = model.get_output_embeddings().weight.detach()
    wanted = [tokenizer.convert_tokens_to_ids(t) for t in ("Step", "Answer", "First") if t in tokenizer.get_vocab()]
    wanted = wanted or [40, 41]
    vectors = {j: 5 * embeddings[token] for j, token in enumerate(wanted)}
    lens = logit_lens(model, tokenizer, vectors, top=3)
    for j, token in enumerate(wanted):
        assert lens["per_layer"][str(j)][0] == tokenizer.decode([token])
    assert len(lens["overall"]) == 3


def test_final_norm_is_the_models_own():
    model = tiny_model("gpt2", num_layers=2)
    assert final_norm(model) is model.transformer.ln_f
    llama = tiny_model("llama", num_layers=2)
    assert final_norm(llama) is llama.model.norm


def test_lens_table_lists_each_set():
    text = lens_table({"unlock": {"overall": ["Step", " 1"]}, "native": {"overall": ["First"]}})
    assert "| unlock | 'Step', ' 1' |" in text and "| native | 'First' |" in text
