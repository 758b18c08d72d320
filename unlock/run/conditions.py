"""The conditions a run evaluates side by side: one table, read by the config schema, evaluation,
tracking and the paper report. A new condition is one row here (and, if it steers with a new kind of
vector, the step that makes those vectors in :func:`unlock.run.session.steering_sets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unlock.analysis.paired import Design


@dataclass(frozen=True)
class Condition:
    name: str
    model: Literal["target", "reference"]  # which model is evaluated
    prompt: Literal["locked", "unlocked"]  # the task's own prompt, or its capability-prompt variant
    vectors: str | None  # the steering set it adds (a key of the run's steering sets), or none
    label: str  # for tables and the paper report


CONDITIONS: dict[str, Condition] = {
    c.name: c
    for c in (
        Condition("unsteered", "target", "locked", None, "Locked (unsteered)"),
        Condition("unlock", "target", "locked", "unlock", "UNLOCK"),
        Condition("prompting", "target", "unlocked", None, "CoT prompt"),
        Condition("native", "target", "locked", "native", "native direction"),
        Condition("random", "target", "locked", "random", "random direction"),
        # UNLOCK's own vectors negated: the same push, the other way. A push in any direction of the
        # Target's activation subspace can change its output (the planted null control showed it);
        # only a direction that carries the capability beats its reverse.
        Condition("reversed", "target", "locked", "reversed", "UNLOCK reversed"),
        Condition("reference", "reference", "unlocked", None, "post-trained reference"),
    )
}
BASELINE = "unsteered"  # what steered conditions are compared against in plots


def steered() -> list[str]:
    """Conditions that add steering vectors, in table order."""
    return [c.name for c in CONDITIONS.values() if c.vectors is not None]


# What the run's tests compare (unlock.analysis.paired): every condition with the unsteered Target, the
# steered ones also with the random direction, unlock also with its reverse; the verdict: unlock against
# the unsteered Target, the random direction and (where evaluated) its reverse.
DESIGN = Design(
    baseline=BASELINE, control="random", primary="unlock", steered=tuple(steered()), primary_controls=("reversed",)
)


def label(name: str) -> str:
    return CONDITIONS[name].label if name in CONDITIONS else name


# selection.objective -> the keys a sweep point is ranked by, in order (later keys break ties).
OBJECTIVES = {
    # the paper's: validation accuracy, as the paired gain over the unsteered Target on the same items
    "acc": ("vs_unsteered_diff", "acc", "stepwise", "gen_words"),
    "stepwise": ("stepwise", "acc", "gen_words"),  # behaviour: share of generations that reason in steps
    "fidelity": ("layers_beating_null", "fidelity", "acc"),  # geometry: layers whose transfer beats the null
    # the run's own claim: the strongest evidence that unlock beats unsteered and random (point_evidence)
    "verdict": ("point_evidence", "vs_random_diff", "vs_unsteered_diff"),
}
