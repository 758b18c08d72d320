"""The harness end to end on tiny models: one run, a W&B sweep with cache reuse, bad configs, lm_eval CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, compose_run, launch, results
from unlock.run.config import run_settings
from unlock.run.harness import run
from unlock.run.plan import make_plan
from unlock.store.artifacts import load_activations

TINY = ["experiment=tiny", "eval.limit=3", "eval.max_new_tokens=8"]
CONDITIONS = {"unsteered", "unlock", "prompting", "native", "random", "reversed"}


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    first = launch(TINY, tmp)
    second = launch(TINY, tmp)
    runs = sorted((tmp / "logs" / "runs").iterdir())
    assert len(runs) == 2
    return tmp, runs, first, second


def test_single_run_writes_results_for_every_condition(single_run):
    _, runs, first, _ = single_run
    record = results(runs[0])
    assert record["status"] == "ok"
    assert set(record["conditions"]) == CONDITIONS
    for condition, per_task in record["conditions"].items():
        metrics = per_task["unlock_arith"]
        assert metrics["n"] == 3 and 0.0 <= metrics["acc"] <= 1.0
        low, high = metrics["acc_ci95"]
        assert 0.0 <= low <= metrics["acc"] <= high <= 1.0
        assert metrics["gen_tokens"] > 0 and metrics["entropy"] > 0
        assert (runs[0] / "samples" / f"{condition}__unlock_arith.jsonl").is_file()
    assert record["settings"]["rank_effective"] == 4 and record["settings"]["n_steered_layers"] == 6
    assert set(record["fit_quality"]) == {str(j) for j in range(6)}
    exported = torch.load(runs[0] / "lm_eval_steered.pt", weights_only=True)
    assert set(exported) == {f"layers.{j}" for j in range(6)}, "the tiny Llama Target's blocks under base_model"
    assert (runs[0] / "steering_vectors.safetensors").is_file()
    assert "unsteered" in first.stdout and "acc [95% CI]" in first.stdout, "summary table printed"
    assert "vs unsteered" in first.stdout and "verdict: " in first.stdout and "other comparisons (" in first.stdout
    assert set(record["paired"]) == CONDITIONS - {"unsteered"}
    assert record["paired"]["unlock"]["unlock_arith"]["unsteered"]["n"] == 3


def test_transfer_fidelity_is_recorded_with_its_null(single_run):
    from unlock.store.artifacts import load_steering_vectors

    _, runs, first, _ = single_run
    record = results(runs[0])
    fidelity = record["transfer_fidelity"]
    assert set(fidelity) == {str(j) for j in range(6)}
    for layer in fidelity.values():
        assert -1 <= layer["cos"] <= 1 and 0 < layer["null_p95"] <= 1 and 0 < layer["p_value"] <= 1
        assert layer["draws"] >= 200
        assert abs(layer["cos"]) <= layer["self_ceiling"] + 1e-6, "no map reaches past its subspace"
    summary = record["transfer_fidelity_summary"]
    assert summary["layers"] == 6 and summary["beat_null"] == sum(
        f["cos"] > f["null_p95"] + 1e-6 for f in fidelity.values()
    )
    unlock = load_steering_vectors(record["artifacts"]["steering_vectors"])[0]
    native = load_steering_vectors(record["artifacts"]["native_vectors"])[0]
    for j, layer in fidelity.items():  # the recorded cosine is the saved vectors' cosine
        cos = torch.nn.functional.cosine_similarity(unlock[int(j)].double(), native[int(j)].double(), dim=0)
        assert layer["cos"] == pytest.approx(float(cos), abs=1e-6)
    assert (runs[0] / "transfer_fidelity.png").is_file() and "transfer fidelity:" in first.stdout
    assert summary["mean_self_ceiling"] == pytest.approx(sum(f["self_ceiling"] for f in fidelity.values()) / 6)
    assert f"against a self-transfer ceiling of {summary['mean_self_ceiling']:.2f}" in first.stdout


def test_logit_lens_of_every_steering_set(single_run):
    record = results(single_run[1][0])
    assert set(record["logit_lens"]) == {"unlock", "random", "native", "reversed"}
    for lens in record["logit_lens"].values():
        assert len(lens["overall"]) == 8 and set(lens["per_layer"]) == {str(j) for j in range(6)}
    table = (single_run[1][0] / "logit_lens.md").read_text()
    assert all(f"| {name} |" in table for name in ("unlock", "random", "native"))
    assert results(single_run[1][1])["stages"]["lens"]["misses"] == 0, "the rerun reads the lens from the cache"


def test_generation_analyses_are_written_beside_the_samples(single_run):
    run_dir = single_run[1][0]
    analysis = json.loads((run_dir / "generations.json").read_text())
    assert set(analysis) == CONDITIONS
    for per_condition in analysis.values():
        assert per_condition["n"] == 3 and 0 <= per_condition["repetition"] <= 1
        assert sum(b["n"] for b in per_condition["acc_by_length"].values()) == 3
    assert (run_dir / "acc_by_length.png").is_file() and (run_dir / "first_words.png").is_file()


def test_results_name_the_environment_that_made_them(single_run):
    from importlib.metadata import version

    record = results(single_run[1][0])
    env = record["environment"]
    for package in ("torch", "transformers", "lm-eval", "datasets", "hydra-core"):
        assert env["versions"][package] == version(package)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert env["commit"] in (head, f"{head}+dirty")


def test_rerun_of_finished_run_does_no_forward_pass_and_loads_no_model(single_run):
    _, runs, _, _ = single_run
    first, second = results(runs[0]), results(runs[1])
    assert all(stage["misses"] == 0 and stage["forward_passes"] == 0 for stage in second["stages"].values())
    assert second["model_load_seconds"] == {}
    assert first["stages"]["capture"]["forward_passes"] > 0
    assert second["conditions"] == first["conditions"]


def test_steered_prompt_changes_only_steered_conditions(single_run):
    _, runs, _, _ = single_run
    samples = {
        c: [json.loads(line) for line in (runs[0] / "samples" / f"{c}__unlock_arith.jsonl").open()] for c in CONDITIONS
    }
    prompts = {c: [row["prompt"] for row in rows] for c, rows in samples.items()}
    assert prompts["unsteered"] == prompts["unlock"] == prompts["random"] == prompts["native"]
    assert all(p.rstrip().endswith("Answer:") for p in prompts["unsteered"])
    assert all("Let's think step by step." in p for p in prompts["prompting"])


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    proc = launch(["-m", *TINY, "logger=wandb", "alpha.value=0.1,0.5", "rank.value=2,4"], tmp)
    (sweep_dir,) = list((tmp / "logs" / "multiruns").iterdir())
    return sweep_dir, proc


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_sweep_writes_every_point_wandb_runs_and_aggregate(sweep):
    sweep_dir, proc = sweep
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    assert len(jobs) == 4
    for job in jobs:
        assert results(job)["status"] == "ok"
        assert list((job / "wandb").glob("offline-run-*")), f"no offline W&B run in {job}"
    csv = (sweep_dir / "aggregate.csv").read_text().splitlines()
    assert csv[0].startswith("job,") and len(csv) == 1 + 4 * len(CONDITIONS)
    assert {p.name for p in sweep_dir.glob("*.png")} >= {
        "acc_vs_alpha.value.png",
        "acc_vs_rank.value.png",
        "gen_length_by_condition.png",
    }
    header = csv[0].split(",")
    assert {"alpha.value", "rank.value", "experiment option", "eval.limit"} <= set(header), "overrides become columns"
    assert list((sweep_dir / "wandb").glob("offline-run-*")), "aggregate W&B run"
    assert "sweep: 4 jobs" in proc.stdout


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_alpha_sweep_reuses_capture_extract_and_align(sweep):
    sweep_dir, _ = sweep
    by_setting = {}
    for job in (p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        record = results(job)
        by_setting[(record["settings"]["rank"], record["settings"]["alpha"])] = (int(job.name), record)
    for rank in (2, 4):
        first, second = sorted([by_setting[(rank, 0.1)], by_setting[(rank, 0.5)]], key=lambda jr: jr[0])
        stages = second[1]["stages"]
        for stage in ("capture", "extract", "align"):
            assert stages[stage]["misses"] == 0 and stages[stage]["hits"] > 0, (rank, stage, stages)
        assert stages["capture"]["forward_passes"] == 0
        # Unsteered and prompting baselines do not depend on alpha either.
        assert stages["eval"]["hits"] >= 2


def test_bad_configs_fail_before_weights_load(tmp_path, monkeypatch):
    import unlock.models.loading

    def no_weights(*_args, **_kwargs):
        raise AssertionError("model weights were loaded before the config was checked")

    monkeypatch.setattr(unlock.models.loading, "load_model", no_weights)
    monkeypatch.setattr("unlock.run.session.load_model", no_weights)
    cases = [
        (["layer=list", "layer.indices=[9]"], r"Target layer 9 is out of range.*\[0, 5\]"),
        (
            ["rank.value=100"],
            r"rank.value 100 is out of range for these models: must be <= min\(d_s, d_t\) = min\(64, 48\) = 48",
        ),
        (["capability.n_prompts=0"], r"capability.n_prompts 0 is out of range"),
        (["capability.n_prompts=300"], r"n_prompts \+ capability.n_heldout = 304 is out of range.*200 items"),
        (["eval.conditions=[unsteered,reference]"], r"'reference' but eval.reference_model is not set"),
        (["eval.batch_size=0"], r"eval.batch_size 0 is out of range: must be >= 1"),
        (["capability.batch_size=0"], r"capability.batch_size 0 is out of range: must be >= 1"),
        (["layer.explicit_pairs={0:99}"], r"layer.explicit_pairs: Source layer 99 is out of range.*\[0, 3\]"),
        (["layer.explicit_pairs={9:0}"], r"layer.explicit_pairs: Target layer 9 is out of range.*\[0, 5\]"),
        (["layer.explicit_pairs=3"], r"layer.explicit_pairs 3 is not allowed: must be a non-empty map"),
        (["target_model.device=bogus"], r"target_model.device 'bogus' is not allowed: use cpu, cuda, cuda:N or mps"),
        (["source_model.device=cuda:99"], r"source_model.device 'cuda:99' is not available here"),
        (["capability.prompt_split=test"], r"capability.prompt_split 'test' is the evaluated split \(eval.split\)"),
        (["selected_from=/nowhere"], r"selected_from=/nowhere: /nowhere/results.json is not a finished sweep point"),
    ]
    for overrides, message in cases:
        cfg = compose_run([*TINY, f"paths.cache_dir={tmp_path}", *overrides])
        with pytest.raises(ValueError, match=message):
            run(run_settings(cfg), tmp_path / "out")
    missing = compose_run(
        [*TINY, f"paths.cache_dir={tmp_path}", "target_model=hf", f"target_model.path={tmp_path}/none"]
    )
    with pytest.raises(FileNotFoundError, match=rf"path '{tmp_path}/none' is not a directory; an hf model's path is"):
        run(run_settings(missing), tmp_path / "out")


def test_explicit_pairs_from_the_command_line_steer_those_layers():
    assert make_plan(run_settings(compose_run([*TINY, "layer.explicit_pairs={0:3,5:1}"]))).pairs == {0: 3, 5: 1}


def test_failed_run_leaves_a_failure_record(tmp_path):
    proc = launch([*TINY, "layer=list", "layer.indices=[42]"], tmp_path, check=False)
    assert proc.returncode != 0
    (job,) = list((tmp_path / "logs" / "runs").iterdir())
    record = results(job)
    assert record["status"] == "failed" and "Target layer 42 is out of range" in record["error"]
    assert record["environment"]["versions"]["transformers"]


def test_layer_selection_and_pairing_in_plan():
    cfg = compose_run([*TINY, "layer=middle"])
    # depth 0.5 of 6 layers: 2.5 rounds up to 3; Source floor(3*3/5) = 1
    assert make_plan(run_settings(cfg)).pairs == {3: 1}
    cfg = compose_run([*TINY, "layer=list", "layer.indices=[0,5]"])
    assert make_plan(run_settings(cfg)).pairs == {0: 0, 5: 3}


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_lm_eval_cli_with_unlock_model(tmp_path):
    """`lm_eval --model unlock` on a saved tiny model and a shipped task, steering from an artifact."""
    from unlock.models.tiny import tiny_model, tiny_tokenizer
    from unlock.store.artifacts import save_steering_vectors

    model_dir = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    save_steering_vectors(tmp_path / "v.safetensors", {layer: torch.randn(64) for layer in range(4)})
    lm_eval_cli = Path(sys.executable).parent / "lm_eval"
    outputs = {}
    for name, steer in (
        ("plain", ""),
        ("steered", f",steer={tmp_path / 'v.safetensors'},alpha=2.0,rule=add,positions=all"),
    ):
        proc = subprocess.run(
            [
                str(lm_eval_cli),
                "--model",
                "unlock",
                "--model_args",
                f"pretrained={model_dir}{steer}",
                "--tasks",
                "unlock_mc",
                "--include_path",
                str(ROOT / "unlock" / "tasks"),
                "--limit",
                "4",
                "--batch_size",
                "2",
                "--output_path",
                str(tmp_path / name),
                "--log_samples",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        (samples,) = list((tmp_path / name).rglob("samples_unlock_mc_*.jsonl"))
        outputs[name] = [json.loads(line)["resps"] for line in samples.open()]
    assert outputs["plain"] != outputs["steered"], "steering must change loglikelihoods"


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_readme_cli_example_reproduces_the_runs_unlock_condition(tmp_path):
    """README's `lm_eval --model unlock --model_args pretrained=DIR,steer=<run>/steering_vectors.safetensors`
    gives the run's own unlock condition: the file carries alpha, rule and positions (here not the
    class defaults), and explicit model args still override them. Loglikelihoods of a multiple-choice
    task, which a random tiny model's near-constant generations could not tell apart."""
    from unlock.models.tiny import tiny_model, tiny_tokenizer

    model_dir = tmp_path / "target"
    tiny_model("qwen2", hidden_size=48, num_layers=6, seed=1).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    overrides = [
        *TINY,
        "eval.tasks=[unlock_mc]",
        "eval.conditions=[unlock]",
        "alpha.value=2.0",
        "alpha.rule=add",
        "alpha.positions=all",
        "target_model=hf",
        f"target_model.path={model_dir}",
        "target_model.dtype=float32",
        "target_model.device=cpu",
        "progress=false",
    ]
    launch(overrides, tmp_path)
    (run_dir,) = list((tmp_path / "logs" / "runs").iterdir())
    rows = [json.loads(line)["response"] for line in (run_dir / "samples" / "unlock__unlock_mc.jsonl").open()]
    expected = [float(choice[0]) for row in rows for choice in json.loads(row)]

    def cli(extra: str) -> list[float]:
        out = tmp_path / f"cli{len(extra)}"
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "lm_eval"),
                "--model",
                "unlock",
                "--model_args",
                f"pretrained={model_dir},steer={run_dir / 'steering_vectors.safetensors'}{extra}",
                "--tasks",
                "unlock_mc",
                "--include_path",
                str(ROOT / "unlock" / "tasks"),
                "--limit",
                "3",
                "--batch_size",
                "4",
                "--output_path",
                str(out),
                "--log_samples",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        (samples,) = list(out.rglob("samples_unlock_mc_*.jsonl"))
        return [float(choice[0][0]) for line in samples.open() for choice in json.loads(line)["resps"]]

    assert cli("") == pytest.approx(expected, abs=1e-5)
    assert cli(",alpha=0.1,rule=norm_preserving,positions=last") != pytest.approx(expected, abs=1e-3), (
        "explicit args override the file"
    )


def test_reference_condition_uses_another_model_with_the_capability_prompt(tmp_path):
    cfg = compose_run(
        [
            *TINY,
            f"paths.cache_dir={tmp_path}",
            "eval.conditions=[unsteered,reference]",
            "reference_model@eval.reference_model=tiny_llama",
            "eval.reference_model.seed=5",
        ]
    )
    record = run(run_settings(cfg), tmp_path / "out")
    assert set(record["conditions"]) == {"unsteered", "reference"}
    assert record["conditions"]["reference"]["unlock_arith"]["lm_eval_task"] == "unlock_arith_cot"
    assert record["conditions"]["unsteered"]["unlock_arith"]["lm_eval_task"] == "unlock_arith"
    rows = [json.loads(line) for line in (tmp_path / "out" / "samples" / "reference__unlock_arith.jsonl").open()]
    assert all("Let's think step by step." in row["prompt"] for row in rows)


def test_checkpoint_contrast_uses_the_post_trained_source(tmp_path):
    """Contrast (b): Locked = base Source, Unlocked = another checkpoint of the same shape, same prompt."""
    cfg = compose_run(
        [
            *TINY,
            f"paths.cache_dir={tmp_path}",
            "capability=post_training",
            "capability.n_prompts=8",
            "capability.n_heldout=4",
            "unlocked_model@capability.unlocked_model=tiny_llama",
            "capability.unlocked_model.seed=7",
            "eval.conditions=[unsteered,unlock,native]",
        ]
    )
    record = run(run_settings(cfg), tmp_path / "out")
    # The Target is evaluated with the same step-by-step prompt the Source variants were captured with.
    assert cfg.capability.locked_task == cfg.capability.unlocked_task == "unlock_arith_cot"
    assert record["conditions"]["unlock"]["unlock_arith_cot"]["lm_eval_task"] == "unlock_arith_cot"
    assert "skipped" in record["conditions"]["native"], "native needs a post-trained Target (reference model)"
    keys = [load_activations(p)[1]["cache"]["spec"] for p in (tmp_path / "capture").glob("*.safetensors")]
    assert {k["model"]["seed"] for k in keys if k["model"]["family"] == "llama"} == {0, 7}


def test_unlocked_model_of_another_shape_is_rejected(tmp_path):
    cfg = compose_run(
        [
            *TINY,
            f"paths.cache_dir={tmp_path}",
            "capability=post_training",
            "unlocked_model@capability.unlocked_model=tiny_qwen2",
        ]
    )
    with pytest.raises(ValueError, match=r"unlocked_model has 6 layers x 48 wide, but the Source has 4 x 64"):
        make_plan(run_settings(cfg))


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_icl_capability_runs_end_to_end(single_run):
    """capability=icl on the shipped task, in the plain run's cache: the Locked captures are the same
    cache entries, the Unlocked ones are new (their prompts carry worked examples), and so is the vector."""
    tmp, runs, _, _ = single_run
    plain = results(runs[0])
    launch([*TINY, "capability=icl", "eval.conditions=[unsteered,unlock]"], tmp)
    icl = results(sorted((tmp / "logs" / "runs").iterdir())[-1])
    assert icl["stages"]["capture"]["hits"] >= 4 and icl["stages"]["capture"]["misses"] == 1
    assert icl["status"] == "ok" and icl["capability"] == "icl" and icl["config"]["capability"]["n_shots"] == 8
    assert icl["checker"].startswith("math-verify") and "dropped_rows" in icl
    assert icl["vector_norms"] != plain["vector_norms"]


def test_analyze_from_cached_activations(single_run):
    """`make analyze ARGS=experiment=tiny`: after a run, nothing is captured again; the grid covers the
    paper's N and rank grids clipped to the activations, with fit, fidelity and entropy."""
    import os

    tmp = single_run[0]
    env = {**os.environ, "UNLOCK_CACHE": str(tmp / "cache"), "UNLOCK_LOGS": str(tmp / "analyze_logs")}
    # As a user runs it; -o keeps make from rebuilding the venv this test already runs in.
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "analyze", f"PY={sys.executable}", f"ARGS={' '.join(TINY)}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((tmp / "analyze_logs" / "runs").iterdir())
    result = json.loads((run_dir / "analysis.json").read_text())
    assert result["stages"]["capture"]["misses"] == 0 and result["stages"]["capture"]["forward_passes"] == 0
    cells = {(row["n_prompts"], row["rank"]) for row in result["grid"]}
    assert cells == {(4, 1), (4, 4), (8, 1), (8, 4), (8, 8)}  # N <= 8 prompts, rank <= min(N, widths)
    for row in result["grid"]:
        assert row["rel_error"] > 0 and row["layers"] == 6 and 0 <= row["layers_beating_null"] <= 6
        assert abs(row["fidelity"]) <= row["self_ceiling"] + 1e-6 <= 1 + 1e-6
    ceiling = {(row["n_prompts"], row["rank"]): row["self_ceiling"] for row in result["grid"]}
    assert ceiling[(8, 1)] <= ceiling[(8, 4)] <= ceiling[(8, 8)] + 1e-9, "nested subspaces: a higher rank holds more"
    assert [row["n_prompts"] for row in result["entropy"]] == [4, 8]
    assert all(0 < row["source_entropy"] <= math.log(8) + 1e-9 for row in result["entropy"])
    assert (run_dir / "analysis.csv").read_text().startswith("n_prompts,rank,")
    assert all((run_dir / name).is_file() for name in ("error_vs_rank.png", "fidelity_heatmap.png", "entropy_vs_n.png"))


def _read_samples(path: Path) -> dict:
    return {row["doc_id"]: bool(row["acc"]) for row in map(json.loads, path.read_text().splitlines())}


def test_paired_comparisons_equal_a_recount_of_the_saved_samples(tmp_path):
    """Multiple choice on the tiny Target with a strong push, so conditions disagree on some items:
    wins and losses recounted from samples/*.jsonl, the interval and p-value from their counts."""
    from unlock.analysis.stats import mcnemar_exact, newcombe_interval

    cfg = compose_run(
        [
            "experiment=tiny",
            f"paths.cache_dir={tmp_path}",
            "eval.tasks=[unlock_mc]",
            "eval.limit=24",
            "eval.conditions=[unsteered,unlock,random]",
            "alpha=add",
            "alpha.value=8",
            "alpha.positions=all",
        ]
    )
    record = run(run_settings(cfg), tmp_path)
    paired = record["paired"]
    assert {c: set(paired[c]["unlock_mc"]) for c in paired} == {
        "unlock": {"unsteered", "random"},
        "random": {"unsteered"},
    }
    disagreements = 0
    for condition, versus in paired.items():
        for baseline, result in versus["unlock_mc"].items():
            ours, theirs = (
                _read_samples(tmp_path / "samples" / f"{c}__unlock_mc.jsonl") for c in (condition, baseline)
            )
            wins = sum(ours[i] and not theirs[i] for i in ours)
            losses = sum(theirs[i] and not ours[i] for i in ours)
            both = sum(ours[i] and theirs[i] for i in ours)
            assert (result["n"], result["wins"], result["losses"]) == (24, wins, losses)
            assert result["diff"] == pytest.approx((wins - losses) / 24)
            assert result["diff_ci95"] == pytest.approx(
                list(newcombe_interval(both, wins, losses, 24 - both - wins - losses))
            )
            assert result["p_mcnemar"] == mcnemar_exact(wins, losses) and result["effect_from"] == "default"
            disagreements += wins + losses
    assert disagreements > 0, "the test needs conditions that disagree on some items"


def test_with_source_equal_to_target_fidelity_reaches_the_ceiling_in_the_run(tmp_path):
    """The run's UNLOCK and native directions come from one model: each layer's cos is its ceiling."""
    cfg = compose_run(
        [
            "experiment=tiny",
            f"paths.cache_dir={tmp_path}",
            "target_model=tiny_llama",
            "eval.limit=1",
            "eval.max_new_tokens=1",
            "eval.conditions=[native]",
        ]
    )
    record = run(run_settings(cfg), tmp_path)
    fidelity = record["transfer_fidelity"]
    assert len(fidelity) == 4 and all(0 < f["self_ceiling"] <= 1 for f in fidelity.values())
    for layer in fidelity.values():
        assert layer["cos"] == pytest.approx(layer["self_ceiling"], abs=1e-4)


def test_the_comparisons_recomputed_from_the_samples_are_the_runs(single_run):
    """python -m unlock.analysis.paired DIR reads only samples/ (and results.json's settings) and writes what
    the run recorded: the verdict, every accuracy and behaviour comparison, and the family."""
    _, runs, _, _ = single_run
    record = results(runs[0])
    proc = subprocess.run(
        [sys.executable, "-m", "unlock.analysis.paired", str(runs[0])], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    recomputed = json.loads((runs[0] / "paired.json").read_text())
    assert {k: record[k] for k in ("verdict", "paired", "behaviour", "family")} == recomputed
    assert set(record["verdict"]["tests"]) == {"unsteered", "random", "reversed"}
    assert "verdict: " in proc.stdout


def test_rows_carry_their_token_counts_and_steered_conditions_their_dose(single_run):
    _, runs, _, _ = single_run
    record = results(runs[0])
    for condition, per_task in record["conditions"].items():
        metrics = per_task["unlock_arith"]
        rows = [json.loads(line) for line in (runs[0] / "samples" / f"{condition}__unlock_arith.jsonl").open()]
        assert sum(row["gen_tokens"] for row in rows) / len(rows) == pytest.approx(metrics["gen_tokens"])
        steered = condition in ("unlock", "native", "random", "reversed")
        assert ("dose" in metrics) == steered, condition
        if steered:  # one mean per steered layer; a norm-preserving alpha of 0.1 turns a state by asin(0.1) at most
            assert set(metrics["dose"]) == {str(j) for j in range(6)}
            assert all(0 < d <= 2 * math.sin(math.asin(0.1) / 2) + 1e-6 for d in metrics["dose"].values())
            assert metrics["dose_mean"] == pytest.approx(sum(metrics["dose"].values()) / 6)
    behaviour = record["behaviour"]["unlock"]["unlock_arith"]["unsteered"]
    assert set(behaviour) == {"gen_tokens", "gen_words", "stepwise", "repetition"}


def test_a_test_run_of_a_sweep_point_is_checked_against_it(tmp_path):
    """selected_from names the job its sweep selected, finished on the validation split with the same
    models and settings; anything else is refused before a model loads, naming what differs."""
    from omegaconf import OmegaConf

    from unlock.run.record import check_selected_from

    point = tmp_path / "sweep" / "3"
    point.mkdir(parents=True)
    cfg = compose_run([*TINY, f"paths.cache_dir={tmp_path}", "eval.split=test", f"selected_from={point}"])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["eval"]["split"] = "validation"
    config["source_model"]["device"] = "cuda"  # swept on a GPU node: devices do not matter

    def write(config, job="3"):
        (point / "results.json").write_text(json.dumps({"status": "ok", "config": config}))
        (point.parent / "aggregate.json").write_text(json.dumps({"selected_on_validation": {"job": job}}))

    write(config)
    check_selected_from(run_settings(cfg))
    write(config, job="5")
    with pytest.raises(ValueError, match=r"the sweep selected job '5' .*, not '3'"):
        check_selected_from(run_settings(cfg))
    write({**config, "alpha": {**config["alpha"], "value": 0.5}})
    with pytest.raises(ValueError, match=r"differs from the selected point: alpha .*0.1.*the point: .*0.5"):
        check_selected_from(run_settings(cfg))
    write({**config, "capability": {**config["capability"], "n_heldout": 9}})
    with pytest.raises(ValueError, match=r"differs from the selected point: capability"):
        check_selected_from(run_settings(cfg))
    write({**config, "eval": {"split": "test"}})
    with pytest.raises(ValueError, match="selected on the validation split \\(that point's split: test\\)"):
        check_selected_from(run_settings(cfg))
