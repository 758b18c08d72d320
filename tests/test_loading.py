"""Model sources: one class per kind answers identity, shape, size and load the same way."""

from __future__ import annotations

import pytest
import torch

from unlock.method.blocks import hidden_size, num_layers
from unlock.models.loading import SOURCES, model_source
from unlock.models.tiny import tiny_model, tiny_tokenizer

TINY = {"kind": "tiny", "family": "gpt2", "hidden_size": 32, "num_layers": 3, "seed": 5, "dtype": "float32"}


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    """A tiny Qwen2 saved with save_pretrained: what an `hf` source reads from a local directory."""
    path = tmp_path_factory.mktemp("qwen2")
    tiny_model("qwen2", hidden_size=48, num_layers=5, seed=2).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return str(path)


def test_every_kind_has_a_source_class():
    assert set(SOURCES) == {"hf", "tiny", "gguf_package", "planted"}
    assert all(cls.kind == kind for kind, cls in SOURCES.items())


@pytest.mark.parametrize("kind", ["tiny", "hf"])
def test_shape_and_size_from_config_equal_the_loaded_model(kind, saved_dir, tmp_path):
    cfg = TINY if kind == "tiny" else {"kind": "hf", "path": saved_dir, "dtype": "float32"}
    source = model_source(cfg)
    shape, size = source.shape(), source.size()
    loaded = source.load(str(tmp_path)).model
    assert (shape.n_layers, shape.hidden_size) == (num_layers(loaded), hidden_size(loaded))
    assert size.n_params == sum(p.numel() for p in loaded.parameters())
    assert size.n_layers == shape.n_layers
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    assert all(p.device.type == "meta" for p in source.skeleton(str(tmp_path)).parameters())


def test_identity_is_what_determines_the_weights():
    base = model_source(TINY).identity()
    assert model_source({**TINY, "device": "cuda", "name": "other label"}).identity() == base
    assert model_source({**TINY, "seed": 6}).identity() != base
    assert model_source({**TINY, "dtype": "bfloat16"}).identity() != base


def test_tiny_dtype_is_applied(tmp_path):
    loaded = model_source({**TINY, "dtype": "bfloat16"}).load(str(tmp_path))
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    assert loaded.tokenizer.padding_side == "left" and loaded.tokenizer.pad_token is not None


def test_unknown_kind_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"model kind 'onnx' is not allowed; allowed: hf, tiny, gguf_package"):
        model_source({"kind": "onnx"})


def test_a_model_is_a_spec_or_a_dict_of_its_fields():
    """ModelSpec.of takes a spec or a plain dict; an unknown field is named with the allowed ones, and a
    config node (any other mapping) is refused: the run layer turns configs into specs."""
    from collections import UserDict

    from unlock.models.loading import ModelSpec

    spec = ModelSpec.of(TINY)
    assert ModelSpec.of(spec) is spec and spec.kind == "tiny" and spec.seed == 5
    with pytest.raises(ValueError, match=r"unknown model field\(s\) \['sede'\]; allowed: .*seed"):
        ModelSpec.of({**TINY, "sede": 1})
    with pytest.raises(TypeError, match="a model is a ModelSpec or a dict of its fields, not a UserDict"):
        model_source(UserDict(TINY))
    assert model_source(TINY).identity() == model_source(spec).identity()
