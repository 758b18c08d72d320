"""Paper presets: they compose, dry-run against stand-in model configs, and the report compares runs
with the paper's numbers. Hub benchmarks load into disjoint splits (dataset hub mocked: no network)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import CONF, ROOT, compose_run, launch, settings_for
from unlock.analysis.paper import PAPER_NUMBERS
from unlock.run.config import run_settings
from unlock.run.harness import run
from unlock.run.report import comparison_rows, find_results, render
from unlock.tasks.hub import FIELDS, split_rows

STANDINS = ROOT / "tests" / "standin_configs"
PRESETS = sorted(
    f"paper/{p.stem}" for p in (CONF / "experiment" / "paper").glob("*.yaml") if not p.name.startswith("_")
)
PAPER = yaml.safe_load(PAPER_NUMBERS.read_text())
MODEL_SLOTS = ("source_model", "target_model", "capability.unlocked_model", "eval.reference_model")


def _slot(cfg, slot):
    node = cfg
    for part in slot.split("."):
        node = node[part] if node is not None else None
    return node


def standin_overrides(preset: str, extra: list[str] = ()) -> list[str]:
    """The preset with every Hugging Face model id pointed at its shipped stand-in config.json."""
    cfg = compose_run([f"experiment={preset}"])
    out = [f"experiment={preset}", "dry_run=true", *extra]
    for slot in MODEL_SLOTS:
        model = _slot(cfg, slot)
        if model is not None:
            assert (STANDINS / model.path / "config.json").is_file(), f"no stand-in for {model.path}"
            out.append(f"{slot}.path={STANDINS / model.path}")
    return out


def test_there_is_a_preset_for_every_pair_of_the_paper():
    assert len(PRESETS) >= 14
    setups = {compose_run([f"experiment={p}"]).paper.setup for p in PRESETS}
    assert set(PAPER) <= setups, "every setup with reported numbers has a preset"


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_names_models_bf16_resources_tasks_and_paper_numbers(preset):
    cfg = compose_run([f"experiment={preset}"])
    for slot in MODEL_SLOTS:
        model = _slot(cfg, slot)
        if model is not None:
            assert model.kind == "hf" and "/" in model.path and model.dtype == "bfloat16" and model.device == "cuda"
            assert model.trust_remote_code is False
    assert cfg.resources.gpus_per_node >= 1 and cfg.resources.timeout_min >= 60
    # The paper's budgets; OLMo-2's 4096-token context leaves room for the prompt only below 4096.
    budget = 512 if cfg.capability.contrast == "prompt" else (3584 if "OLMo-2" in cfg.target_model.path else 4096)
    assert cfg.eval.max_new_tokens == budget
    assert cfg.eval.tasks == [cfg.capability.locked_task] and cfg.capability.locked_task.startswith("unlock_")
    assert cfg.capability.activation_storage == "bfloat16"
    if cfg.paper.setup:
        assert dict(cfg.paper.numbers) == PAPER[cfg.paper.setup]["results"][cfg.benchmark.name]
    else:
        assert dict(cfg.paper.numbers) == {}


def test_preset_benchmarks_are_lm_eval_tasks():
    from unlock.lm_eval.prompts import task_manager

    names = [
        f"unlock_{b.stem}{suffix}"
        for b in (CONF / "benchmark").glob("*.yaml")
        for suffix in ("", "_cot", "_val", "_cot_val")
    ]
    manager = task_manager(str(ROOT / "unlock" / "tasks"), names)  # raises on any unknown name
    assert set(names) <= set(manager.all_tasks)


@pytest.mark.parametrize("preset", PRESETS)
def test_dry_run_passes_for_every_preset_on_standin_configs(preset, tmp_path):
    cfg = compose_run(standin_overrides(preset))
    record = run(run_settings(cfg), tmp_path)
    assert record["status"] == "dry_run"
    target = json.loads((Path(cfg.target_model.path) / "config.json").read_text())
    target = target.get("text_config", target)
    plan = record["plan"]
    assert plan["target_layers"] == target["num_hidden_layers"] and plan["target_width"] == target["hidden_size"]
    assert sorted(plan["pairs"]) == list(range(target["num_hidden_layers"])), "every Target layer is steered"
    memory = record["memory"]
    assert memory["fits"] and memory["context_ok"]
    largest = max(m["weights_gb"] for m in memory["models"])
    assert largest < memory["peak_gb"] < 2 * largest + 40
    assert not list(tmp_path.iterdir()), "a dry run writes nothing"


def test_dry_run_memory_plan_counts_parameters_from_the_config():
    cfg = compose_run(standin_overrides("paper/cot_qwen15_14b_to_7b"))
    memory = run(run_settings(cfg), "/nonexistent")["memory"]
    by_role = {m["role"]: m for m in memory["models"]}
    # Qwen1.5-14B: 40 layers of 4 x 5120^2 attention + 3 x 5120 x 13696 MLP, plus 2 x 152064 x 5120 embeddings.
    expected = 40 * (4 * 5120 * 5120 + 3 * 5120 + 3 * 5120 * 13696 + 2 * 5120) + 2 * 152064 * 5120 + 5120
    assert by_role["source"]["n_params"] == expected
    assert by_role["source"]["weights_gb"] == pytest.approx(expected * 2 / 1024**3)
    assert by_role["target"]["kv_cache_gb"] > 0 and by_role["source"]["kv_cache_gb"] == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["layer=list", "layer.indices=[40]"], ["40", "out of range", "31"]),
        (["rank.value=9000"], ["rank.value 9000", "min(d_s, d_t)", "4096"]),
    ],
)
def test_dry_run_fails_clearly_when_the_model_cannot_have_the_layer_or_rank(extra, expected, tmp_path):
    cfg = compose_run(standin_overrides("paper/cot_qwen15_14b_to_7b", extra))
    with pytest.raises(ValueError) as info:
        run(run_settings(cfg), tmp_path)
    assert all(part in str(info.value) for part in expected), str(info.value)


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_dry_run_from_the_command_line(tmp_path):
    args = standin_overrides("paper/math_qwen3_4b_to_14b")
    proc = launch(args, tmp_path)
    assert "memory plan" in proc.stdout and "Qwen3-14B-Base" in proc.stdout and "fits" in proc.stdout
    assert "qwen3_math_4b_to_14b" in proc.stdout
    bad = launch([*args, "layer=list", "layer.indices=[64]"], tmp_path / "bad", check=False)
    assert bad.returncode != 0 and "64" in bad.stderr


def test_slurm_launcher_requests_the_preset_resources(monkeypatch):
    for var in ("UNLOCK_SLURM_GPUS", "UNLOCK_SLURM_MEM_GB", "UNLOCK_SLURM_TIMEOUT_MIN", "UNLOCK_SLURM_CPUS"):
        monkeypatch.delenv(var, raising=False)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["experiment=paper/math_qwen3_4b_to_14b", "hydra/launcher=slurm"],
            return_hydra_config=True,
        )
        assert cfg.hydra.launcher.timeout_min == 1440 and cfg.hydra.launcher.mem_gb == 128
        monkeypatch.setenv("UNLOCK_SLURM_TIMEOUT_MIN", "30")
        assert cfg.hydra.launcher.timeout_min == 30, "the environment overrides the preset"


# --------------------------------------------------------------------------------------------------
# Hub benchmarks: disjoint splits and the paper's answer fields (dataset hub mocked)
# --------------------------------------------------------------------------------------------------
def test_split_rows_are_disjoint_deterministic_and_complete():
    pool = [{"question": f"q{i}", "answer": str(i)} for i in range(100)]
    parts = split_rows(None, pool, carve_train=20, carve_validation=10)
    again = split_rows(None, pool, carve_train=20, carve_validation=10)
    assert parts == again
    ids = {k: {row["question"] for row in v} for k, v in parts.items()}
    assert [len(ids[k]) for k in ("train", "validation", "test")] == [20, 10, 70]
    assert not (ids["train"] & ids["validation"]) and not (ids["train"] | ids["validation"]) & ids["test"]
    with_train = split_rows(pool[:60], pool[60:], carve_train=0, carve_validation=15)
    assert len(with_train["validation"]) == 15 and len(with_train["train"]) == 45 and with_train["test"] == pool[60:]
    with pytest.raises(ValueError, match="nothing would be left"):
        split_rows(None, pool[:10], carve_train=8, carve_validation=2)


@pytest.mark.parametrize(
    ("fields", "row", "expected"),
    [
        (
            "gsm8k",
            {"question": "Q ", "answer": "48/2 = 24\n#### 1,024"},
            {"question": "Q", "answer": "1024", "solution": "48/2 = 24"},
        ),
        (
            "math",
            {"problem": "P", "solution": "so $\\boxed{\\frac{1}{2}}$."},
            {"question": "P", "answer": "\\frac{1}{2}", "solution": "so $\\boxed{\\frac{1}{2}}$."},
        ),
        (
            "svamp",
            {"Body": "Ann has 3.", "Question": "How many?", "Answer": 145.0},
            {"question": "Ann has 3. How many?", "answer": "145"},
        ),
        (
            "agieval",
            {"query": "Q: What is 2+2? A: The answer is", "answer": "4"},
            {"question": "What is 2+2?", "answer": "4"},
        ),
        (
            "generic",
            {"question": "Olympiad?", "final_answer": ["$\\sqrt{2}$"]},
            {"question": "Olympiad?", "answer": "\\sqrt{2}"},
        ),
        ("generic", {"problem": "AMC?", "answer": 27.0}, {"question": "AMC?", "answer": "27"}),
    ],
)
def test_hub_fields_give_the_question_and_the_final_answer(fields, row, expected):
    assert FIELDS[fields](row) == expected


def test_generic_fields_name_the_columns_when_none_match():
    with pytest.raises(KeyError, match="columns \\['body', 'solution_text'\\]"):
        FIELDS["generic"]({"body": "x", "solution_text": "y"})


def test_hub_task_loads_through_lm_eval_with_disjoint_splits(monkeypatch):
    import datasets

    from unlock.lm_eval.prompts import build_prompt_sets, load_task

    hub = {"test": [{"query": f"Q: problem {i}? A: The answer is", "answer": str(i)} for i in range(400)]}
    calls = []

    def fake_load_dataset(path, name=None, split=None, **kwargs):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(hub[split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    tasks_dir = str(ROOT / "unlock" / "tasks")
    test = load_task("unlock_agieval_math", tasks_dir)
    val = load_task("unlock_agieval_math_cot_val", tasks_dir)
    assert calls and all(c[0] == "hails/agieval-math" for c in calls)
    test_q = {d["question"] for d in test.test_docs()}
    val_q = {d["question"] for d in val.test_docs()}
    train_q = {d["question"] for d in test.training_docs()}
    assert (len(train_q), len(val_q), len(test_q)) == (200, 100, 100)
    assert not (train_q & val_q) and not (train_q | val_q) & test_q
    prompt = test.fewshot_context(next(iter(test.test_docs())), num_fewshot=0)
    assert prompt.startswith("Question: problem ") and prompt.endswith('"The final answer is <answer>."\nAnswer:\n')
    sets = build_prompt_sets("unlock_agieval_math", "unlock_agieval_math_cot", "train", 8, 4, 0, tasks_dir)
    assert all(p.endswith("Answer: Let's think step by step.\n") for p in sets.unlocked)
    assert {p.split("\n")[0].removeprefix("Question: ") for p in sets.locked + sets.heldout_locked} <= train_q


# --------------------------------------------------------------------------------------------------
# Report: paper vs run
# --------------------------------------------------------------------------------------------------
def _record(acc: float, n: int, split: str = "test", status: str = "ok", benchmark: str = "math") -> dict:
    from unlock.analysis.stats import wilson_interval

    task = f"unlock_{benchmark}"
    metrics = {"acc": acc, "n": n, "acc_ci95": list(wilson_interval(acc * n, n))}
    return {
        "status": status,
        "conditions": {"unlock": {task: metrics}, "unsteered": {task: {**metrics, "acc": 0.1}}},
        "config": {
            "paper": {"setup": "qwen15_cot_14b_to_7b"},
            "benchmark": {"name": benchmark},
            "eval": {"split": split},
            "capability": {"locked_task": task},
        },
    }


def _write(path: Path, record: dict) -> None:
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(record))


def test_report_rows_compare_with_the_paper():
    rows = {r["condition"]: r for r in comparison_rows("qwen15_cot_14b_to_7b", "math", _record(0.25, 200))}
    paper = PAPER["qwen15_cot_14b_to_7b"]["results"]["math"]
    assert set(rows) == set(paper)
    unlock = rows["unlock"]
    assert unlock["paper"] == 20.1 and unlock["ours"] == pytest.approx(25.0)
    assert unlock["diff"] == pytest.approx(25.0 - 20.1)
    assert (
        unlock["diff_ci"][0] == pytest.approx(unlock["ci"][0] - 20.1)
        and unlock["diff_ci"][0] < 0 < unlock["diff_ci"][1]
    )
    assert rows["prompting"]["ours"] is None, "conditions not run are listed, not invented"


def test_report_puts_the_papers_gain_beside_our_paired_gain():
    """200 items: UNLOCK right on items 0-49, the unsteered Target on items 30-49 and 150-159, so
    UNLOCK wins 30 and loses 10 (+10 points); the paper's gain for this setup is 20.1 - 8.0."""
    from unlock.analysis.paired import DESIGN, PowerSettings, analyse, words
    from unlock.analysis.paper import paper_gains

    unlock = [{"doc_id": i, "acc": int(i < 50)} for i in range(200)]
    unsteered = [{"doc_id": i, "acc": int(30 <= i < 50 or 150 <= i < 160)} for i in range(200)]
    record = _record(0.25, 200)
    gains = paper_gains("qwen15_cot_14b_to_7b", "math", "unlock_math")
    rows = {"unlock": {"unlock_math": unlock}, "unsteered": {"unlock_math": unsteered}}
    record.update(analyse(rows, gains, PowerSettings(), DESIGN, "unlock_math"))
    paired = record["paired"]["unlock"]["unlock_math"]["unsteered"]
    assert paired["effect"] == pytest.approx(0.121) and paired["effect_from"] == "paper"
    row = {r["condition"]: r for r in comparison_rows("qwen15_cot_14b_to_7b", "math", record)}["unlock"]
    assert row["paper_gain"] == pytest.approx(12.1) and row["gain"] == pytest.approx(10.0)
    assert row["gain_ci"][0] > 0, "30 wins to 10 losses on 200 items exclude no gain"
    assert row["underpowered"] == (paired["power"] < 0.8)
    text = render({("qwen15_cot_14b_to_7b", "math", "hub, cot"): [(Path("r/results.json"), record)]})
    low, high = row["gain_ci"]
    assert paired["decided_by"] == "holm" and paired["significant"], "no random: no verdict; Holm decides"
    assert f"| +12.1 | +10.0 [{low:+.1f}, {high:+.1f}], {words(paired)} |" in text
    assert "significant gain (p_adj = " in text and "verdict: undecided" in text


def test_report_takes_the_newest_finished_test_run_and_renders_markdown(tmp_path):
    import os
    import time

    _write(tmp_path / "a", _record(0.9, 100))
    _write(tmp_path / "b", _record(0.5, 100, split="validation"))
    _write(tmp_path / "c", _record(0.5, 100, status="failed"))
    _write(tmp_path / "d", _record(0.3, 100))
    os.utime(tmp_path / "a" / "results.json", (time.time() - 100, time.time() - 100))
    icl = _record(0.1, 100)
    icl["config"]["capability"] = {**icl["config"]["capability"], "name": "icl"}
    _write(tmp_path / "e", icl)  # newest, but another variant: a row of its own, not a replacement
    found = find_results([tmp_path])
    key = ("qwen15_cot_14b_to_7b", "math", "hub, cot")
    assert sorted(found) == [key, ("qwen15_cot_14b_to_7b", "math", "hub, icl")]
    assert [path.parent.name for path, _ in found[key]] == ["a", "d"], "oldest first; the newest is reported"
    text = render(found)
    assert "2 test runs of this setup" in text and "names no validation sweep point (selected_from)" in text
    assert "## qwen15_cot_14b_to_7b / math (hub, cot)" in text and "## qwen15_cot_14b_to_7b / math (hub, icl)" in text
    assert "| UNLOCK | 20.1 | 30.0 (100) |" in text and "+9.9" in text
    assert "qwen15_cot_14b_to_7b/gsm8k" in text, "setups without results are listed"
    out = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "unlock.run.report", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert out.read_text() == text and "written to" in proc.stdout


# --------------------------------------------------------------------------------------------------
# Half-precision activation storage (the presets' memory plan)
# --------------------------------------------------------------------------------------------------
def test_half_precision_activation_storage_is_a_separate_cache_entry(tmp_path):
    from safetensors import safe_open

    overrides = [
        "experiment=tiny",
        "eval.limit=2",
        "eval.max_new_tokens=4",
        "eval.conditions=[unsteered,unlock]",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "progress=false",
    ]
    full = run(settings_for(overrides), tmp_path / "full")
    half = run(settings_for([*overrides, "capability.activation_storage=bfloat16"]), tmp_path / "half")
    assert half["stages"]["capture"]["misses"] == full["stages"]["capture"]["misses"] > 0, (
        "not reused across precisions"
    )
    captures = sorted((tmp_path / "cache" / "capture").glob("*.safetensors"))
    dtypes = set()
    for path in captures:
        with safe_open(str(path), "pt") as f:
            dtypes |= {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F32", "BF16"}
    # Half storage changes the map only by rounding: the steering vectors agree closely.
    from unlock.store.artifacts import load_steering_vectors

    a = load_steering_vectors(full["artifacts"]["steering_vectors"])[0]
    b = load_steering_vectors(half["artifacts"]["steering_vectors"])[0]
    for layer in a:
        assert torch.nn.functional.cosine_similarity(a[layer], b[layer], dim=0) > 0.99
