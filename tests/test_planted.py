"""The planted controls' models and task: the corpus says what the task files render, the evaluated items
are never trained on, the tokenizer keeps every character, and the trained weights are cached by recipe."""

from __future__ import annotations

import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from unlock.lm_eval.prompts import load_task, render
from unlock.models.loading import model_source
from unlock.models.planted import (
    CUE,
    PLANTED_FAMILIES,
    Recipe,
    carries,
    completion,
    example,
    planted_tokenizer,
    prompt,
    reserved,
    task_items,
)
from unlock.tasks import TASKS_DIR
from unlock.tasks.answers import extract_answer, reasons_in_steps


def _doc_parts(question: str) -> tuple[str, int, int]:
    verb, a, _and, b = question.split()
    return verb, int(a), int(b)


@pytest.mark.parametrize(("task", "cue"), [("unlock_planted", False), ("unlock_planted_cot", True)])
def test_the_task_renders_the_corpus_prompt_and_its_items_are_reserved(task, cue):
    loaded = load_task(task, str(TASKS_DIR))
    for split in ("training_docs", "validation_docs", "test_docs"):
        for doc in list(getattr(loaded, split)())[:40]:
            verb, a, b = _doc_parts(doc["question"])
            assert render(loaded, doc) == prompt(verb, a, b, cue)
            assert reserved(a, b) and int(doc["answer"]) == a + b


def test_the_training_corpus_never_shows_a_reserved_problem_and_the_cue_means_what_the_corpus_says():
    rng = random.Random(0)
    cued_steps = {"cue": [], "random_cue": []}
    for corpus in cued_steps:
        for _ in range(3000):
            text, answer = example(rng, corpus)
            numbers = [int(t) for t in text.split() if t.isdigit()]
            assert not reserved(*numbers)
            if text.startswith(CUE):
                cued_steps[corpus].append("=" in answer)
    assert all(cued_steps["cue"]), "with the cue, the corpus always writes the carries"
    assert 0.03 < sum(cued_steps["random_cue"]) / len(cued_steps["random_cue"]) < 0.2, "null: the verbs' rate only"


def test_the_steps_are_the_carries_and_score_as_stepwise_and_right():
    assert carries(457, 768) == "7 + 8 = 15\n5 + 6 + 1 = 12\n4 + 7 + 1 = 12\n"
    text = completion(457, 768, steps=True)
    assert extract_answer(text) == "1225" and reasons_in_steps(text)
    direct = completion(457, 768, steps=False)
    assert direct == "so 1225." and not reasons_in_steps(direct)
    items = task_items(50, 3)
    assert len({(i["a"], i["b"]) for i in items}) == 50 and items == task_items(50, 3)


@pytest.mark.parametrize("family", PLANTED_FAMILIES)
def test_a_checkpoint_reloads_with_the_same_character_tokenizer(family, tmp_path):
    """The vLLM engine and the lm_eval CLI load a directory with AutoTokenizer: the family's own
    tokenizer class must not replace the planted one (qwen2's does, so qwen2 is not a planted family)."""
    source = model_source(
        {"kind": "planted", "family": family, "hidden_size": 16, "num_layers": 1, "seed": 0, "train_steps": 2}
    )
    path = source.checkpoint(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(path)
    text = prompt("find", 457, 768, cue=True) + completion(457, 768, steps=True)
    ids = planted_tokenizer()(text)["input_ids"]
    assert loaded(text)["input_ids"] == ids and len(ids) == len(text) + 1, "one token a character, after <s>"
    assert loaded.decode(ids, skip_special_tokens=True) == text


def test_the_weights_are_trained_once_per_recipe_and_checked_on_load(tmp_path):
    cfg = {"kind": "planted", "family": "llama", "hidden_size": 16, "num_layers": 2, "seed": 3, "train_steps": 4}
    first, _ = model_source(cfg).weights(str(tmp_path), torch.float32)
    (stored,) = (tmp_path / "train").glob("*.safetensors")
    second, _ = model_source(cfg).weights(str(tmp_path), torch.float32)
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert stored.stat().st_mtime_ns == next((tmp_path / "train").glob("*.safetensors")).stat().st_mtime_ns
    other = model_source({**cfg, "seed": 4}).weights(str(tmp_path), torch.float32)[0]
    assert len(list((tmp_path / "train").glob("*.safetensors"))) == 2, "another recipe, another entry"
    assert not torch.equal(other.state_dict()["lm_head.weight"], first.state_dict()["lm_head.weight"])
    identity = model_source(cfg).identity()
    assert identity["recipe"]["steps"] == 4 and json.dumps(identity, sort_keys=True)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("family", "qwen2", "planted model family 'qwen2' is not allowed; allowed: llama, gemma3"),
        ("corpus", "nonsense", "planted corpus 'nonsense' is not allowed; allowed: cue, random_cue"),
        ("steps", 0, "steps 0 \\(>= 1\\)"),
    ],
)
def test_a_bad_recipe_names_the_value_and_the_allowed_ones(field, value, message):
    with pytest.raises(ValueError, match=message):
        Recipe(**{field: value})


@pytest.fixture(scope="module")
def controls(tmp_path_factory):
    """Both controls as a user runs them, from a cold cache: the models are trained here."""
    from tests.helpers import launch, results

    tmp = tmp_path_factory.mktemp("planted")
    out = {}
    for experiment in ("planted", "planted_null"):
        proc = launch([f"experiment={experiment}"], tmp / experiment)
        (run_dir,) = (tmp / experiment / "logs" / "runs").iterdir()
        out[experiment] = (results(run_dir), proc.stdout)
    return out


@pytest.mark.slow
def test_the_positive_control_finds_the_transfer_that_was_planted(controls):
    record, stdout = controls["planted"]
    task = "unlock_planted"
    verdict = record["verdict"]
    assert verdict["transferred"] is True, verdict
    assert set(verdict["tests"]) == {"unsteered", "random", "reversed"} and verdict["p"] < 1e-3
    assert "verdict: UNLOCK transferred" in stdout
    random = record["paired"]["random"][task]["unsteered"]
    assert not random["significant"], "a random direction of the same norm transfers nothing"
    steps = record["behaviour"]["unlock"][task]["unsteered"]["stepwise"]
    assert steps["significant"] and steps["direction"] == "increase", "the steps are written"
    fidelity = record["transfer_fidelity_summary"]
    assert fidelity["beat_null"] > fidelity["layers"] / 2, fidelity
    assert 0 < fidelity["mean_self_ceiling"] <= 1 and "self-transfer ceiling" in stdout
    assert all(0 < d < 1 for d in record["conditions"]["unlock"][task]["dose"].values())


@pytest.mark.slow
def test_the_null_control_finds_none(controls):
    record, stdout = controls["planted_null"]
    assert record["verdict"]["transferred"] is False, record["verdict"]
    assert "verdict: no evidence of transfer" in stdout
    assert record["transfer_fidelity_summary"]["beat_null"] <= record["transfer_fidelity_summary"]["layers"] / 2
    positive, _ = controls["planted"]
    assert record["target"] == positive["target"] and record["source"] != positive["source"]
