"""What a run will do, checked from the configs alone before any weights load: the layer pairs and
effective rank, the devices, and the dry run (memory plan, data, power of the planned tests)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from unlock.analysis.paired import effect_for, family_size
from unlock.analysis.paper import paper_gains
from unlock.analysis.stats import items_needed, power_at
from unlock.lm_eval.prompts import load_task
from unlock.method.align import pair_layers
from unlock.models.loading import read_shape
from unlock.models.memory import GB, footprint, format_memory_plan, memory_plan
from unlock.run.conditions import DESIGN
from unlock.run.settings import Layers, RunSettings
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


def target_layer_selection(layers: Layers, n_target: int) -> list[int] | None:
    if layers.mode == "all":
        return None
    if layers.mode == "single" and layers.depth is not None:
        return [math.floor(layers.depth * (n_target - 1) + 0.5)]  # round half up, not to even
    return list(layers.indices)


def make_plan(settings: RunSettings) -> Plan:
    """Layer pairs and the effective rank from the models' configs (no weights), checked against them."""
    models = settings.models
    source = read_shape(models.source)
    target = read_shape(models.target)
    if settings.prompts.contrast == "checkpoint" and models.unlocked is not None:
        other = read_shape(models.unlocked)
        if (other.n_layers, other.hidden_size) != (source.n_layers, source.hidden_size):
            raise ValueError(
                f"capability.unlocked_model has {other.n_layers} layers x {other.hidden_size} wide, but the Source "
                f"has {source.n_layers} x {source.hidden_size}; a checkpoint contrast needs one architecture"
            )
    explicit = settings.layers.explicit_pairs
    try:
        pairs = pair_layers(
            source.n_layers,
            target.n_layers,
            target_layers=target_layer_selection(settings.layers, target.n_layers),
            explicit=explicit,
        )
    except (ValueError, TypeError) as error:
        raise ValueError(f"layer.{'explicit_pairs' if explicit else 'indices'}: {error}") from None
    width_limit = min(source.hidden_size, target.hidden_size)
    rank = settings.map.rank
    if rank > width_limit:
        raise ValueError(
            f"rank.value {rank} is out of range for these models: must be <= min(d_s, d_t) = "
            f"min({source.hidden_size}, {target.hidden_size}) = {width_limit}"
        )
    return Plan(
        source_layers=source.n_layers,
        source_width=source.hidden_size,
        target_layers=target.n_layers,
        target_width=target.hidden_size,
        pairs=pairs,
        rank_effective=min(rank, settings.prompts.n_prompts, width_limit),
    )


def check_devices_present(settings: RunSettings) -> None:
    """Every model's device exists on this machine, checked before the first model loads (not in a
    dry run, which may plan a GPU job on a login node)."""
    for name, model in settings.models.named().items():
        if model is None:
            continue
        device = torch.device(str(model.device))
        if device.type == "cuda":
            count = torch.cuda.device_count()
            if count == 0 or (device.index or 0) >= count:
                raise ValueError(
                    f"{name}.device {model.device!r} is not available here: this machine has {count} "
                    f"CUDA device(s){'; use cpu' if count == 0 else f', cuda:0..cuda:{count - 1}'}"
                )


def dry_run(settings: RunSettings, plan: Plan) -> dict[str, Any]:
    record: dict[str, Any] = {"status": "dry_run", "plan": asdict(plan), "memory": memory_estimate(settings, plan)}
    print_plan(settings, plan, record["memory"])
    if settings.check_data or not settings.prompts.needs_network:
        record["data"] = data_report(settings)
        print(
            f"data {settings.prompts.locked_task}: items per split {record['data']['items']}; rows dropped for "
            f"want of an answer (per hub split): {record['data']['dropped_rows'] or 'none'}"
        )
    split_items = record.get("data", {}).get("items", {}).get(settings.evaluation.split)
    known = [n for n in (split_items, settings.evaluation.engine.limit) if n is not None]
    planned = min(known) if known else None
    record["power"] = planned_power(settings, planned)
    print(power_lines(settings, planned, record["power"]))
    return record


def memory_estimate(settings: RunSettings, plan: Plan) -> dict[str, Any]:
    """Per-model weights and KV cache, the peak one job needs, the activation cache on disk, and
    whether the peak fits the resources the setup asks for (unlock.models.memory)."""
    models, prompts, ev = settings.models, settings.prompts, settings.evaluation
    conditions, checkpoint = ev.conditions, prompts.contrast == "checkpoint"
    roles = [("source", models.source, False), ("target", models.target, True)]
    if checkpoint and models.unlocked is not None:
        roles.append(("source unlocked", models.unlocked, False))
    if ("reference" in conditions or (checkpoint and "native" in conditions)) and models.reference is not None:
        roles.append(("reference", models.reference, "reference" in conditions))
    batch, new_tokens = ev.engine.batch_size, ev.engine.max_new_tokens
    footprints = [footprint(role, spec, evaluated, batch, new_tokens) for role, spec, evaluated in roles]
    # Captures: Source Locked, held-out, Unlocked; Target Locked, held-out (and Unlocked for native).
    rows = prompts.n_prompts * 2 + prompts.n_heldout
    target_rows = rows if "native" in conditions else prompts.n_prompts + prompts.n_heldout
    disk = rows * plan.source_layers * plan.source_width + target_rows * plan.target_layers * plan.target_width
    storage = 2 if prompts.activation_storage == "bfloat16" else 4
    res = settings.resources
    if any(str(spec.device).startswith("cuda") for _, spec, _ in roles):
        capacity, of = res.gpus_per_node * res.gpu_mem_gb, f"{res.gpus_per_node} x {res.gpu_mem_gb} GB GPU"
    else:
        capacity, of = res.mem_gb, f"{res.mem_gb} GB host memory"
    return memory_plan(footprints, disk * storage / GB, capacity, of)


def planned_power(settings: RunSettings, n: int | None) -> dict[str, dict[str, Any]]:
    """{"<condition> vs <baseline>": effect, its source, the deciding test, power on n items, items for the
    target power} for the paired accuracy tests the run will make, at the assumed discordance
    (stats.discordance): the verdict's (unlock vs unsteered, random and, where evaluated, reversed: one-sided
    exact McNemar at 5%) and every other one at the Bonferroni level 0.05 / m of the Holm family (m: every comparison
    and metric the run can test), a lower bound on the power Holm's procedure gives."""
    if n is None:
        return {}
    stats, task = settings.statistics, settings.prompts.locked_task
    gains = paper_gains(settings.paper_setup, settings.prompts.benchmark, task)
    conditions = list(settings.evaluation.conditions)
    tasks = list(settings.evaluation.tasks)
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


def power_lines(settings: RunSettings, n: int | None, power: dict[str, dict[str, Any]]) -> str:
    if n is None:
        return (
            "power of the paired tests: the number of test items is unknown until the data is loaded "
            "(add check_data=true, or set eval.limit)"
        )
    stats = settings.statistics
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
        f"power of the paired tests on {n} {settings.evaluation.split} items (exact McNemar: {'; '.join(tests)}; "
        f"discordance assumed {stats.discordance:.2f}, a run reports its own):"
    )
    rows = [
        f"  {name}: {p['power']:.2f} to detect {p['effect']:+.3f} ({p['effect_from']}"
        f"{', verdict' if p['test'] == 'verdict' else ''}); {p['items_needed']} items give {stats.power:.0%}"
        + (" - underpowered" if p["power"] < stats.power else "")
        for name, p in power.items()
    ]
    return "\n".join([head, *rows])


def data_report(settings: RunSettings) -> dict[str, Any]:
    """Items per split of the evaluated task, and the rows its loader dropped (hub benchmarks need
    network: the dry run loads them only with check_data=true)."""
    task = load_task(settings.prompts.locked_task, settings.tasks_dir)
    splits = {
        "train": (task.has_training_docs, task.training_docs),
        "validation": (task.has_validation_docs, task.validation_docs),
        "test": (task.has_test_docs, task.test_docs),
    }
    return {
        "items": {name: len(list(docs())) for name, (has, docs) in splits.items() if has()},
        "dropped_rows": dropped_rows(),
    }


def print_plan(settings: RunSettings, plan: Plan, memory: dict[str, Any]) -> None:
    """What a run would do, checked against the model configs: the dry-run output."""
    cap, ev, how, fit = settings.prompts, settings.evaluation, settings.steering, settings.map
    unlocked = settings.models.unlocked
    lines = [
        f"Source {settings.models.source.name}: {plan.source_layers} layers x {plan.source_width}",
        f"Target {settings.models.target.name}: {plan.target_layers} layers x {plan.target_width}",
        f"contrast {cap.contrast}: Locked {cap.locked_task} vs Unlocked "
        f"{unlocked.name if unlocked and cap.contrast == 'checkpoint' else cap.unlocked_task}, "
        f"N {cap.n_prompts} ({cap.split} split), {fit.aggregation}",
        f"rank {fit.rank} (effective {plan.rank_effective}, {fit.method}), alpha {how.alpha} "
        f"({how.rule}, {how.positions})",
        "pairs (target <- source): " + ", ".join(f"{j}<-{l}" for j, l in plan.pairs.items()),
        f"evaluate {list(ev.tasks)} ({ev.split} split, limit {ev.engine.limit}, {ev.engine.max_new_tokens} new tokens, "
        f"batch {ev.engine.batch_size}): {', '.join(ev.conditions)}",
        *format_memory_plan(memory),
    ]
    if cap.needs_network:
        lines.append(
            f"benchmark {cap.benchmark} loads its data from the dataset hub (needs network; add "
            "check_data=true to load it now); rows without a usable answer are dropped and counted per "
            "split in results.json (dropped_rows)"
        )
    lines.append(
        f"answers checked by {CHECKER} after the paper's extraction (final-answer phrase, \\boxed{{}}, last number)"
    )
    if settings.paper_setup:
        lines.append(f"paper {settings.paper_setup} / {cap.benchmark}: {dict(settings.paper_numbers)}")
    print("\n".join(lines))
