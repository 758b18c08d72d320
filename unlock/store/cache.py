"""Stage artifacts keyed by a hash of exactly the config that determines them, checked on every load
and shared between concurrent jobs.

Like dora's experiment signatures: the key of a stage is the JSON of its inputs (including the keys
of the stages it reads), hashed. A sweep over alpha therefore reuses the direction and the map, a
sweep over rank reuses the activations, and a finished run re-run does no forward pass at all.

Three rules make the cache safe to share on a cluster filesystem:

- **Every artifact carries its provenance** (stage, key and the full spec, the *envelope*), and a
  load compares it with the spec asked for. A file whose envelope differs or is missing (a stray
  copy, an rsync mix-up, a file of an older harness) is foreign: it is named in a warning, never
  used, and replaced by a recomputed one.
- **One job computes a stage, the others wait and read it.** A lease beside the artifact
  (``<key>.lock``, filelock's :class:`~filelock.SoftFileLease`: a marker file created exclusively,
  renewed by a heartbeat thread) works on NFS and Lustre alike. A lease whose holder died on this
  host is broken at once; one whose holder stopped renewing it (a killed or preempted job on another
  node) is broken after ``UNLOCK_LEASE_SECONDS`` (60 s), so a requeued job never waits forever.
- **Writes are atomic** (the codecs write a temporary file and rename it), so a reader sees a whole
  artifact or none.

Each lookup is recorded (hit, shared, miss, foreign, forward passes, seconds) for the run's record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import SoftFileLease, Timeout

from unlock.store.artifacts import atomic_write_json

T = TypeVar("T")
Envelope = dict[str, Any]

LEASE_SECONDS = float(os.environ.get("UNLOCK_LEASE_SECONDS", "60"))


class ForeignArtifact(UserWarning):
    """A cached file that is not what its key asks for: it is recomputed, never used."""


def fingerprint(obj: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-able object (sorted keys), for cache keys."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def envelope(stage: str, key: str, spec: dict[str, Any]) -> Envelope:
    """What an artifact must carry to be used for ``key``: as it reads back from JSON, so a stored
    envelope compares equal to a fresh one exactly when the specs agree."""
    return json.loads(json.dumps({"stage": stage, "key": key, "spec": spec}, sort_keys=True, default=str))


@contextlib.contextmanager
def lease(path: Path, what: str) -> Iterator[None]:
    """Hold the lease beside ``path`` while computing it; wait (saying so once) while another job does."""
    lock = SoftFileLease(str(path) + ".lock", lease_duration=LEASE_SECONDS)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"[cache] waiting for another job computing {what} ({path.name})", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


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
        save: Callable[[Path, T, Envelope], None],
        load: Callable[[Path], tuple[T, Envelope | None]],
    ) -> tuple[T, str]:
        """Load the artifact for ``spec``, or wait for the job computing it, or compute and save it.

        ``compute`` returns (value, forward passes); ``save`` writes the value with the envelope;
        ``load`` returns (value, the envelope the file carries, or None)."""
        (value,), (key,) = self.get_or_compute_many(stage, [spec], suffix, lambda _missing: [compute()], save, load)
        return value, key

    def get_or_compute_many(
        self,
        stage: str,
        specs: list[dict[str, Any]],
        suffix: str,
        compute: Callable[[list[int]], list[tuple[T, int]]],
        save: Callable[[Path, T, Envelope], None],
        load: Callable[[Path], tuple[T, Envelope | None]],
    ) -> tuple[list[T], list[str]]:
        """:meth:`get_or_compute` for several specs whose missing artifacts are computed together (one
        engine pass): ``compute(indices)`` returns (value, forward passes) for the specs at those
        indices. Leases are taken in key order, so concurrent jobs never wait on each other in a cycle;
        specs with the same key are computed once."""
        keys = [self.key(stage, spec) for spec in specs]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}
        paths = {key: self.path(stage, key, suffix) for key in first}
        expected = {key: envelope(stage, key, specs[i]) for key, i in first.items()}
        record = self.records.setdefault(
            stage, {"hits": 0, "shared": 0, "misses": 0, "foreign": 0, "forward_passes": 0, "seconds": 0.0}
        )
        start = time.perf_counter()
        values: dict[str, T] = {}
        for key in first:
            found = self._load_verified(paths[key], expected[key], load, record)
            if found is not None:
                values[key] = found[0]
                record["hits"] += 1
        missing = sorted(key for key in first if key not in values)
        if missing:
            with contextlib.ExitStack() as held:
                for key in missing:
                    paths[key].parent.mkdir(parents=True, exist_ok=True)
                    held.enter_context(lease(paths[key], stage))
                for key in missing:  # done while we waited
                    found = self._load_verified(paths[key], expected[key], load, record, quiet=True)
                    if found is not None:
                        values[key] = found[0]
                        record["shared"] += 1
                todo = [key for key in missing if key not in values]
                if todo:
                    computed = compute([first[key] for key in todo])
                    for key, (value, forward_passes) in zip(todo, computed, strict=True):
                        save(paths[key], value, expected[key])
                        values[key] = value
                        record["misses"] += 1
                        record["forward_passes"] += forward_passes
        record["seconds"] += time.perf_counter() - start
        return [values[key] for key in keys], keys

    def _load_verified(
        self,
        path: Path,
        expected: Envelope,
        load: Callable[[Path], tuple[T, Envelope | None]],
        record: dict[str, Any],
        quiet: bool = False,
    ) -> tuple[T] | None:
        """(value,) when ``path`` holds the artifact ``expected`` describes; None when absent or foreign."""
        if not path.is_file():
            return None
        try:
            value, stored = load(path)
        except Exception as error:  # torn, truncated or not ours: recompute rather than fail
            reason = f"unreadable ({type(error).__name__}: {error})"
        else:
            if stored == expected:
                return (value,)
            reason = "carries no provenance" if stored is None else f"was computed for {_difference(stored, expected)}"
        if not quiet:
            record["foreign"] += 1
            warnings.warn(f"[cache] {path} {reason}; not used, recomputing", ForeignArtifact, stacklevel=3)
        return None

    def summary(self) -> dict[str, dict[str, Any]]:
        return json.loads(json.dumps(self.records))


def _difference(stored: Any, expected: Envelope) -> str:
    """Where a stored envelope departs from the expected one, for the warning."""
    if not isinstance(stored, dict):
        return f"something else ({str(stored)[:80]})"
    if stored.get("stage") != expected["stage"]:
        return f"stage {stored.get('stage')!r}, not {expected['stage']!r}"
    stored_spec, spec = stored.get("spec") or {}, expected["spec"]
    keys = sorted(k for k in {*stored_spec, *spec} if stored_spec.get(k) != spec.get(k))
    shown = ", ".join(
        f"{k}={json.dumps(stored_spec.get(k), default=str)[:60]} (asked {json.dumps(spec.get(k), default=str)[:60]})"
        for k in keys[:3]
    )
    return f"key {stored.get('key')!r}: {shown or 'another key'}"


# The JSON codec (eval results, logit lens): the value beside its envelope in one atomic file.
def save_json(path: Path, value: Any, provenance: Envelope) -> None:
    atomic_write_json(path, {"cache": provenance, "value": value})


def load_json(path: Path) -> tuple[Any, Envelope | None]:
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and set(data) == {"cache", "value"}:
        return data["value"], data["cache"]
    return data, None
