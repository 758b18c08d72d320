"""One UNLOCK run, stage by stage: plan -> capture -> extract -> align -> steer + evaluate -> record.

Every stage goes through the StageCache, so re-running, or sweeping alpha or rank, recomputes only
what the changed setting determines. Models are loaded lazily and one at a time (Source work first,
then Target work), and never at all when every stage is a cache hit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from unlock.analysis.fidelity import summarise as summarise_fidelity
from unlock.analysis.fidelity import transfer_fidelity
from unlock.analysis.lens import lens_table
from unlock.analysis.paired import analyse
from unlock.analysis.paper import paper_gains
from unlock.method.blocks import block_path_under_base_model
from unlock.method.pipeline import transfer
from unlock.models.loading import model_skeleton
from unlock.run.conditions import DESIGN
from unlock.run.evaluate import evaluate_conditions
from unlock.run.plan import check_devices_present, dry_run, make_plan
from unlock.run.record import check_selected_from, export_steering, make_record
from unlock.run.session import (
    Session,
    capture_all,
    prompt_sets,
    steering_sets,
)
from unlock.run.settings import RunSettings
from unlock.store.artifacts import atomic_write_bytes
from unlock.tasks.hub import DROPPED


def run(settings: RunSettings, output_dir: str | Path) -> dict[str, Any]:
    """Run one run's settings end to end and return its results record (launch.py writes it)."""
    started = time.perf_counter()
    plan = make_plan(settings)
    DROPPED.clear()  # this run's benchmark only (a multirun may run many in one process)
    check_selected_from(settings)
    if settings.dry_run:
        return dry_run(settings, plan)
    check_devices_present(settings)
    session = Session(settings)
    captures = capture_all(session, prompt_sets(settings))
    result = transfer(
        captures.source_unlocked,
        captures.source_locked,
        captures.target_locked,
        plan.pairs,
        settings.map,
        captures.held_out,
        session.step,
        progress=settings.progress,
    )
    sets = steering_sets(session, result, captures, plan)
    lenses = {name: session.lens(vectors) for name, vectors in sets.items()}
    fidelity = (
        transfer_fidelity(result.alignment.value.maps, result.target_vectors, sets["native"].value, seed=settings.seed)
        if "native" in sets
        else {}
    )
    conditions, rows = evaluate_conditions(settings, session.cache, session.models, sets, Path(output_dir))
    session.models.release_all()
    block_path = block_path_under_base_model(model_skeleton(settings.models.target, settings.cache_dir))
    artifacts = export_steering(Path(output_dir), sets, settings.steering, block_path)
    atomic_write_bytes(Path(output_dir) / "logit_lens.md", lens_table(lenses).encode())
    findings = {
        "artifacts": artifacts,
        "logit_lens": lenses,
        "transfer_fidelity": {str(j): f for j, f in fidelity.items()},
        "transfer_fidelity_summary": summarise_fidelity(fidelity),
        # verdict, paired, behaviour and family: what the run's tests decide (unlock.analysis.paired)
        **analyse(
            rows,
            paper_gains(settings.paper_setup, settings.prompts.benchmark, settings.prompts.locked_task),
            settings.statistics,
            DESIGN,
            settings.evaluation.tasks[0],
        ),
    }
    return make_record(settings, plan, session, result, conditions, findings, time.perf_counter() - started)
