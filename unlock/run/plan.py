"""What a run will do, checked from the configs alone before any weights load: the layer pairs and
effective rank, the devices, and the dry run (memory plan, data, power of the planned tests)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from omegaconf import DictConfig

from unlock.analysis.paired import effect_for, family_size
from unlock.analysis.paper import paper_gains
from unlock.analysis.stats import items_needed, power_at
from unlock.lm_eval.prompts import load_task
from unlock.method.align import pair_layers
from unlock.models.loading import read_shape
from unlock.models.memory import format_memory_plan, memory_plan
from unlock.run.conditions import DESIGN
from unlock.run.config import explicit_pairs, stats_settings, validate
from unlock.tasks.answers import CHECKER
from unlock.tasks.hub import dropped_rows


@dataclass
class Plan:
    source_layers: int
    source_width: int
    target_layers: int
    target_width: int
    pairs: dict[int, int]  # Target layer -> Source layer
    rank_effective: int


def target_layer_selection(layer_cfg: Any, n_target: int) -> list[int] | None:
    if layer_cfg.mode == "all":
        return None
    if layer_cfg.mode == "single" and layer_cfg.depth is not None:
        return [math.floor(layer_cfg.depth * (n_target - 1) + 0.5)]  # round half up, not to even
    return [int(i) for i in layer_cfg.indices]


def make_plan(cfg: DictConfig) -> Plan:
    validate(cfg)
    source = read_shape(cfg.source_model)
    target = read_shape(cfg.target_model)
    unlocked = cfg.capability.unlocked_model
    if cfg.capability.contrast == "checkpoint":
        other = read_shape(unlocked)
        if (other.n_layers, other.hidden_size) != (source.n_layers, source.hidden_size):
            raise ValueError(
                f"capability.unlocked_model has {other.n_layers} layers x {other.hidden_size} wide, but the Source "
                f"has {source.n_layers} x {source.hidden_size}; a checkpoint contrast needs one architecture"
            )
    explicit = explicit_pairs(cfg.layer)
    try:
        pairs = pair_layers(
            source.n_layers,
            target.n_layers,
            target_layers=target_layer_selection(cfg.layer, target.n_layers),
            explicit=explicit,
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"layer.{'explicit_pairs' if explicit else 'indices'}: {error}") from None
    width_limit = min(source.hidden_size, target.hidden_size)
    if cfg.rank.value > width_limit:
        raise ValueError(
            f"rank.value {cfg.rank.value} is out of range for these models: must be <= min(d_s, d_t) = "
            f"min({source.hidden_size}, {target.hidden_size}) = {width_limit}"
        )
    return Plan(
        source_layers=source.n_layers,
        source_width=source.hidden_size,
        target_layers=target.n_layers,
        target_width=target.hidden_size,
        pairs=pairs,
        rank_effective=min(cfg.rank.value, cfg.capability.n_prompts, width_limit),
    )


def check_devices_present(cfg: DictConfig) -> None:
    """Every model's device exists on this machine, checked before the first model loads (not in a
    dry run, which may plan a GPU job on a login node)."""
    models = {
        "source_model": cfg.source_model,
        "target_model": cfg.target_model,
        "capability.unlocked_model": cfg.capability.unlocked_model,
        "eval.reference_model": cfg.eval.reference_model,
    }
    for name, model in models.items():
        device = torch.device(str(model.device)) if model is not None else None
        if device is not None and device.type == "cuda":
            count = torch.cuda.device_count()
            if count == 0 or (device.index or 0) >= count:
                raise ValueError(
                    f"{name}.device {model.device!r} is not available here: this machine has {count} "
                    f"CUDA device(s){'; use cpu' if count == 0 else f', cuda:0..cuda:{count - 1}'}"
                )


def dry_run(cfg: DictConfig, plan: Plan) -> dict[str, Any]:
    record = {"status": "dry_run", "plan": asdict(plan), "memory": memory_plan(cfg, plan)}
    print_plan(cfg, plan, record["memory"])
    if cfg.check_data or not cfg.benchmark.needs_network:
        record["data"] = data_report(cfg)
        print(
            f"data {cfg.capability.locked_task}: items per split {record['data']['items']}; rows dropped for "
            f"want of an answer (per hub split): {record['data']['dropped_rows'] or 'none'}"
        )
    split_items = record.get("data", {}).get("items", {}).get(str(cfg.eval.split))
    known = [n for n in (split_items, cfg.eval.limit) if n is not None]
    planned = min(known) if known else None
    record["power"] = planned_power(cfg, planned)
    print(power_lines(cfg, planned, record["power"]))
    return record


def planned_power(cfg: DictConfig, n: int | None) -> dict[str, dict[str, Any]]:
    """{"<condition> vs <baseline>": effect, its source, the deciding test, power on n items, items for the
    target power} for the paired accuracy tests the run will make, at the assumed discordance
    (stats.discordance): the verdict's (unlock vs unsteered, random and, where evaluated, reversed: one-sided
    exact McNemar at 5%) and every other one at the Bonferroni level 0.05 / m of the Holm family (m: every comparison
    and metric the run can test), a lower bound on the power Holm's procedure gives."""
    if n is None:
        return {}
    stats, task = stats_settings(cfg), cfg.capability.locked_task
    gains = paper_gains(cfg.paper.setup, cfg.benchmark.name, task)
    conditions = [str(c) for c in cfg.eval.conditions]
    tasks = [str(t) for t in cfg.eval.tasks]
    primary = tasks[0] if tasks else None
    m = family_size(DESIGN, conditions, tasks, primary)
    required = DESIGN.verdict_baselines(conditions)
    verdict = (
        [(DESIGN.primary, b) for b in required]
        if DESIGN.primary in conditions and all(b in conditions for b in required)
        else []
    )
    out = {}
    for condition in conditions:
        for baseline in (b for b in DESIGN.baselines(condition) if b in conditions):
            effect, source = effect_for(gains, (condition, task, baseline), stats)
            level, sided = (DESIGN.level, 1) if (condition, baseline) in verdict else (DESIGN.level / m, 2)
            out[f"{condition} vs {baseline}"] = {
                "n": n,
                "effect": effect,
                "effect_from": source,
                "test": "verdict" if sided == 1 else "holm",
                "sided": sided,
                "level": level,
                **({"family_size": m} if sided == 2 else {}),
                "power": power_at(n, effect, stats.discordance, level, sided),
                "items_needed": items_needed(effect, stats.discordance, stats.power, level, sided),
            }
    return out


def power_lines(cfg: DictConfig, n: int | None, power: dict[str, dict[str, Any]]) -> str:
    if n is None:
        return (
            "power of the paired tests: the number of test items is unknown until the data is loaded "
            "(add check_data=true, or set eval.limit)"
        )
    stats = stats_settings(cfg)
    holm = [p for p in power.values() if p["test"] == "holm"]
    tests = []
    if len(holm) < len(power):
        names = ", ".join(name.split(" vs ")[1] for name, p in power.items() if p["test"] == "verdict")
        tests.append(f"the verdict's ({DESIGN.primary} vs {names}) one-sided at {DESIGN.level:g}")
    if holm:
        tests.append(
            f"{'the others ' if tests else ''}two-sided at 0.05/m = {holm[0]['level']:.2g} with m = "
            f"{holm[0]['family_size']} in the Holm family if every metric is measured (a lower bound on Holm's power)"
        )
    head = (
        f"power of the paired tests on {n} {cfg.eval.split} items (exact McNemar: {'; '.join(tests)}; discordance "
        f"assumed {stats.discordance:.2f}, a run reports its own):"
    )
    rows = [
        f"  {name}: {p['power']:.2f} to detect {p['effect']:+.3f} ({p['effect_from']}"
        f"{', verdict' if p['test'] == 'verdict' else ''}); {p['items_needed']} items give {stats.power:.0%}"
        + (" - underpowered" if p["power"] < stats.power else "")
        for name, p in power.items()
    ]
    return "\n".join([head, *rows])


def data_report(cfg: DictConfig) -> dict[str, Any]:
    """Items per split of the evaluated task, and the rows its loader dropped (hub benchmarks need
    network: the dry run loads them only with check_data=true)."""
    task = load_task(cfg.capability.locked_task, cfg.paths.tasks_dir)
    splits = {
        "train": (task.has_training_docs, task.training_docs),
        "validation": (task.has_validation_docs, task.validation_docs),
        "test": (task.has_test_docs, task.test_docs),
    }
    return {
        "items": {name: len(list(docs())) for name, (has, docs) in splits.items() if has()},
        "dropped_rows": dropped_rows(),
    }


def print_plan(cfg: DictConfig, plan: Plan, memory: dict[str, Any]) -> None:
    """What a run would do, checked against the model configs: the dry-run output."""
    cap, ev = cfg.capability, cfg.eval
    lines = [
        f"Source {cfg.source_model.name}: {plan.source_layers} layers x {plan.source_width}",
        f"Target {cfg.target_model.name}: {plan.target_layers} layers x {plan.target_width}",
        f"contrast {cap.contrast}: Locked {cap.locked_task} vs Unlocked "
        f"{cap.unlocked_model.name if cap.contrast == 'checkpoint' else cap.unlocked_task}, "
        f"N {cap.n_prompts} ({cap.prompt_split} split), {cap.aggregation}",
        f"rank {cfg.rank.value} (effective {plan.rank_effective}, {cfg.rank.method}), alpha {cfg.alpha.value} "
        f"({cfg.alpha.rule}, {cfg.alpha.positions})",
        "pairs (target <- source): " + ", ".join(f"{j}<-{l}" for j, l in plan.pairs.items()),
        f"evaluate {list(ev.tasks)} ({ev.split} split, limit {ev.limit}, {ev.max_new_tokens} new tokens, "
        f"batch {ev.batch_size}): {', '.join(ev.conditions)}",
        *format_memory_plan(memory),
    ]
    if cfg.benchmark.needs_network:
        lines.append(
            f"benchmark {cfg.benchmark.name} loads its data from the dataset hub (needs network; add "
            "check_data=true to load it now); rows without a usable answer are dropped and counted per "
            "split in results.json (dropped_rows)"
        )
    lines.append(
        f"answers checked by {CHECKER} after the paper's extraction (final-answer phrase, \\boxed{{}}, last number)"
    )
    if cfg.paper.setup:
        lines.append(f"paper {cfg.paper.setup} / {cfg.benchmark.name}: {dict(cfg.paper.numbers)}")
    print("\n".join(lines))
