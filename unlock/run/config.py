"""Structured configs: the schema every Hydra composition is checked against.

Each config group (source_model, target_model, capability, layer, rank, alpha, eval, logger, paths)
has a dataclass here; the root ``RunConfig`` is registered in Hydra's ConfigStore as ``run_schema``
and ``conf/config.yaml`` starts from it, so a misspelt key, a wrong type or a value outside a choice
fails at compose time, naming the allowed values. Range and consistency checks that need no model
weights live in :func:`validate`. :func:`run_settings` turns a composed config into the run's
:class:`~unlock.run.settings.RunSettings`: this module and the entry points that call it (launch.py,
make analyze, the multirun callback) are the only readers of the config.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from unlock.analysis.paired import PowerSettings
from unlock.analysis.paper import paper_numbers
from unlock.method.align import SOLVERS, solver_options
from unlock.method.capture import POSITION_RULES, CaptureSettings
from unlock.method.extract import AGGREGATIONS
from unlock.method.pipeline import MapSettings
from unlock.method.steer import POSITION_RULES as STEER_POSITION_RULES
from unlock.method.steer import STEER_RULES, SteeringSettings
from unlock.models.loading import DTYPES, SOURCES, ModelSpec
from unlock.run.conditions import CONDITIONS, OBJECTIVES
from unlock.run.engines import ENGINES, EvalSettings
from unlock.run.settings import (
    Evaluation,
    Layers,
    LoggerSettings,
    Models,
    Prompts,
    Resources,
    RunSettings,
    check_models,
    prompt_variant,
)
from unlock.store.artifacts import STORAGE_DTYPES
from unlock.tasks import ITEM_SETS, TASKS_DIR, WORKED_SOLUTIONS, source_task


def _choices(name: str, values: list[str] | tuple[str, ...]) -> Any:
    """A choice type: OmegaConf accepts exactly these strings and names them when it rejects one.
    Members compare equal to their strings, so code reads them as plain strings. (Built from a table
    at run time, so to the type checker it is Any.)"""
    return StrEnum(name, {value: value for value in values})


# Each allowed-value list is declared once, by the module that acts on the value; the schema derives
# its choices from them (a new solver, position rule, model source or engine is a new row there).
ModelKind = _choices("ModelKind", tuple(SOURCES))
DType = _choices("DType", (*DTYPES, "auto"))
Contrast = _choices("Contrast", ("prompt", "checkpoint"))
Aggregation = _choices("Aggregation", AGGREGATIONS)
# capture's "all" keeps every token, which gives no (prompt, row) pairs to contrast or align
ExtractionPosition = _choices("ExtractionPosition", tuple(p for p in POSITION_RULES if p != "all"))
Storage = _choices("Storage", tuple(STORAGE_DTYPES))
LayerMode = _choices("LayerMode", ("all", "list", "single"))
MapMethod = _choices("MapMethod", tuple(SOLVERS))
SteerRule = _choices("SteerRule", STEER_RULES)
SteerPositions = _choices("SteerPositions", tuple(STEER_POSITION_RULES))
ConditionName = _choices("ConditionName", tuple(CONDITIONS))
Split = _choices("Split", ("test", "validation"))
LoggerName = _choices("LoggerName", ("none", "wandb"))
ItemSet = _choices("ItemSet", tuple(ITEM_SETS))
Engine = _choices("Engine", tuple(ENGINES))
Objective = _choices("Objective", tuple(OBJECTIVES))


@dataclass
class ModelConfig:
    """A Hugging Face id or local path (kind=hf), a tiny random model (tiny), or a packaged GGUF; the
    defaults are unlock.models.loading.ModelSpec's (what the run reads)."""

    name: str = MISSING  # short label used in tables and W&B
    kind: ModelKind = ModelKind(ModelSpec.kind)
    path: str | None = ModelSpec.path  # HF id or local directory (hf); package name (gguf_package)
    revision: str | None = ModelSpec.revision
    gguf_file: str | None = ModelSpec.gguf_file
    dtype: DType = DType(ModelSpec.dtype)
    device: str = ModelSpec.device
    trust_remote_code: bool = ModelSpec.trust_remote_code
    # tiny and planted models only
    family: str = ModelSpec.family
    hidden_size: int = ModelSpec.hidden_size
    num_layers: int = ModelSpec.num_layers
    seed: int = ModelSpec.seed
    # planted models only (unlock.models.planted.Recipe): the corpus (cue: the cue switches the steps on;
    # null: it means nothing) and the training steps
    corpus: str = ModelSpec.corpus
    train_steps: int = ModelSpec.train_steps


@dataclass
class CapabilityConfig:
    """How the contrast is made and which prompts feed extraction and alignment."""

    name: str = "cot"
    contrast: Contrast = Contrast.prompt  # prompt: one model, two prompts; checkpoint: base vs post-trained
    locked_task: str = "unlock_arith"  # lm-eval task whose prompt is the Locked one
    unlocked_task: str = "unlock_arith_cot"  # ... and the Unlocked (capability) prompt
    unlocked_model: ModelConfig | None = None  # checkpoint contrast: the post-trained Source
    prompt_split: str = "train"  # extraction/alignment prompts come from this split only
    n_prompts: int = 32  # N: paper grid 4..512
    n_heldout: int = 16  # more train items, disjoint from the N, for held-out fit quality
    aggregation: Aggregation = Aggregation.mean
    position: ExtractionPosition = ExtractionPosition(CaptureSettings.position)
    seed: int = 0
    batch_size: int = CaptureSettings.batch_size
    max_length: int | None = CaptureSettings.max_length
    n_shots: int = 0  # worked examples before each Unlocked prompt (capability=icl; paper: 8 GSM8K, 5 MATH)
    # On-disk precision of captured activations: bfloat16 halves the cache for big pairs (a 14B pair
    # at N=512 stores ~1 GB per capture in float32) and keeps float32's range, which float16 (max 65504)
    # lacks for the massive activations of large models; tensors come back as float32 either way.
    activation_storage: Storage = Storage.float32


@dataclass
class BenchmarkConfig:
    """One benchmark in the paper's prompt format: its direct (Locked) and step-by-step task variants.

    Capabilities and eval read their task names from here, so ``benchmark=gsm8k`` switches the
    extraction prompts, the evaluated task and the prompting baseline together."""

    name: str = "arith"
    source: ItemSet = ItemSet.hub  # hub, or qwen25_math (the research code's item sets; unlock.tasks.ITEM_SETS)
    direct_task: str = "unlock_arith"
    cot_task: str = "unlock_arith_cot"
    max_new_tokens: int = 512  # paper: 512 for CoT tasks, 4096 for math-reasoning tasks
    icl_shots: int = 8  # worked examples of the in-context variant (paper: 8 for GSM8K, 5 for MATH)
    needs_network: bool = False


@dataclass
class LayerConfig:
    """Which Target layers are steered; Source layers pair with them linearly in depth unless explicit."""

    mode: LayerMode = LayerMode.all
    indices: list[int] = field(default_factory=list)  # mode=list, or mode=single with one index
    depth: float | None = None  # mode=single by relative depth in [0, 1] instead of an index
    # {target_layer: source_layer}, e.g. layer.explicit_pairs={0:3,5:11}; null: linear in depth. Typed
    # Any because OmegaConf 2.3 cannot take a command-line dict into an Optional[Dict[int, int]] node
    # (AttributeError) nor new keys into a Dict one (struct); make_plan checks it instead.
    explicit_pairs: Any = None


@dataclass
class RankConfig:
    value: int = 16  # paper grid 1..512, effective rank = min(rank, N, d_s, d_t)
    method: MapMethod = MapMethod.unlock
    options: dict[str, Any] = field(default_factory=dict)  # the method's own, e.g. {ridge: 0.01} (align.SOLVERS)


@dataclass
class AlphaConfig:
    """How the Target is steered; the defaults are unlock.method.steer.SteeringSettings'."""

    value: float = SteeringSettings.alpha  # paper grid 0.05, 0.1, 0.2, 0.5
    rule: SteerRule = SteerRule(SteeringSettings.rule)
    positions: SteerPositions = SteerPositions(SteeringSettings.positions)


@dataclass
class EvalConfig:
    tasks: list[str] = field(default_factory=lambda: ["unlock_arith"])
    # The capability-prompt variant of each task, for the prompting baseline (the capability's
    # Unlocked task is used for its Locked one without being listed here).
    prompt_tasks: dict[str, str] = field(default_factory=dict)
    split: Split = Split.test  # test, or validation (tasks named <task>_val) when choosing hyper-parameters
    limit: int | None = EvalSettings.limit
    batch_size: int = EvalSettings.batch_size
    max_new_tokens: int = EvalSettings.max_new_tokens
    conditions: list[ConditionName] = field(
        default_factory=lambda: ["unsteered", "unlock", "prompting", "native", "random", "reversed"]
    )
    reference_model: ModelConfig | None = None
    random_seed: int = EvalSettings.random_seed
    bootstrap_iters: int = EvalSettings.bootstrap_iters
    # hf: lm-eval's HFLM + Steering, one condition at a time; vllm: every condition of a run in one
    # vLLM engine pass (unlock_vllm), with vLLM's own engine args below (max_model_len, ...).
    engine: Engine = Engine(EvalSettings.engine)
    vllm: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none
    project: str = "unlock-harness"
    entity: str | None = None
    mode: str = "offline"  # used unless WANDB_MODE is set
    tags: list[str] = field(default_factory=list)


@dataclass
class ResourcesConfig:
    """What one job of this setup needs; the SLURM launcher requests it (env vars still override)."""

    gpus_per_node: int = 1
    gpu_mem_gb: int = 80  # memory of one GPU, for the dry-run memory plan
    cpus_per_task: int = 8
    mem_gb: int = 64
    timeout_min: int = 240


@dataclass
class PaperConfig:
    """Which setup of the paper this run reproduces (a key of unlock/analysis/paper_numbers.yaml), for `make report`."""

    setup: str | None = None
    numbers: dict[str, Any] = field(default_factory=dict)  # filled from the data file, for display


@dataclass
class SelectionConfig:
    """How a sweep on the validation split picks its point (the aggregate's selected_on_validation)."""

    objective: Objective = Objective.acc  # acc (the paper's), stepwise, or fidelity (layers beating the null)


@dataclass
class StatsConfig:
    """Paired comparisons' power (unlock.analysis.paired.PowerSettings): the gain a comparison should detect at
    80% power and the 5% level is the paper's for the setup, else ``effect``."""

    effect: float = PowerSettings.effect  # an absolute accuracy difference (0.10 = ten points)
    power: float = PowerSettings.power
    discordance: float = (
        PowerSettings.discordance
    )  # the dry run's guess of the share of items two conditions disagree on


@dataclass
class PathsConfig:
    root_dir: str = "."
    cache_dir: str = MISSING
    log_dir: str = MISSING
    tasks_dir: str = MISSING


@dataclass
class RunConfig:
    source_model: ModelConfig = MISSING
    target_model: ModelConfig = MISSING
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    capability: CapabilityConfig = field(default_factory=CapabilityConfig)
    layer: LayerConfig = field(default_factory=LayerConfig)
    rank: RankConfig = field(default_factory=RankConfig)
    alpha: AlphaConfig = field(default_factory=AlphaConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    paper: PaperConfig = field(default_factory=PaperConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)
    seed: int = 0
    progress: bool = True
    dry_run: bool = False
    check_data: bool = False  # the dry run also loads a hub benchmark's splits (network) and counts them
    # A test run of a point a validation sweep selected: <sweep dir>/<job> (the sweep prints the command).
    # Checked against that point's results.json; recorded, and `make report` flags test runs without it.
    selected_from: str | None = None


# --- The settings (unlock.run.settings): the composed config, checked and typed once ------------------


def run_settings(cfg: Any) -> RunSettings:
    """The run's settings from a composed config, after :func:`validate` (checks that name the bad value
    and the allowed range, before any model loads)."""
    validate(cfg)
    cap, bench, ev = cfg.capability, cfg.benchmark, cfg.eval
    return RunSettings(
        models=Models(
            ModelSpec.of(_plain(cfg.source_model)),
            ModelSpec.of(_plain(cfg.target_model)),
            model_spec(cap.unlocked_model),
            model_spec(ev.reference_model),
        ),
        prompts=Prompts(
            capability=str(cap.name),
            contrast=str(cap.contrast),
            locked_task=str(cap.locked_task),
            unlocked_task=str(cap.unlocked_task),
            split=str(cap.prompt_split),
            n_prompts=int(cap.n_prompts),
            n_heldout=int(cap.n_heldout),
            seed=int(cap.seed),
            n_shots=int(cap.n_shots),
            benchmark=str(bench.name),
            item_set=str(bench.source),
            needs_network=bool(bench.needs_network),
            activation_storage=str(cap.activation_storage),
        ),
        capture=_capture_settings(cfg),
        layers=Layers(
            str(cfg.layer.mode), tuple(int(i) for i in cfg.layer.indices), cfg.layer.depth, explicit_pairs(cfg.layer)
        ),
        map=_map_settings(cfg),
        steering=_steering_settings(cfg),
        evaluation=Evaluation(
            tasks=tuple(str(t) for t in ev.tasks),
            prompt_tasks={str(k): str(v) for k, v in ev.prompt_tasks.items()},
            split=str(ev.split),
            conditions=tuple(str(c) for c in ev.conditions),
            engine=_eval_settings(cfg),
        ),
        statistics=_stats_settings(cfg),
        logger=logger_settings(cfg.logger, sweep_group()),
        resources=Resources(**_plain(cfg.resources)),
        paper_setup=cfg.paper.setup,
        paper_numbers=_plain(cfg.paper.numbers),
        objective=str(cfg.selection.objective),
        seed=int(cfg.seed),
        progress=bool(cfg.progress),
        dry_run=bool(cfg.dry_run),
        check_data=bool(cfg.check_data),
        selected_from=None if cfg.selected_from is None else str(cfg.selected_from),
        config=composed(cfg),
    )


def sweep_settings(config: Any) -> tuple[str, LoggerSettings | None, str]:
    """What a multirun's end needs from Hydra's config: the sweep directory, the logger and the
    selection objective."""
    selection = config.get("selection") or {}
    logger = config.get("logger")
    return (
        str(config.hydra.sweep.dir),
        None if logger is None else logger_settings(logger, None),  # the aggregate names its own group
        str(selection.get("objective", "acc")),
    )


def model_spec(node: Any) -> ModelSpec | None:
    """A model config group as the spec the model sources read (None stays None)."""
    return None if node is None else ModelSpec.of(_plain(node))


def logger_settings(node: Any, group: str | None) -> LoggerSettings:
    """Config group ``logger``, with the W&B group its runs join (a multirun's: :func:`sweep_group`)."""
    return LoggerSettings(
        name=str(node.name),
        project=str(node.project),
        entity=node.entity,
        mode=str(node.mode),
        tags=tuple(str(t) for t in node.tags),
        group=group,
    )


def sweep_group() -> str | None:
    """Jobs of one multirun share a W&B group: the sweep directory's name (None outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:  # W&B's grouping only: never a reason for a run to fail
        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None
    except Exception:
        return None


def composed(cfg: Any, resolve: bool = True) -> dict[str, Any]:
    """The composed config as plain data (what the record keeps)."""
    return _plain(cfg, resolve)


def _plain(node: Any, resolve: bool = True) -> Any:
    return OmegaConf.to_container(node, resolve=resolve) if OmegaConf.is_config(node) else node


def project_root() -> str:
    """The repository (or installed package's parent) directory: caches and logs live under it."""
    return str(Path(__file__).resolve().parents[2])


@lru_cache(maxsize=1)
def run_tag() -> str:
    """What makes this process's run directory unique beside others started in the same second: the
    SLURM job (array job and task) where there is one, and random hex always (a requeued job gets a
    new directory; its stages come from the cache)."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = (
        f"{job}-{os.environ['SLURM_ARRAY_TASK_ID']}"
        if job and "SLURM_ARRAY_TASK_ID" in os.environ
        else (os.environ.get("SLURM_JOB_ID"))
    )
    return f"j{job}_{secrets.token_hex(3)}" if job else secrets.token_hex(3)


def register_configs() -> None:
    """The schema for conf/config.yaml, and resolvers for locations that depend on the install."""
    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    if not OmegaConf.has_resolver("unlock_root"):
        OmegaConf.register_new_resolver("unlock_root", project_root)
        OmegaConf.register_new_resolver("unlock_tasks_dir", lambda: str(TASKS_DIR))
        OmegaConf.register_new_resolver("unlock_paper", paper_numbers)
        OmegaConf.register_new_resolver("unlock_run_tag", run_tag, use_cache=True)  # kept in the config, so
        # a submitit job process resolves the directory its launcher chose
        OmegaConf.register_new_resolver(
            "unlock_source_task", lambda task, name, source: source_task(task, name, str(source))
        )


def validate(cfg: Any) -> None:
    """Checks that need no model: ranges and consistency (choices are typed in the schema).
    Model-dependent checks run later."""
    source_task(f"unlock_{cfg.benchmark.name}", cfg.benchmark.name, str(cfg.benchmark.source))
    if cfg.capability.n_shots and cfg.benchmark.name not in WORKED_SOLUTIONS:
        raise ValueError(
            f"capability.n_shots={cfg.capability.n_shots} (capability=icl) needs worked solutions, and "
            f"benchmark {cfg.benchmark.name!r} has none; benchmarks with them: {', '.join(WORKED_SOLUTIONS)}"
        )
    check_models(cfg.capability.contrast, cfg.eval.conditions, cfg.capability.unlocked_model, cfg.eval.reference_model)
    _check_capability(cfg.capability)
    if str(cfg.capability.prompt_split) == str(cfg.eval.split):
        raise ValueError(
            f"capability.prompt_split {cfg.capability.prompt_split!r} is the evaluated split (eval.split): "
            "extraction and alignment prompts would be items the run is scored on; use another split "
            "(train, the default)"
        )
    _check_layer(cfg.layer)
    if cfg.rank.value < 1:
        raise ValueError(f"rank.value {cfg.rank.value} is out of range: must be >= 1 (paper grid 1..512)")
    if not math.isfinite(cfg.alpha.value):
        raise ValueError(f"alpha.value {cfg.alpha.value} is out of range: must be finite (paper grid 0.05..0.5)")
    try:
        solver_options(str(cfg.rank.method), dict(cfg.rank.options))
    except ValueError as error:
        raise ValueError(f"rank.options: {error}") from None
    _check_eval(cfg)
    _stats_settings(cfg)
    for name in ("source_model", "target_model"):
        check_device(name, cfg[name].device)
    for name, model in (
        ("capability.unlocked_model", cfg.capability.unlocked_model),
        ("eval.reference_model", cfg.eval.reference_model),
    ):
        if model is not None:
            check_device(name, model.device)
    for key in ("gpus_per_node", "gpu_mem_gb", "cpus_per_task", "mem_gb", "timeout_min"):
        low = 0 if key == "gpus_per_node" else 1
        if cfg.resources[key] < low:
            raise ValueError(f"resources.{key} {cfg.resources[key]} is out of range: must be >= {low}")


def _map_settings(cfg: Any) -> MapSettings:
    """How the maps are fit: config group ``rank`` plus the capability's aggregation."""
    return MapSettings(
        rank=int(cfg.rank.value),
        method=str(cfg.rank.method),
        aggregation=str(cfg.capability.aggregation),
        options=dict(cfg.rank.options),
    )


def _eval_settings(cfg: Any) -> EvalSettings:
    """How the evaluators evaluate: config group ``eval`` plus the tasks and cache folders."""
    ev = cfg.eval
    vllm: dict[str, Any] = dict(_plain(ev.vllm))
    return EvalSettings(
        tasks_dir=str(cfg.paths.tasks_dir),
        cache_dir=str(cfg.paths.cache_dir),
        limit=ev.limit,
        max_new_tokens=int(ev.max_new_tokens),
        batch_size=int(ev.batch_size),
        random_seed=int(ev.random_seed),
        bootstrap_iters=int(ev.bootstrap_iters),
        engine=str(ev.engine),
        vllm=vllm,
    )


def _capture_settings(cfg: Any) -> CaptureSettings:
    """How activations are captured: config group ``capability``'s position, batch size and length."""
    cap = cfg.capability
    return CaptureSettings(position=str(cap.position), batch_size=int(cap.batch_size), max_length=cap.max_length)


def _steering_settings(cfg: Any) -> SteeringSettings:
    """How the Target is steered: config group ``alpha``."""
    return SteeringSettings(alpha=float(cfg.alpha.value), rule=str(cfg.alpha.rule), positions=str(cfg.alpha.positions))


def _stats_settings(cfg: Any) -> PowerSettings:
    """The config's ``stats`` as the settings unlock.analysis.paired takes (its checks name the bad value)."""
    return PowerSettings(
        effect=float(cfg.stats.effect), power=float(cfg.stats.power), discordance=float(cfg.stats.discordance)
    )


def _check_capability(cap: Any) -> None:
    if cap.n_prompts < 1:
        raise ValueError(f"capability.n_prompts {cap.n_prompts} is out of range: must be >= 1 (paper grid 4..512)")
    if cap.aggregation == "pca" and cap.n_prompts < 2:
        raise ValueError(f"capability.n_prompts {cap.n_prompts} is out of range for pca: must be >= 2")
    if cap.n_shots < 0:
        raise ValueError(f"capability.n_shots {cap.n_shots} is out of range: must be >= 0")
    if cap.batch_size < 1:
        raise ValueError(f"capability.batch_size {cap.batch_size} is out of range: must be >= 1")
    if cap.n_heldout < 0:
        raise ValueError(f"capability.n_heldout {cap.n_heldout} is out of range: must be >= 0")


def _check_layer(layer: Any) -> None:
    if layer.mode == "single":
        has_index, has_depth = len(layer.indices) == 1, layer.depth is not None
        if has_index == has_depth:
            raise ValueError("layer.mode=single needs exactly one of layer.indices=[i] or layer.depth in [0, 1]")
        if has_depth and not 0.0 <= layer.depth <= 1.0:
            raise ValueError(f"layer.depth {layer.depth} is out of range: must be in [0, 1]")
    if layer.mode == "list" and not layer.indices:
        raise ValueError("layer.mode=list needs a non-empty layer.indices")
    explicit_pairs(layer)


def explicit_pairs(layer: Any) -> dict[int, int] | None:
    """layer.explicit_pairs as {Target layer: Source layer}, or None (linear pairing); ranges are
    checked against the models' depths in make_plan."""
    raw = layer.explicit_pairs
    if raw is None:
        return None
    pairs: Any = _plain(raw, resolve=False)
    if not (isinstance(pairs, dict) and pairs and all(type(k) is int and type(v) is int for k, v in pairs.items())):  # noqa: E721 (bool is no layer)
        raise ValueError(
            f"layer.explicit_pairs {pairs!r} is not allowed: must be a non-empty map of Target layer "
            "to Source layer indices, e.g. layer.explicit_pairs={0:3,5:11}"
        )
    return pairs


def check_device(name: str, device: Any) -> None:
    """A device string torch understands (cpu, cuda, cuda:N, mps, ...), checked before anything loads."""
    import torch

    try:
        torch.device(str(device))
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{name}.device {device!r} is not allowed: use cpu, cuda, cuda:N or mps ({error})") from None


def _check_eval(cfg: Any) -> None:
    ev = cfg.eval
    conditions = [CONDITIONS[str(name)] for name in ev.conditions]
    if any(c.prompt == "unlocked" for c in conditions):
        for task in ev.tasks:  # each has its capability-prompt variant
            prompt_variant(str(task), ev.prompt_tasks, cfg.capability.locked_task, cfg.capability.unlocked_task)
    if ev.limit is not None and ev.limit < 1:
        raise ValueError(f"eval.limit {ev.limit} is out of range: must be >= 1 or null")
    if ev.batch_size < 1:
        raise ValueError(f"eval.batch_size {ev.batch_size} is out of range: must be >= 1")
    if ev.max_new_tokens < 1:
        raise ValueError(f"eval.max_new_tokens {ev.max_new_tokens} is out of range: must be >= 1")
