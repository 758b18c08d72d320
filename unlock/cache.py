"""Stage artifacts keyed by a hash of exactly the config that determines them.

Like dora's experiment signatures: the key of a stage is the JSON of its inputs (including the keys
of the stages it reads), hashed. A sweep over alpha therefore reuses the direction and the map, a
sweep over rank reuses the activations, and a finished run re-run does no forward pass at all.
Each lookup is recorded (hit or miss, forward passes, seconds) for the run's record.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from unlock.artifacts import atomic_write_json

T = TypeVar("T")


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able object (sorted keys), for cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


class StageCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.records: dict[str, dict[str, Any]] = {}

    def key(self, stage: str, spec: dict[str, Any]) -> str:
        return f"{stage}-{fingerprint({'stage': stage, **spec})}"

    def path(self, stage: str, key: str, suffix: str) -> Path:
        return self.root / stage / f"{key}{suffix}"

    def get_or_compute(
        self,
        stage: str,
        spec: dict[str, Any],
        suffix: str,
        compute: Callable[[], tuple[T, int]],
        save: Callable[[Path, T], None],
        load: Callable[[Path], T],
    ) -> tuple[T, str]:
        """Load the artifact for ``spec`` or compute and save it; ``compute`` returns (value, forward passes)."""
        key = self.key(stage, spec)
        path = self.path(stage, key, suffix)
        record = self.records.setdefault(stage, {"hits": 0, "misses": 0, "forward_passes": 0, "seconds": 0.0})
        start = time.perf_counter()
        if path.is_file():
            try:
                value = load(path)
                record["hits"] += 1
                record["seconds"] += time.perf_counter() - start
                return value, key
            except Exception as error:  # a corrupt or foreign file: recompute rather than fail
                print(f"[cache] {path} unreadable ({error}); recomputing")
        value, forward_passes = compute()
        save(path, value)
        atomic_write_json(path.with_suffix(".key.json"), {"key": key, "stage": stage, "spec": spec})
        record["misses"] += 1
        record["forward_passes"] += forward_passes
        record["seconds"] += time.perf_counter() - start
        return value, key

    def summary(self) -> dict[str, dict[str, Any]]:
        return json.loads(json.dumps(self.records))
