"""What the run layer reads: :class:`RunSettings`, built once from the composed config by
:func:`unlock.run.config.run_settings` and passed down by the entry points. Plain frozen dataclasses of
typed settings (the method's own ``CaptureSettings``, ``MapSettings``, ``SteeringSettings``, the
models' ``ModelSpec``, the statistics' ``PowerSettings``, the engines' ``EvalSettings``); nothing here
reads a config."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from unlock.analysis.paired import PowerSettings
from unlock.method.capture import CaptureSettings
from unlock.method.pipeline import MapSettings
from unlock.method.steer import SteeringSettings
from unlock.models.loading import ModelSpec
from unlock.run.conditions import CONDITIONS
from unlock.run.engines import EvalSettings


@dataclass(frozen=True)
class Models:
    """Every model a run may load (config paths in :meth:`named`, for messages)."""

    source: ModelSpec
    target: ModelSpec
    unlocked: ModelSpec | None = None  # capability.contrast=checkpoint: the post-trained Source
    reference: ModelSpec | None = None  # eval.reference_model

    def evaluated(self, which: str) -> ModelSpec:
        """The model a condition evaluates (conditions.Condition.model): the Target or the reference."""
        if which == "target":
            return self.target
        if self.reference is None:
            raise ValueError(REFERENCE_MISSING)
        return self.reference

    def named(self) -> dict[str, ModelSpec | None]:
        return {
            "source_model": self.source,
            "target_model": self.target,
            "capability.unlocked_model": self.unlocked,
            "eval.reference_model": self.reference,
        }


@dataclass(frozen=True)
class Prompts:
    """Which prompts feed extraction and alignment, and how their activations are stored (config groups
    ``capability`` and ``benchmark``)."""

    capability: str
    contrast: str  # prompt: one model, two prompts; checkpoint: base vs post-trained
    locked_task: str
    unlocked_task: str
    split: str  # capability.prompt_split
    n_prompts: int
    n_heldout: int
    seed: int
    n_shots: int
    benchmark: str
    item_set: str
    needs_network: bool
    activation_storage: str


@dataclass(frozen=True)
class Layers:
    """Which Target layers are steered (config group ``layer``)."""

    mode: str
    indices: tuple[int, ...]
    depth: float | None
    explicit_pairs: dict[int, int] | None  # {Target layer: Source layer}; None: linear in depth


@dataclass(frozen=True)
class Evaluation:
    """What is evaluated (config group ``eval``): the conditions, tasks and split, and how the engine runs."""

    tasks: tuple[str, ...]
    prompt_tasks: dict[str, str]  # task -> its capability-prompt variant
    split: str
    conditions: tuple[str, ...]
    engine: EvalSettings


@dataclass(frozen=True)
class LoggerSettings:
    """Where results go besides disk (config group ``logger``); ``group`` is the multirun's sweep."""

    name: str
    project: str
    entity: str | None
    mode: str
    tags: tuple[str, ...]
    group: str | None = None


@dataclass(frozen=True)
class Resources:
    """What one job of this setup needs (config group ``resources``)."""

    gpus_per_node: int
    gpu_mem_gb: int
    cpus_per_task: int
    mem_gb: int
    timeout_min: int


@dataclass(frozen=True)
class RunSettings:
    """Everything a run reads, built once by :func:`run_settings` from the composed config and passed
    down by the entry points; below them no function takes the config. ``config`` is the composed
    config as plain data (resolved), which only the record keeps."""

    models: Models
    prompts: Prompts
    capture: CaptureSettings
    layers: Layers
    map: MapSettings
    steering: SteeringSettings
    evaluation: Evaluation
    statistics: PowerSettings
    logger: LoggerSettings
    resources: Resources
    paper_setup: str | None
    paper_numbers: dict[str, Any]
    objective: str  # selection.objective
    seed: int
    progress: bool
    dry_run: bool
    check_data: bool
    selected_from: str | None
    config: dict[str, Any]

    @property
    def cache_dir(self) -> str:
        return self.evaluation.engine.cache_dir

    @property
    def tasks_dir(self) -> str:
        return self.evaluation.engine.tasks_dir

    def __post_init__(self) -> None:
        models = self.models
        check_models(self.prompts.contrast, self.evaluation.conditions, models.unlocked, models.reference)

    def prompt_task(self, task: str) -> str:
        """The capability-prompt variant of ``task`` (prompting and reference conditions)."""
        return prompt_variant(task, self.evaluation.prompt_tasks, self.prompts.locked_task, self.prompts.unlocked_task)


REFERENCE_MISSING = "eval.conditions has 'reference' but eval.reference_model is not set"


def check_models(contrast: str, conditions: Iterable[str], unlocked: object, reference: object) -> None:
    """The models a contrast and the conditions need are set (validate() checks the config with it, and
    RunSettings itself): a checkpoint contrast's post-trained Source, the reference condition's model."""
    if contrast == "checkpoint" and unlocked is None:
        raise ValueError("capability.contrast=checkpoint needs capability.unlocked_model (the post-trained Source)")
    if any(CONDITIONS[str(c)].model == "reference" for c in conditions) and reference is None:
        raise ValueError(REFERENCE_MISSING)


def prompt_variant(task: str, listed: Mapping[str, str], locked_task: str, unlocked_task: str) -> str:
    """The capability-prompt variant of ``task``: listed in eval.prompt_tasks, or the capability's
    Unlocked task when ``task`` is its Locked one."""
    variant = listed.get(task)
    if variant is None and task == locked_task:
        variant = unlocked_task
    if variant is None:
        raise ValueError(
            f"eval.prompt_tasks has no capability-prompt variant for task {task!r}; listed: {dict(listed)}"
        )
    return variant
