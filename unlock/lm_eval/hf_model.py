"""A steering-aware lm-eval model: HFLM with UNLOCK's Steering around every forward pass.

Registered as ``unlock``, so both the harness and the CLI use it:
    lm_eval --model unlock --model_args pretrained=DIR,steer=steering_vectors.safetensors --tasks ...
alpha, rule, positions and layers default to what the steer file records (a run's file records the
settings it steered with); explicit model args override them; a file that records none of them gets
SteeringSettings' defaults (alpha 0.05, norm_preserving, last) and every layer with a vector, with a
warning naming the file.
The steer file and the model args are checked before any weights load.

Generation requests are steered through the prefill pass (last prompt token by default). For
loglikelihood requests, one pass holds context and continuation; the prompt boundary of each row is
recovered from the request's context length, so "last prompt token" means the last context token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from unlock.lm_eval.steer_args import steer_args
from unlock.method.steer import Steering, SteeringSettings


def context_boundaries(requests, limit: int, drop_last: bool) -> dict[tuple[int, ...], int]:
    """For loglikelihood requests (_, context tokens, continuation tokens): the model input each one
    becomes (its last ``limit`` tokens, without the final one when ``drop_last``) -> the index of its
    last context token there, the prompt boundary steering reads. Identical inputs keep the first."""
    boundaries: dict[tuple[int, ...], int] = {}
    for _, context_enc, continuation_enc in requests:
        window = (context_enc + continuation_enc)[-limit:]
        dropped = max(0, len(context_enc) + len(continuation_enc) - limit)
        boundaries.setdefault(tuple(window[:-1] if drop_last else window), max(len(context_enc) - 1 - dropped, 0))
    return boundaries


def _flag(value: bool | str, name: str) -> bool:
    """A boolean model arg; the CLI may hand it over as text."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"{name} {value!r} is not allowed; allowed: true, false")
    return text == "true"


@register_model("unlock")
class UnlockLM(HFLM):
    """HFLM whose forward passes run under a configurable :class:`Steering` (none by default)."""

    def __init__(
        self,
        pretrained: Any,
        steer: str | None = None,
        alpha: float | str | None = None,
        rule: str | None = None,
        positions: str | None = None,
        layers: str | list[int] | None = None,
        track_entropy: bool = False,
        **kwargs: Any,
    ) -> None:
        # The harness reads next-token entropy per condition; a softmax over the vocabulary per
        # decoding step (~2% of a step for Gemma's 262k vocabulary on CPU) that CLI runs do not need.
        track_entropy = _flag(track_entropy, "track_entropy")  # checked before any weights load
        # The steer file and the steering args too: a typo should not cost a model load.
        given = steer_args(steer, alpha, rule, positions, layers)
        kwargs.setdefault("trust_remote_code", False)
        super().__init__(pretrained=pretrained, **kwargs)
        self.track_entropy = track_entropy
        self._steering: Steering | None = None
        self._boundaries: dict[tuple[int, ...], int] = {}
        self.reset_stats()
        if given.vectors is not None:
            self.set_steering(given.vectors, given.settings, given.layers)

    # --- steering control ----------------------------------------------------------------------
    def set_steering(
        self,
        vectors: Mapping[int, torch.Tensor] | None,
        settings: SteeringSettings = SteeringSettings(),
        layers: list[int] | None = None,
        measure_dose: bool = False,
    ) -> None:
        """Steer every following request with these vectors and settings (vectors None: no steering); with
        ``measure_dose``, :meth:`steering_dose` reports the relative change applied per layer."""
        self._steering = None if not vectors else Steering(self.model, vectors, settings, layers, measure_dose)

    def steering_dose(self) -> dict[int, float]:
        """{layer: mean ||h' - h|| / ||h|| over the steered positions} since steering was set ({} if unmeasured)."""
        steering = self._steering
        return steering.dose.means() if steering is not None and steering.dose is not None else {}

    def reset_stats(self) -> None:
        """Counters a condition reports: forward passes and (with track_entropy) next-token entropy."""
        self.stats = {"forward_passes": 0, "entropy_sum": 0.0, "generated_tokens": 0}

    def _steered(self):
        return self._steering if self._steering is not None else contextlib.nullcontext()

    # --- loglikelihood -------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, *args, **kwargs):
        # HFLM feeds the last max_length + 1 tokens without the final one (it is only predicted).
        self._boundaries = context_boundaries(requests, self.max_length + 1, drop_last=True)
        try:
            return super()._loglikelihood_tokens(requests, *args, **kwargs)
        finally:
            self._boundaries.clear()

    def _row_boundaries(self, inps: torch.Tensor) -> torch.Tensor | None:
        pad = self.tokenizer.pad_token_id or 0
        found = []
        for row in inps.tolist():
            end = len(row)
            while True:
                boundary = self._boundaries.get(tuple(row[:end]))
                if boundary is not None or end == 0 or row[end - 1] not in (0, pad):
                    break
                end -= 1  # strip right padding one token at a time (a real token may equal pad)
            if boundary is None:
                return None
            found.append(boundary)
        return torch.tensor(found, device=inps.device)

    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        self.stats["forward_passes"] += 1
        if self._steering is None:
            return super()._model_call(inps, attn_mask, labels)
        boundary = self._row_boundaries(inps) if self._boundaries else None
        if boundary is None:
            with self._steering:  # a call outside loglikelihood requests: read positions from the input
                return super()._model_call(inps, attn_mask, labels)
        with self._steering, self._steering.prompt_boundary(boundary):
            # Positional, as HFLM declares them (inps, attn_mask, labels): no keyword name to track.
            return super()._model_call(inps, attn_mask, labels)

    # --- generation ----------------------------------------------------------------------------
    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        entropies: list[torch.Tensor] = []

        steps = [0]

        def record_step(_module, _args, output):
            steps[0] += 1
            if self.track_entropy:
                # One log-softmax per step, left on the device: a per-step .cpu() would sync the GPU.
                logp = output.logits[:, -1].float().log_softmax(-1)
                entropies.append(-(logp.exp() * logp).sum(-1))

        handle = self.model.register_forward_hook(record_step)
        # Eager decoding for every condition: on a GPU, generate() compiles the decoding steps of a model
        # whose generation config asks for a static cache, and that graph calls no hook (steering, the
        # step count, the entropy); compiled or not, every condition also takes the same numerical path.
        generation_kwargs["disable_compile"] = True
        try:
            with self._steered():
                out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        finally:
            handle.remove()
        self.stats["forward_passes"] += steps[0]
        generated = out[:, context.shape[1] :]
        if entropies and generated.numel():
            per_step = torch.stack(entropies, dim=1)[:, : generated.shape[1]].cpu()
            ends = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id} - {None}
            generated = generated.cpu()
            stopped = torch.zeros_like(generated, dtype=torch.bool)
            for token in ends:
                stopped |= generated == token
            # A row is live up to and including its first end token.
            live = (stopped.long().cumsum(dim=1) - stopped.long()) == 0
            live = live[:, : per_step.shape[1]]
            self.stats["entropy_sum"] += float(per_step[live].sum())
            self.stats["generated_tokens"] += int(live.sum())
        return out
