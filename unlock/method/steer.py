"""Stage 4: steer a Target model by adding mapped directions to its residual stream.

Default (docs/method.md, step 6): at every decoder layer j, with that layer's own vector r_j,
during the prefill pass only, at the last prompt token only, norm-preserving:
    h <- ||h|| * normalize(h / ||h|| + alpha * r_j / ||r_j||).
Generated tokens then see the change through the KV cache only.

Hooks only, no patched modeling files; they are removed on exit, also after an exception. Hooks run
in eager forward passes only: a graph compiled before they were registered skips them without a word
(torch.compile does not guard on hooks), so :class:`Steering` keeps transformers' generate() from
compiling its decoding steps while it is active (see ``__enter__``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Cache, GenerationConfig

from unlock.method.blocks import check_layers, decoder_layers, hidden_size
from unlock.method.capture import last_token_index

STEER_RULES = ("norm_preserving", "add")


@dataclass(frozen=True)
class PositionRule:
    """Which tokens a ``positions`` mode steers, relative to the prompt's last token (the boundary):
    earlier prompt tokens, the last prompt token, generated (or scored continuation) tokens."""

    before: bool
    last: bool
    after: bool

    def steers(self, position, boundary):
        """Whether ``position`` is steered; ints or tensors (elementwise)."""
        return (
            ((position < boundary) & self.before)
            | ((position == boundary) & self.last)
            | ((position > boundary) & self.after)
        )

    @property
    def prompt_only(self) -> bool:
        """Steers prompt tokens but no generated ones: needs the whole prompt in one prefill pass."""
        return (self.before or self.last) and not self.after


# A new position mode is one row here (the config's choices, HF steering and vLLM steering read it).
POSITION_RULES: dict[str, PositionRule] = {
    "last": PositionRule(before=False, last=True, after=False),  # the paper's: the last prompt token
    "prompt": PositionRule(before=True, last=True, after=False),
    "generated": PositionRule(before=False, last=False, after=True),
    "all": PositionRule(before=True, last=True, after=True),
}
STEER_POSITIONS = tuple(POSITION_RULES)  # the built-in modes; checks read POSITION_RULES itself


@dataclass(frozen=True)
class SteeringSettings:
    """How the Target is steered (config group ``alpha``; the lm-eval models' defaults). The one
    default of each: alpha 0.05 is the value chosen for the default pair on its validation split
    (conf/experiment/cot_smollm2_to_gemma3.yaml), on the paper's grid {0.05, 0.1, 0.2, 0.5}; the
    rule and positions are the paper's (docs/method.md step 6)."""

    alpha: float = 0.05
    rule: str = "norm_preserving"
    positions: str = "last"

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if self.rule not in STEER_RULES:
            raise ValueError(f"unknown steering rule {self.rule!r}; allowed: {', '.join(STEER_RULES)}")
        if self.positions not in POSITION_RULES:
            raise ValueError(f"unknown steering positions {self.positions!r}; allowed: {', '.join(POSITION_RULES)}")


# Positions a forward call steers, as an index into hidden states (batch, seq, d): (rows, cols) index
# tensors (one position per row), a view without gather or scatter (LAST_COLUMN, the final position of
# every row, or EVERY_POSITION, the whole call: all-position steering, and every decoding step that
# steers), or a (batch, seq) bool mask: many positions per row, with padding or a prompt boundary.
LAST_COLUMN = (slice(None), -1)
EVERY_POSITION = (slice(None), slice(None))
SteeredIndex = tuple[torch.Tensor, torch.Tensor] | tuple[slice, int] | tuple[slice, slice] | torch.Tensor


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha {alpha!r} is out of range: must be a finite number (paper grid 0.05, 0.1, 0.2, 0.5)")
    return float(alpha)


def steering_shift(vector: torch.Tensor, alpha: float, rule: str) -> torch.Tensor:
    """What the rule adds, float32: alpha * r / ||r|| (norm-preserving, to the unit hidden state) or
    alpha * r (add). Works on one vector (d,) or a stack (L, d)."""
    v = vector.float()
    if rule == "add":
        return alpha * v
    return alpha * v / torch.linalg.vector_norm(v, dim=-1, keepdim=True)


_TINY = torch.finfo(torch.float32).tiny


def apply_shift(hidden: torch.Tensor, shift: torch.Tensor, rule: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """The steering update for every row of ``hidden`` (..., d) given its :func:`steering_shift`,
    computed in float32 and returned in ``hidden``'s dtype; with ``out`` (``hidden`` itself may be
    given, under inference), written there instead, bit for bit the same values: the last float32
    op writes into ``out`` and rounds as ``.to(dtype)`` does, with no float32 result to copy back."""
    h = hidden.float()
    # Few ops on purpose: each small op costs ~10 us of dispatch on a CPU, and this runs at every layer.
    if rule == "add":
        return torch.add(h, shift, out=out) if out is not None else (h + shift).to(hidden.dtype)
    norm = torch.linalg.vector_norm(h, dim=-1, keepdim=True).clamp_min(_TINY)
    shifted = torch.addcdiv(shift, h, norm)  # h / ||h|| + shift
    scale = norm / torch.linalg.vector_norm(shifted, dim=-1, keepdim=True)
    return torch.mul(shifted, scale, out=out) if out is not None else (shifted * scale).to(hidden.dtype)


def relative_change(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """||after - before|| / ||before|| per row, float32: the dose steering actually applied to a hidden
    state (comparable across models: a norm-preserving alpha of 0.3 moves a state by about 0.3 of its
    norm when the vector is orthogonal to it, less when it already points that way)."""
    h = before.float()
    change = torch.linalg.vector_norm(after.float() - h, dim=-1)
    return change / torch.linalg.vector_norm(h, dim=-1).clamp_min(torch.finfo(torch.float32).tiny)


class DoseMeter:
    """Sums of :func:`relative_change` per layer, kept on the device (no host sync per forward pass)."""

    def __init__(self) -> None:
        self._sums: dict[int, list] = {}

    def add(self, layer: int, before: torch.Tensor, after: torch.Tensor) -> None:
        change = relative_change(before.detach(), after.detach())
        self.add_sum(layer, change.sum(), change.numel())

    def add_sum(self, layer: int, total: float | torch.Tensor, n: int) -> None:
        """Add ``n`` positions whose relative changes sum to ``total`` (a device tensor is summed there,
        without a host sync; a float comes from elsewhere, e.g. counts a compiled graph kept)."""
        sums = self._sums.setdefault(layer, [0.0, 0])
        sums[0] = sums[0] + total
        sums[1] += n

    def means(self) -> dict[int, float]:
        """{layer: mean relative dose over every steered position so far} (layers with positions only)."""
        return {layer: float(total) / n for layer, (total, n) in sorted(self._sums.items()) if n}

    def reset(self) -> None:
        self._sums.clear()


def apply_rule(hidden: torch.Tensor, vector: torch.Tensor, alpha: float, rule: str) -> torch.Tensor:
    """The steering update of ``hidden`` (..., d) by ``vector`` at strength ``alpha``."""
    return apply_shift(hidden, steering_shift(vector.to(hidden.device), alpha, rule), rule)


def past_length(args: tuple, kwargs: Mapping) -> int:
    """Tokens already in the KV cache passed to a model call: 0 in a prefill pass, > 0 in a decoding step.

    The cache is found by its type, not its keyword: transformers renamed the keyword (generate() hands
    it over as ``past_key_values`` up to 5.2x and as ``cache`` in 5.24), but every KV cache of a 5.x
    model is a ``transformers.Cache``, the documented base class, and ``get_seq_length()`` its
    documented length. A call without a cache (scoring, ``use_cache=False``) is a prefill pass.
    """
    for value in (*args, *kwargs.values()):
        if isinstance(value, Cache):
            return int(value.get_seq_length())
    return 0


class Steering(contextlib.AbstractContextManager):
    """Context manager that steers ``model`` while active.

    vectors: {layer: (d,) tensor}; settings: alpha, rule and positions (:class:`SteeringSettings`, which
    checks them); layers: the subset to steer (default: every layer with a vector); measure_dose: record
    the relative change each steered position received, per layer (``dose``).
    positions: ``last`` (last prompt token, prefill only; default), ``prompt`` (all prompt tokens,
    prefill only), ``generated`` (tokens after the prompt: decoding steps, or continuation tokens in
    scoring), ``all`` (both). The prompt boundary is read per row from the attention mask (left or
    right padding), or set explicitly with :meth:`prompt_boundary` for loglikelihood scoring, where
    one forward pass holds context and continuation.
    """

    def __init__(
        self,
        model: nn.Module,
        vectors: Mapping[int, torch.Tensor],
        settings: SteeringSettings = SteeringSettings(),
        layers: list[int] | None = None,
        measure_dose: bool = False,
    ) -> None:
        if not isinstance(settings, SteeringSettings):  # checked once, where SteeringSettings is built
            raise TypeError(
                f"Steering takes its alpha, rule and positions as one SteeringSettings, got {settings!r}: "
                "Steering(model, vectors, SteeringSettings(alpha=0.1))"
            )
        self.settings = settings
        self.alpha, self.rule, self.positions = float(settings.alpha), settings.rule, settings.positions
        self.model = model
        rule = self.rule
        self._positions = POSITION_RULES[self.positions]
        self._blocks = decoder_layers(model)
        n_layers, width = len(self._blocks), hidden_size(model)
        if not vectors:
            raise ValueError("no steering vectors given: pass {layer: vector} for at least one layer")
        self.vectors = {}
        for layer, vector in vectors.items():
            (idx,) = check_layers([int(layer)], n_layers, "steering layer")
            if vector.shape != (width,):
                raise ValueError(
                    f"steering vector for layer {layer} has shape {tuple(vector.shape)}, expected ({width},)"
                )
            self.vectors[idx] = vector.detach().float()
        # One pass over all vectors (not a few small ops per layer): finiteness, norms, and the shift
        # each hook adds, computed once here rather than on every forward pass.
        stacked = torch.stack(list(self.vectors.values()))
        finite = torch.isfinite(stacked).all(dim=1).tolist()
        norms = torch.linalg.vector_norm(stacked, dim=1).tolist()
        for idx, ok, norm in zip(self.vectors, finite, norms, strict=False):
            if not ok:
                raise ValueError(f"steering vector for layer {idx} contains NaN or inf")
            if rule == "norm_preserving" and norm == 0.0:
                raise ValueError(f"steering vector for layer {idx} is zero; norm-preserving steering needs a direction")
        self._shifts = dict(zip(self.vectors, steering_shift(stacked, self.alpha, rule).unbind(0), strict=False))
        chosen = sorted(self.vectors) if layers is None else check_layers(list(layers), n_layers, "steering layer")
        missing = [layer for layer in chosen if layer not in self.vectors]
        if missing:
            raise ValueError(f"steering layers {missing} have no vector; vectors exist for {sorted(self.vectors)}")
        self.layers = chosen
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._compile_setting: tuple[GenerationConfig, bool | None] | None = None  # disable_compile before __enter__
        self._index: SteeredIndex | None = None  # the positions steered in this forward call
        self._mask_count = 0  # how many positions a mask index steers (counted when measuring the dose)
        self._boundary: torch.Tensor | None = None
        self.steered_calls = {"prefill": 0, "decode": 0}
        # The relative change ||h' - h|| / ||h|| at every steered position, per layer (read with dose.means()).
        self.dose = DoseMeter() if measure_dose else None

    # --- phase and position bookkeeping -------------------------------------------------------
    @contextlib.contextmanager
    def prompt_boundary(self, last_prompt_index: torch.Tensor) -> Iterator[None]:
        """Within this block, row b's last prompt token is at ``last_prompt_index[b]`` (absolute index)."""
        previous, self._boundary = self._boundary, last_prompt_index
        try:
            yield
        finally:
            self._boundary = previous

    def _steered_index(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, past_len: int
    ) -> SteeredIndex | None:
        """The positions this forward call steers: (rows, cols) index tensors, a view (LAST_COLUMN,
        EVERY_POSITION), or None."""
        batch, length = input_ids.shape[:2]
        device = input_ids.device
        if past_len > 0:  # a decoding step: its tokens are generated ones
            return EVERY_POSITION if self._positions.after else None
        every = self._positions.before and self._positions.last and (self._positions.after or self._boundary is None)
        if every and (attention_mask is None or bool(attention_mask[:, -length:].all())):
            return EVERY_POSITION  # every position of this call is steered (no padding): the whole tensor
        if (
            self._positions == POSITION_RULES["last"]
            and self._boundary is None
            and (attention_mask is None or bool(attention_mask[:, -1].all()))
        ):
            # Every row's prompt ends in the final column (left padding, as batched generation lays
            # prompts out, or none): the hooks read and write a strided view instead of gathering.
            # The check costs one host sync per prefill on a GPU; the gathers it saves run per layer.
            return LAST_COLUMN
        if self._boundary is not None:
            last = self._boundary.to(device)
        elif attention_mask is None:
            last = torch.full((batch,), length - 1, dtype=torch.long, device=device)
        else:
            last = last_token_index(attention_mask[:, -length:])
        if self._positions == POSITION_RULES["last"]:  # one position per row: no mask
            return torch.arange(batch, device=device), last
        if self._boundary is None and not (self._positions.before or self._positions.last):
            return None  # only tokens after the prompt, and this pass holds the prompt alone
        valid = (
            torch.ones(batch, length, dtype=torch.bool, device=device)
            if attention_mask is None
            else attention_mask[:, -length:].bool()
        )
        index = torch.arange(length, device=device).unsqueeze(0)
        # A mask, not (rows, cols) from nonzero(): no gather and scatter of most of the batch at every
        # layer, and no wait for the GPU (nonzero() syncs) in every pass.
        return valid & self._positions.steers(index, last.unsqueeze(1))

    def _pre_forward(self, _module, args, kwargs):
        # input_ids / inputs_embeds / attention_mask are the documented inputs of every transformers
        # causal LM and of generate(); the cache keyword is not stable, so the cache is found by type
        # (past_length). tests/test_steer_phases.py checks the phases by behaviour on every version.
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            input_ids = kwargs.get("inputs_embeds")
        if input_ids is None:
            raise RuntimeError("Steering found neither input_ids nor inputs_embeds in the model call")
        attention_mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        if not (isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 2):
            # A 4-D mask (static caches) or a mapping of masks (Gemma-3) says nothing about padding
            # that the cache and the layout do not: prompts end in the last column (left padding).
            attention_mask = None
        past_len = past_length(args, kwargs)
        if past_len > 0 and input_ids.shape[1] > 1 and self._positions.prompt_only and self.alpha != 0.0:
            # Prompt tokens after a cached part (chunked prefill, assisted decoding): the prompt's
            # last token may be in this call or may have been steered wrongly in an earlier one.
            raise RuntimeError(
                f"Steering with positions={self.positions!r} needs the whole prompt in one prefill pass, but a call "
                f"brings {input_ids.shape[1]} tokens after {past_len} cached ones (chunked prefill or assisted "
                "decoding); generate without prefill_chunk_size or assistant models"
            )
        if past_len == 0 and attention_mask is not None and attention_mask.shape[-1] > input_ids.shape[1]:
            # A mask longer than the input means earlier tokens exist that no cache accounted for: the
            # phase cannot be told, and guessing "prefill" would steer every decoding step.
            raise RuntimeError(
                f"Steering cannot tell the prefill from a decoding step: the attention mask covers "
                f"{attention_mask.shape[-1]} tokens, the input {input_ids.shape[1]}, and no transformers.Cache "
                "was passed to the model; generate with use_cache=True (the default)"
            )
        # Found once per forward pass and shared by every layer's hook.
        self._index = None if self.alpha == 0.0 else self._steered_index(input_ids, attention_mask, past_len)
        if isinstance(self._index, torch.Tensor) and self.dose is not None:
            self._mask_count = int(self._index.sum())  # the dose's denominator, counted once per pass
        if self._index is not None:
            self.steered_calls["decode" if past_len > 0 else "prefill"] += 1

    def _make_layer_hook(self, layer: int):
        shifts_on: dict[torch.device, torch.Tensor] = {}  # one host-to-device copy per device, not per call

        def hook(_module, _inputs, output):
            if self._index is None:
                return None
            hidden = output[0] if isinstance(output, tuple) else output
            shift = shifts_on.get(hidden.device)
            if shift is None:
                shift = shifts_on.setdefault(hidden.device, self._shifts[layer].to(hidden.device))
            index = self._index
            if isinstance(index, torch.Tensor):
                return self._steer_masked(layer, output, hidden, shift, index)
            # Only the steered rows are computed (the last prompt token by default), not every position.
            before = hidden[index]
            if self.dose is None and not torch.is_grad_enabled() and not isinstance(index[0], torch.Tensor):
                apply_shift(before, shift, self.rule, out=before)  # a view: written in place, no copy
                return None
            steered = apply_shift(before, shift, self.rule)
            if self.dose is not None:  # before the write-back: ``before`` may be a view of ``hidden``
                self.dose.add(layer, before, steered)
            if not torch.is_grad_enabled():  # inference: write them back in place
                hidden[index] = steered
                return None
            updated = hidden.clone()  # out of place, so gradients flow; the same index works for both kinds
            updated[index] = steered
            return (updated, *output[1:]) if isinstance(output, tuple) else updated

        return hook

    def _steer_masked(self, layer, output, hidden, shift, mask):
        """Every position updated, the unsteered ones then taken back from ``hidden`` (bitwise)."""
        mask = mask.unsqueeze(-1)
        inference = not torch.is_grad_enabled()
        if inference and self.dose is None:  # written in place: no copy of the whole stream
            torch.where(mask, apply_shift(hidden, shift, self.rule), hidden, out=hidden)
            return None
        steered = torch.where(mask, apply_shift(hidden, shift, self.rule), hidden)
        if self.dose is not None:  # unsteered positions changed by exactly 0
            self.dose.add_sum(layer, relative_change(hidden.detach(), steered.detach()).sum(), self._mask_count)
        if inference:
            hidden.copy_(steered)
            return None
        return (steered, *output[1:]) if isinstance(output, tuple) else steered

    # --- context manager -----------------------------------------------------------------------
    def __enter__(self) -> Steering:
        if self._handles:
            raise RuntimeError("this Steering context is already active")
        try:
            # generate() compiles its decoding steps (torch.compile of the model's __call__, kept on the
            # model) whenever the cache is static and the device an accelerator: on a GPU, a model whose
            # generation config asks for a static or hybrid cache. A graph compiled while no Steering was
            # active (an unsteered condition first, as every run evaluates) never calls these hooks, and
            # torch.compile does not recompile when hooks change: every decoding step of `generated` or
            # `all` steering would run unsteered, silently (tests/test_steer_phases.py shows it does).
            # GenerationConfig.disable_compile, a documented field, keeps generate() eager while active.
            config = getattr(self.model, "generation_config", None)
            if isinstance(config, GenerationConfig):
                self._compile_setting = (config, config.disable_compile)
                config.disable_compile = True
            self._handles.append(self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
            for layer in self.layers:
                self._handles.append(self._blocks[layer].register_forward_hook(self._make_layer_hook(layer)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._compile_setting is not None:
            config, setting = self._compile_setting
            config.disable_compile = setting
            self._compile_setting = None
        self._index = None
