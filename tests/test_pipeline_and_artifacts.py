"""Source -> Target transfer across widths and depths, and artifacts that round-trip without pickle."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

from unlock.align import pair_layers
from unlock.artifacts import (
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
from unlock.capture import capture_activations
from unlock.pipeline import transfer
from unlock.steer import Steering

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
    directions, result = transfer(
        source_unlocked, source_locked, target_locked, pairs, rank=4, aggregation="pca", held_out=held_out
    )
    return directions, result


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
        with Steering(qwen2, result.target_vectors, alpha=0.5):
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
