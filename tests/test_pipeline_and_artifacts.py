"""Source -> Target transfer across widths and depths, and artifacts that round-trip without pickle."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from unlock.method.align import pair_layers
from unlock.method.capture import capture_activations
from unlock.method.pipeline import Cached, MapSettings, transfer
from unlock.method.steer import Steering, SteeringSettings
from unlock.store.artifacts import (
    atomic_path,
    atomic_write_json,
    load_directions,
    load_maps,
    load_steering_vectors,
    load_tensors,
    save_directions,
    save_maps,
    save_steering_vectors,
)

QUESTIONS = [f"Question: What is {a} plus {b}?" for a in range(2, 9) for b in (3, 11)]
DIRECT, COT = "\nAnswer:\n", "\nAnswer: Let's think step by step.\n"


@pytest.fixture(scope="module")
def transferred(llama, qwen2, tokenizer):
    """Llama-style Source (64 wide, 4 deep) -> Qwen2-style Target (48 wide, 6 deep)."""
    train, held = QUESTIONS[:10], QUESTIONS[10:]
    source_locked = capture_activations(llama, tokenizer, [q + DIRECT for q in train], progress=False)
    source_unlocked = capture_activations(llama, tokenizer, [q + COT for q in train], progress=False)
    target_locked = capture_activations(qwen2, tokenizer, [q + DIRECT for q in train], progress=False)
    held_out = (
        capture_activations(llama, tokenizer, [q + DIRECT for q in held], progress=False),
        capture_activations(qwen2, tokenizer, [q + DIRECT for q in held], progress=False),
    )
    pairs = pair_layers(4, 6)
    result = transfer(
        source_unlocked, source_locked, target_locked, pairs, MapSettings(rank=4, aggregation="pca"), held_out=held_out
    )
    alignment = result.alignment.value
    return result.directions.value, SimpleNamespace(
        pairs=alignment.pairs, maps=alignment.maps, quality=alignment.quality, target_vectors=result.target_vectors
    )


class MemoStep:
    """A pipeline step with an in-memory cache, keyed as the harness keys its stage cache."""

    def __init__(self) -> None:
        self.store: dict[str, object] = {}
        self.computed: list[str] = []

    def __call__(self, stage, spec, compute, inputs):
        key = f"{stage}-{json.dumps({**spec, 'inputs': [c.key for c in inputs]}, sort_keys=True)}"
        if key not in self.store:
            self.computed.append(stage)
            self.store[key] = compute()
        return Cached(self.store[key], key)


def test_a_caching_step_reuses_exactly_what_a_change_does_not_touch(llama, qwen2, tokenizer):
    """The harness wraps the method with its cache through ``step``: a new rank refits the maps and
    re-maps the direction but reuses the extracted direction; the same settings compute nothing."""
    source_locked = Cached(
        capture_activations(llama, tokenizer, [q + DIRECT for q in QUESTIONS[:8]], progress=False), "sl"
    )
    source_unlocked = Cached(
        capture_activations(llama, tokenizer, [q + COT for q in QUESTIONS[:8]], progress=False), "su"
    )
    target_locked = Cached(
        capture_activations(qwen2, tokenizer, [q + DIRECT for q in QUESTIONS[:8]], progress=False), "tl"
    )
    step, pairs = MemoStep(), pair_layers(4, 6)
    first = transfer(source_unlocked, source_locked, target_locked, pairs, MapSettings(rank=2), step=step)
    assert step.computed == ["extract", "align", "vectors"]
    again = transfer(source_unlocked, source_locked, target_locked, pairs, MapSettings(rank=2), step=step)
    assert step.computed == ["extract", "align", "vectors"] and again.vectors.key == first.vectors.key
    other = transfer(source_unlocked, source_locked, target_locked, pairs, MapSettings(rank=3), step=step)
    assert step.computed[3:] == ["align", "vectors"] and other.directions.key == first.directions.key
    plain = transfer(source_unlocked.value, source_locked.value, target_locked.value, pairs, MapSettings(rank=3))
    assert plain.vectors.key is None
    for layer, vector in plain.target_vectors.items():  # caching does not change the numbers
        assert torch.equal(vector, other.target_vectors[layer])


def test_map_settings_key_only_what_changes_a_map():
    ridge = {"rank": 4, "method": "ridge"}
    assert MapSettings(**ridge, options={"ridge": 0.5}).spec() != MapSettings(**ridge, options={"ridge": 0.1}).spec()
    assert MapSettings(**ridge).spec() == MapSettings(**ridge, options={"ridge": 0.01}).spec(), (
        "the default is filled in"
    )
    assert MapSettings(rank=4).spec() == {"rank": 4, "method": "unlock", "centre": False}, "keys as before the table"
    with pytest.raises(ValueError, match="ridge is not an option of the 'unlock' alignment method; its options: none"):
        MapSettings(rank=4, options={"ridge": 0.5})
    with pytest.raises(ValueError, match="lambda is not an option of the 'ridge' alignment method; its options: ridge"):
        MapSettings(**ridge, options={"lambda": 0.5})
    assert MapSettings(rank=4, aggregation="pca").centre and not MapSettings(rank=4).centre


def test_transfer_maps_every_target_layer(transferred):
    directions, result = transferred
    assert directions.layers == [0, 1, 2, 3]
    assert sorted(result.target_vectors) == [0, 1, 2, 3, 4, 5]
    assert result.pairs == {0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 3}
    for layer, vector in result.target_vectors.items():
        assert vector.shape == (48,)
        assert torch.isfinite(vector).all() and vector.norm() > 0
        assert result.maps[layer].centred and result.maps[layer].rank_effective == 4
        assert {"rel_error", "r2", "n", "train_rel_error", "train_r2", "train_n"} <= set(result.quality[layer])
        assert result.quality[layer]["n"] == 4 and result.quality[layer]["train_n"] == 10


def test_transferred_vectors_steer_the_target(transferred, qwen2, tokenizer):
    _, result = transferred
    batch = tokenizer([QUESTIONS[0] + DIRECT], return_tensors="pt")
    with torch.no_grad():
        plain = qwen2(**batch).logits[0, -1]
        with Steering(qwen2, result.target_vectors, SteeringSettings(0.5)):
            steered = qwen2(**batch).logits[0, -1]
    assert not torch.allclose(plain, steered)


def test_artifacts_round_trip_with_metadata(transferred, tmp_path):
    directions, result = transferred
    save_directions(tmp_path / "dir.safetensors", directions, {"model": "tiny-llama", "position": "last"})
    loaded, meta = load_directions(tmp_path / "dir.safetensors")
    assert meta["model"] == "tiny-llama" and meta["aggregation"] == "pca" and meta["n_pairs"] == 10
    assert "torch" in meta["library_versions"] and "transformers" in meta["library_versions"]
    assert meta["norms"]["0"] == pytest.approx(float(directions.vectors[0].norm()))
    for layer in directions.layers:
        assert torch.equal(loaded.vectors[layer], directions.vectors[layer])

    save_maps(tmp_path / "maps.safetensors", result.maps, result.pairs, result.quality, {"rank": 4})
    maps, pairs, meta = load_maps(tmp_path / "maps.safetensors")
    assert pairs == result.pairs and meta["rank"] == 4
    assert meta["layers"]["5"]["quality"]["r2"] == pytest.approx(result.quality[5]["r2"])
    for layer, fitted in maps.items():
        assert torch.equal(fitted.weight, result.maps[layer].weight)
        assert fitted.rank_effective == result.maps[layer].rank_effective

    save_steering_vectors(tmp_path / "steer.safetensors", result.target_vectors, {"alpha_free": True})
    vectors, meta = load_steering_vectors(tmp_path / "steer.safetensors")
    assert meta["layers"] == [0, 1, 2, 3, 4, 5]
    assert all(torch.equal(vectors[k], result.target_vectors[k]) for k in vectors)


def test_artifact_files_are_plain_safetensors_with_json_header(transferred, tmp_path):
    directions, _ = transferred
    path = tmp_path / "d.safetensors"
    save_directions(path, directions)
    with open(path, "rb") as handle:
        assert b"pickle" not in handle.read(64)
    with safe_open(str(path), framework="pt") as handle:
        assert json.loads(handle.metadata()["unlock"])["kind"] == "directions"
    assert [p.name for p in tmp_path.iterdir()] == ["d.safetensors"], "no temporary files left behind"


def test_wrong_kind_and_foreign_files_are_rejected(transferred, tmp_path):
    directions, _ = transferred
    save_directions(tmp_path / "d.safetensors", directions)
    with pytest.raises(ValueError, match=r"holds a 'directions' artifact, expected 'maps'"):
        load_maps(tmp_path / "d.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(ValueError, match=r"not an UNLOCK artifact"):
        load_tensors(tmp_path / "foreign.safetensors")
    with pytest.raises(FileNotFoundError, match=r"no artifact at"):
        load_tensors(tmp_path / "missing.safetensors")


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"ok": 1})
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as handle:
                handle.write('{"half": ')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["result.json"]


def test_half_storage_keeps_massive_activations_that_float16_cannot_hold(tmp_path):
    """Residual streams of large models carry activations in the tens of thousands; float16 stops at
    65504 (and would store inf), bfloat16 has float32's range at the same size."""
    from unlock.method.capture import Activations
    from unlock.store.artifacts import load_activations, save_activations

    values = torch.tensor([[70000.0, -1.0e5, 3.0, 1e-3]])
    assert not torch.isfinite(values.to(torch.float16)).all(), "float16 overflows on these"
    save_activations(tmp_path / "a.safetensors", Activations({0: values}, "last", [1], 1), storage="bfloat16")
    loaded, _ = load_activations(tmp_path / "a.safetensors")
    assert loaded[0].dtype == torch.float32
    assert torch.allclose(loaded[0], values, rtol=2**-8), "bfloat16 keeps 8 significant bits and the range"
    with pytest.raises(ValueError, match="activation storage 'float16' is not allowed; allowed: float32, bfloat16"):
        save_activations(tmp_path / "b.safetensors", Activations({0: values}, "last", [1], 1), storage="float16")


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_no_artifact_is_written_with_non_finite_values(tmp_path, bad):
    from unlock.method.capture import Activations
    from unlock.store.artifacts import save_activations, save_steering_vectors

    vector = torch.ones(4)
    vector[2] = bad
    with pytest.raises(ValueError, match=r"tensor 'vector.3' holds 1 non-finite value"):
        save_steering_vectors(tmp_path / "v.safetensors", {1: torch.ones(4), 3: vector})
    with pytest.raises(ValueError, match=r"tensor 'layer.5' holds 1 non-finite value"):
        save_activations(tmp_path / "a.safetensors", Activations({5: vector[None]}, "last", [1], 1))
    assert not list(tmp_path.iterdir()), "nothing written, not even a temporary file"
