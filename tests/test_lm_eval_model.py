"""The `unlock` lm-eval model steers loglikelihood requests at the last context token, per row."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from tests.helpers import compose_run
from unlock.analysis.stats import wilson_interval
from unlock.lm_eval.hf_model import UnlockLM
from unlock.lm_eval.steer_args import parse_layers, steer_args
from unlock.method.steer import STEER_POSITIONS, STEER_RULES, Steering, SteeringSettings
from unlock.store.artifacts import load_tensors, save_steering_vectors, save_tensors

PAIRS = [("Question: What is 3 plus 4?\nAnswer:", " 7"), ("Hi", " there 12"), ("Q: 6 times 9? A:", " 54")]


@pytest.fixture(scope="module")
def lm(llama, tokenizer):
    return UnlockLM(pretrained=llama, tokenizer=tokenizer, batch_size=2)


def _requests():
    return [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(PAIRS)]


def _manual_loglikelihood(lm, model, vectors, alpha, context, continuation) -> float:
    context_enc, continuation_enc = lm._encode_pair(context, continuation)
    tokens = torch.tensor([context_enc + continuation_enc[:-1]])
    with (
        torch.no_grad(),
        Steering(model, vectors, SteeringSettings(alpha)) as steering,
        steering.prompt_boundary(torch.tensor([len(context_enc) - 1])),
    ):
        logprobs = model(tokens).logits.log_softmax(-1)[0]
    positions = range(len(context_enc) - 1, len(context_enc) - 1 + len(continuation_enc))
    return float(sum(logprobs[p, t] for p, t in zip(positions, continuation_enc, strict=False)))


def test_loglikelihood_matches_steering_at_last_context_token(lm, llama):
    gen = torch.Generator().manual_seed(0)
    vectors = {layer: torch.randn(64, generator=gen) for layer in range(4)}
    lm.set_steering(None)
    plain = [ll for ll, _ in lm.loglikelihood(_requests())]
    lm.set_steering(vectors, SteeringSettings(0.5))
    steered = [ll for ll, _ in lm.loglikelihood(_requests())]
    lm.set_steering(None)
    for (context, continuation), got, base in zip(PAIRS, steered, plain, strict=False):
        assert got == pytest.approx(_manual_loglikelihood(lm, llama, vectors, 0.5, context, continuation), abs=1e-4)
        assert got != pytest.approx(base, abs=1e-4)


def test_alpha_zero_scores_like_the_plain_model(lm):
    lm.set_steering(None)
    plain = lm.loglikelihood(_requests())
    lm.set_steering({0: torch.ones(64)}, SteeringSettings(0.0))
    assert lm.loglikelihood(_requests()) == plain
    lm.set_steering(None)


@pytest.mark.parametrize(
    ("spec", "layers"), [("all", None), (None, None), ("3", [3]), ("0-2", [0, 1, 2]), ("1;4;7", [1, 4, 7])]
)
def test_parse_layers(spec, layers):
    assert parse_layers(spec) == layers


def test_parse_layers_rejects_garbage():
    with pytest.raises(ValueError, match=r"layers 'a-b' is not understood"):
        parse_layers("a-b")


def test_wilson_interval_known_values():
    low, high = wilson_interval(20, 40)
    assert (round(low, 3), round(high, 3)) == (0.352, 0.648)
    assert wilson_interval(0, 40)[0] == 0.0 and wilson_interval(40, 40)[1] == 1.0


def test_generation_entropy_matches_a_full_pass(lm, llama, tokenizer):
    """The per-token entropy the `unlock` model reports equals the entropy of a fresh full pass."""
    lm.set_steering(None)
    lm.reset_stats()
    lm.track_entropy = True
    context = torch.tensor([tokenizer("Question: What is 3 plus 4?\nAnswer:").input_ids])
    try:
        out = lm._model_generate(context, max_length=context.shape[1] + 6, stop=["\n\n"], do_sample=False)
    finally:
        lm.track_entropy = False
    generated = out[0, context.shape[1] :].tolist()
    ends = {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}
    live = next((i + 1 for i, t in enumerate(generated) if t in ends), len(generated))
    with torch.no_grad():
        logp = llama(out).logits[0].float().log_softmax(-1)
    steps = logp[context.shape[1] - 1 : context.shape[1] - 1 + live]
    expected = float(-(steps.exp() * steps).sum(-1).sum())
    assert lm.stats["generated_tokens"] == live > 0
    assert lm.stats["entropy_sum"] == pytest.approx(expected, rel=1e-4)
    assert lm.stats["forward_passes"] == len(generated)


def test_entropy_is_off_by_default_but_forward_passes_count(lm, tokenizer):
    """CLI runs skip the per-step softmax; the harness turns it on (`track_entropy=True`)."""
    assert lm.track_entropy is False
    lm.set_steering(None)
    lm.reset_stats()
    context = torch.tensor([tokenizer("Hi there").input_ids])
    out = lm._model_generate(context, max_length=context.shape[1] + 4, stop=["\n\n"], do_sample=False)
    assert lm.stats["generated_tokens"] == 0 and lm.stats["entropy_sum"] == 0.0
    assert lm.stats["forward_passes"] == out.shape[1] - context.shape[1] > 0
    assert UnlockLM(pretrained=lm.model, tokenizer=tokenizer, track_entropy="true").track_entropy is True
    with pytest.raises(ValueError, match=r"track_entropy 'yes' is not allowed; allowed: true, false"):
        UnlockLM(pretrained="no/such-model", tokenizer=tokenizer, track_entropy="yes")


@pytest.mark.parametrize(
    "family,block_path", [("llama", "layers"), ("qwen2", "layers"), ("gemma3", "layers"), ("gpt2", "h")]
)
def test_exported_vectors_steer_through_lm_eval_steered_model(tmp_path, family, block_path):
    """The `lm_eval_steered.pt` a run writes names the Target's own blocks, and lm-eval's steered
    model, loading it, adds alpha * v at every position of those blocks, as Steering's `add` rule does."""
    from functools import partial

    from lm_eval.models.hf_steered import SteeredModel, steer

    from unlock.method.blocks import block_path_under_base_model
    from unlock.method.pipeline import Cached
    from unlock.models.loading import load_model, model_skeleton
    from unlock.run.record import export_steering

    model_cfg = {"kind": "tiny", "family": family, "hidden_size": 64, "num_layers": 3, "seed": 0}
    model = load_model(model_cfg, str(tmp_path)).model
    found = block_path_under_base_model(model_skeleton(model_cfg, str(tmp_path)))
    assert found == block_path == block_path_under_base_model(model)
    generator = torch.Generator().manual_seed(1)
    vectors = {j: torch.randn(64, generator=generator) for j in (0, 2)}
    files = export_steering(tmp_path, {"unlock": Cached(vectors)}, SteeringSettings(0.5, "add", "all"), found)
    assert set(files) == {"steering_vectors", "lm_eval_steered"}
    exported = torch.load(tmp_path / "lm_eval_steered.pt", weights_only=True)
    assert set(exported) == {f"{block_path}.0", f"{block_path}.2"}
    hooks = {
        name: partial(SteeredModel.add, vector=info["steering_vector"] * info["steering_coefficient"], head_index=None)
        for name, info in exported.items()
    }
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        plain = model(ids).logits
        with steer(model, hooks):  # raises when a hookpoint does not resolve
            theirs = model(ids).logits
        with Steering(model, vectors, SteeringSettings(0.5, "add", "all")):
            ours = model(ids).logits
    assert not torch.allclose(plain, theirs)
    torch.testing.assert_close(theirs, ours)


# --- the steer file's settings and bad inputs ----------------------------------------------------
def _steer_file(tmp_path, meta=None, name="steering_vectors.safetensors"):
    """A steer file for the llama stand-in (width 64, 4 layers), as the harness writes it."""
    generator = torch.Generator().manual_seed(2)
    path = tmp_path / name
    save_steering_vectors(path, {layer: torch.randn(64, generator=generator) for layer in range(4)}, meta)
    return path


def _settings(lm):
    steering = lm._steering
    return steering.alpha, steering.rule, steering.positions, steering.layers


def test_the_steer_files_settings_are_the_defaults_and_model_args_override(llama, tokenizer, tmp_path):
    path = str(_steer_file(tmp_path, {"alpha": 0.05, "rule": "add", "positions": "prompt", "layers": [1, 3]}))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*steer file")  # a file with its settings: no warning
        assert _settings(UnlockLM(pretrained=llama, tokenizer=tokenizer, steer=path)) == (0.05, "add", "prompt", [1, 3])
    assert _settings(UnlockLM(pretrained=llama, tokenizer=tokenizer, steer=path, alpha=0.2)) == (
        0.2,
        "add",
        "prompt",
        [1, 3],
    )
    # As the CLI hands them over: text.
    overridden = UnlockLM(
        pretrained=llama,
        tokenizer=tokenizer,
        steer=path,
        alpha="0.2",
        rule="norm_preserving",
        positions="last",
        layers="all",
    )
    assert _settings(overridden) == (0.2, "norm_preserving", "last", [0, 1, 2, 3])


def test_a_file_without_settings_gets_todays_defaults_and_one_warning_naming_it(llama, tokenizer, tmp_path):
    path = str(_steer_file(tmp_path))  # records only its layers (every file does): all four
    with pytest.warns(UserWarning) as record:
        lm = UnlockLM(pretrained=llama, tokenizer=tokenizer, steer=path)
    ours = [str(w.message) for w in record if path in str(w.message)]
    default = SteeringSettings()  # the harness's one default, as the run's alpha group gives it
    assert ours == [
        f"steer file {path} records no alpha, rule, positions; using alpha={default.alpha}, "
        "rule=norm_preserving, positions=last (model args override)"
    ]
    assert _settings(lm) == (default.alpha, "norm_preserving", "last", [0, 1, 2, 3])
    assert default.alpha == compose_run([]).alpha.value
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*steer file")  # everything given: nothing defaulted
        given = steer_args(path, alpha=0.3, rule="add", positions="all", layers="0-1")
    assert (given.settings, given.layers) == (SteeringSettings(0.3, "add", "all"), [0, 1])


@pytest.fixture
def no_weights(monkeypatch):
    """Loading weights (HFLM.__init__) fails the test: the error under test must come first."""

    def refuse(self, *args, **kwargs):
        raise AssertionError("weights would load here")

    monkeypatch.setattr(HFLM, "__init__", refuse)


def test_good_inputs_do_reach_the_weights(no_weights, tmp_path):
    """The control for the tests below: with nothing wrong, the refusal is what stops it."""
    with pytest.raises(AssertionError, match="weights would load here"):
        UnlockLM(
            pretrained="no/such-model", steer=str(_steer_file(tmp_path)), alpha="0.2", rule="add", positions="last"
        )


def _truncated(tmp_path):
    real = _steer_file(tmp_path, name="real.safetensors")
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(real.read_bytes()[:100])
    return path


def _not_safetensors(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("alpha=0.1, rule=add\n")
    return path


def _directions(tmp_path):
    path = tmp_path / "directions.safetensors"
    save_tensors(path, {"direction.0": torch.ones(64)}, {"kind": "directions"})
    return path


@pytest.mark.parametrize(
    ("make_file", "error", "message"),
    [
        (lambda tmp: tmp / "missing.safetensors", FileNotFoundError, "no artifact at {path}"),
        (lambda tmp: tmp, FileNotFoundError, "no artifact at {path}"),
        (_directions, ValueError, "{path} holds a 'directions' artifact, expected 'steering_vectors'"),
        (_truncated, ValueError, "{path} is truncated or not a safetensors file"),
        (_not_safetensors, ValueError, "{path} is truncated or not a safetensors file"),
    ],
    ids=["missing", "directory", "wrong-kind", "truncated", "not-safetensors"],
)
def test_a_bad_steer_file_fails_before_weights_load_naming_it(no_weights, tmp_path, make_file, error, message):
    path = make_file(tmp_path)
    with pytest.raises(error, match=re.escape(message.format(path=path))):
        UnlockLM(pretrained="no/such-model", steer=str(path))


def test_load_tensors_wraps_a_truncated_file_naming_it(tmp_path):
    path = _truncated(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{path} is truncated or not a safetensors file")) as caught:
        load_tensors(path)
    assert type(caught.value) is ValueError  # not safetensors' own SafetensorError


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"alpha": "abc"}, "alpha 'abc' is not allowed: must be a finite number"),
        ({"alpha": "nan"}, "alpha nan is out of range: must be a finite number"),
        ({"alpha": float("inf")}, "alpha inf is out of range: must be a finite number"),
        ({"rule": "sideways"}, f"rule 'sideways' is not allowed; allowed: {', '.join(STEER_RULES)}"),
        ({"positions": "middle"}, f"positions 'middle' is not allowed; allowed: {', '.join(STEER_POSITIONS)}"),
        ({"layers": "a-b"}, "layers 'a-b' is not understood"),
    ],
    ids=["alpha-text", "alpha-nan", "alpha-inf", "rule", "positions", "layers"],
)
@pytest.mark.parametrize("with_file", [True, False], ids=["steer-file", "no-steer-file"])
def test_a_bad_steering_arg_fails_before_weights_load_naming_it(no_weights, tmp_path, args, message, with_file):
    steer = str(_steer_file(tmp_path, {"alpha": 0.05, "rule": "add"})) if with_file else None
    with pytest.raises(ValueError, match=re.escape(message)):
        UnlockLM(pretrained="no/such-model", steer=steer, **args)


def test_a_bad_recorded_setting_names_the_file(no_weights, tmp_path):
    path = _steer_file(tmp_path, {"rule": "bogus"})
    expected = f"steer file {path}: its recorded rule 'bogus' is not allowed; allowed: {', '.join(STEER_RULES)}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        UnlockLM(pretrained="no/such-model", steer=str(path))


def test_generation_never_runs_a_compiled_graph_that_skips_the_hooks(llama, tokenizer):
    """On a GPU, generate() compiles the decoding steps of a model whose generation config asks for a
    static cache; that graph calls no hook, so steering, the step count and the entropy would go
    missing. Here compiling is forced on this CPU (CompileConfig's private testing flag) with a backend
    that marks its outputs: the model's own generate() shows the mark, the `unlock` model's does not."""
    from transformers import CompileConfig

    def marking_backend(graph_module, example_inputs):
        def run(*args):
            outputs = graph_module(*args)
            return [out + 1.0 if isinstance(out, torch.Tensor) and out.is_floating_point() else out for out in outputs]

        return run

    compile_config = CompileConfig(backend=marking_backend, mode=None)
    compile_config._compile_all_devices = True
    model = type(llama)(llama.config)
    model.load_state_dict(llama.state_dict())
    model.eval()
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = compile_config
    context = torch.tensor([tokenizer("Question: What is 3 plus 4?\nAnswer:").input_ids])
    kwargs = {"max_new_tokens": 4, "min_new_tokens": 4, "do_sample": False, "output_logits": True}

    def logits(**extra):
        with torch.no_grad():
            out = model.generate(context, return_dict_in_generate=True, **kwargs, **extra)
        return torch.stack(out.logits, dim=1)

    eager = logits(disable_compile=True)
    assert not torch.allclose(logits(), eager), "the control: generate() must run the marking graph here"
    lm = UnlockLM(pretrained=model, tokenizer=tokenizer, batch_size=1, track_entropy=True)
    recorded = []
    handle = model.register_forward_hook(lambda _m, _a, output: recorded.append(output.logits[:, -1]))
    try:
        out = lm._model_generate(context, max_length=context.shape[1] + 4, stop=[], do_sample=False)
    finally:
        handle.remove()
    assert out.shape[1] == context.shape[1] + 4
    assert lm.stats["forward_passes"] == len(recorded) == 4, "every decoding step must run the hooks"
    torch.testing.assert_close(torch.stack(recorded, dim=1), eager, atol=1e-5, rtol=0)
