# rnnbench — `make run` trains the default experiment, `make test` runs the suite CI runs.
# Both create .venv in the repo root on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# A CPU build of torch lying on this disk is used when present; elsewhere pip resolves
# `torch>=2.4` itself (install the torch you want into .venv first to choose the build).
TORCH_WHEEL := $(firstword $(wildcard /opt/wheels/torch-2.13.0+cpu-*.whl))

.PHONY: run test test-all lint bench browser slurm clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { \
	  if [ -n "$(TORCH_WHEEL)" ]; then $(PY) -m pip install -q "$(TORCH_WHEEL)"; \
	  else $(PY) -m pip install -q "torch>=2.4"; fi; }
	$(PY) -m pip install -q -e ".[dev]"
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/rnnbench $(ARGS)

# The report test opens the HTML report in headless Chromium: `make browser` installs Debian's
# package when it is missing (as root, or with sudo). `.ci/run` calls it; `make test` never does.
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && $$SUDO apt-get install -y -q chromium; }

# Sweeps on a real SLURM cluster: `.ci/slurm-up` starts a single-node one on this machine
# (installing Debian's slurm-wlm and munge when missing, as root or with sudo; `.ci/slurm-down`
# stops it), then tests/test_slurm.py runs its sweeps there. `.ci/run` starts it before `make test`.
slurm: $(STAMP)
	.ci/slurm-up
	@$(PY) -m pytest tests/test_slurm.py $(PYTEST_ARGS)

# Timings of rnnbench's own machinery (python -m rnnbench.bench --help); ARGS picks sections.
bench: $(STAMP)
	$(PY) -m rnnbench.bench $(ARGS)

# Most of the suite's time is real rnnbench processes: each worker forks them from a server that
# imported torch and Lightning once (tests/forkserver.py; RNNBENCH_TEST_FORK=0 starts each fresh),
# and pytest-xdist runs tests on every core (PARALLEL= for one process). pytest exits 5 when it
# collected no test: that is a failure here, never a pass.
PARALLEL ?= -n auto --dist worksteal
test: $(STAMP)
	@$(PY) -m pytest -m "not slow" $(PARALLEL) $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-all: $(STAMP)
	@$(PY) -m pytest $(PARALLEL) $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
