# The single entry point. On a fresh machine `make demo` / `make test` create .venv and install everything.
# On a machine with torch and triton preinstalled and no network, name its interpreter instead:
#     make test PYTHON=python3
# which installs only fastattn itself (editable, no dependencies fetched) into that interpreter.

VENV   := .venv
PYTHON ?= $(VENV)/bin/python
TORCH  ?= torch==2.14.1
# Every test dependency at the exact version that passes; `make test CONSTRAINTS= VENV=.venv-newest` tries
# the newest releases instead, in a virtualenv of their own.
CONSTRAINTS ?= constraints.txt
PIN    := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# Tests run the Triton kernels on the CPU through Triton's interpreter when there is no GPU.
PYTEST_ARGS ?=

ifeq ($(PYTHON),$(VENV)/bin/python)
SETUP := $(VENV)/.installed
else
SETUP := system-install
endif

.PHONY: demo test lint env verify setup system-install clean gpu-check

demo: $(SETUP)
	$(PYTHON) -m fastattn env
	$(PYTHON) -m fastattn verify
	$(PYTHON) -m fastattn demo
	$(PYTHON) -m fastattn train gpt --steps 300 --out results/demo-gpt

test: $(SETUP)
	$(PYTHON) -m pytest $(PYTEST_ARGS)

# ruff, configured in pyproject.toml: the checks, and the formatting left as `ruff format` writes it.
lint: $(SETUP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

env: $(SETUP)
	$(PYTHON) -m fastattn env

verify: $(SETUP)
	$(PYTHON) -m fastattn verify

setup: $(SETUP)

$(VENV)/.installed: setup.py pyproject.toml requirements-dev.txt $(CONSTRAINTS)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip setuptools $(PIN)
	$(VENV)/bin/pip install "$(TORCH)" -r requirements-dev.txt $(PIN)
	$(VENV)/bin/pip install --no-build-isolation -e . $(PIN)
	touch $@

system-install:
	$(PYTHON) -m pip install --no-build-isolation --no-deps -e .

# On a GPU machine: build, tests on CUDA, verify, benchmarks and the memory/sanitizer checks in one call
# of at most 10 minutes, reported into RESULTS (at most 7 files):
#     make gpu-check PYTHON=python3 RESULTS=/path/to/dir
# GPU_CHECK_ARGS=--dry-run shows the plan; without a GPU the GPU stages report "skipped: no GPU".
RESULTS ?= results
GPU_CHECK_ARGS ?=

gpu-check: $(filter $(VENV)/.installed,$(SETUP))
	$(PYTHON) bench/gpu_check.py --results $(RESULTS) $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
