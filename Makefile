# Every target builds .venv first when it is missing or older than the requirements.
# Usage: make test | make reproduce [PROFILE=paper|quick|smoke] | make smoke | make train [ARGS=...]
# VENV=<folder> (default .venv) is the environment folder make owns, wherever it is: make
# builds it, installs the pins into it again when they change, makes it again from PYTHON
# when it is broken or of a Python older than 3.11, and make clean removes it. To run with
# an environment of your own as it is, name its Python instead: PY=<folder>/bin/python.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# PY=<python> (make reproduce PY=python3: a GPU machine's own, docs/reproducing.md) runs the
# targets with that Python as it is: .venv is not built and nothing is installed into it
# (found in review: the pins were pip-installed into it, its CUDA torch replaced).
# .venv's own Python by any spelling (./.venv/bin/python, its full path) is .venv's.
PY := $(VENV_PY)
VENV_NEEDED := $(if $(filter $(abspath $(VENV_PY)),$(abspath $(PY))),$(STAMP))
# The genuine CIFAR-10 beside a checkout of this project, when present; else ./data.
CIFAR10_ROOT ?= $(firstword $(wildcard ../shared/data/cifar-10-batches-bin) ./data)
export CIFAR10_ROOT
# wandb stays offline unless the user asks otherwise (no account or network needed).
WANDB_MODE ?= offline
export WANDB_MODE
ARGS ?=
PROFILE ?= paper
# gpu-check runs under the GPU machine's own Python (its CUDA build of torch), not .venv.
GPU_PYTHON ?= python3
SPEED ?= full

.PHONY: help env test reproduce smoke analyze train benchmark benchmark-layers speed-report gpu-check gpu-speed gpu-wheels clean

help:
	@echo "make reproduce         our protocol for the paper's claims, end to end (PROFILE=paper|quick|smoke; default paper)"
	@echo "make smoke             the protocol in a few minutes on generated data (the tests run it)"
	@echo "make analyze           tables and plots from the runs of PROFILE (rewrites results/<PROFILE>/, or RESULTS_DIR/<PROFILE>/; smoke: outputs/smoke/results/)"
	@echo "make env               create $(VENV) with the pinned packages (the other targets do it when needed)"
	@echo "make test              run the test suite (creates $(VENV) first if needed)"
	@echo "make train ARGS=...    train one model; ARGS are Hydra overrides"
	@echo "make benchmark         training-loop throughput and data-pipeline share (CPU; writes results/)"
	@echo "make benchmark-layers  basis vs dense convolution speed (writes results/)"
	@echo "make speed-report      the speed records of results, results/cpu-fuse-norm(-auto), results/cpu-compile, results/cpu-auto, results/gpu*/ (SPEED_FOLDERS=...) in one summary (rewrites results/speed-summary.*)"
	@echo "make gpu-check         a GPU machine end to end, with its own python3 (GPU_PYTHON=...)"
	@echo "make gpu-speed         GPU speed measurements into results/gpu-<gpu> (SPEED=quick|full|kernels, BUDGET=s, GPU_PYTHON=...)"
	@echo "make gpu-wheels        wheels/ to carry to a GPU machine without network"
	@echo "make clean             remove $(VENV) and Python's caches (keeps outputs/ and cache/: runs and sensitivity tables)"

env: $(STAMP)

# A build cut off while venv set up pip leaves a python without pip, and a .venv of a Python
# older than 3.11 cannot install the pins: start it again, from PYTHON (3.11+, or one line)
# (python3 is 3.10 on Ubuntu 22.04: pip said only "No matching distribution found for
# pandas==3.1.1", and said it again with PYTHON=python3.11, its .venv kept). These lines stay
# above the rule: inside the recipe make echoed them on every build.
$(STAMP): requirements.txt pyproject.toml
	{ "$(VENV_PY)" -m pip --version && "$(VENV_PY)" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; } > /dev/null 2>&1 || { $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' > /dev/null 2>&1 || { echo "make: PYTHON=$(PYTHON) is $$($(PYTHON) -V 2>&1 | head -n 1); the pinned packages need Python 3.11+: name one, e.g. make test PYTHON=python3.11" >&2; exit 2; }; $(PYTHON) -m venv --clear "$(VENV)"; }
	"$(VENV_PY)" -m pip install --quiet --disable-pip-version-check -r requirements.txt
	"$(VENV_PY)" -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch "$(STAMP)"

# Tests in TEST_WORKERS processes (pytest-xdist; each uses its share of at most 2 threads,
# tests/conftest.py); the idle worker takes queued tests from the busy one (worksteal), as
# the smoke protocol test alone takes minutes. TEST_WORKERS=0: one process; auto: one a core.
TEST_WORKERS ?= 2
test: $(VENV_NEEDED)
	WANDB_MODE=disabled $(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# ARGS goes to the script, which refuses it naming OVERRIDES=... (it was dropped, silently)
# The script is given the targets' Python (it runs .venv/bin/python by default: found in
# review, make reproduce VENV=<folder> built that folder and ran .venv's Python)
reproduce: $(VENV_NEEDED)
	PY="$(PY)" scripts/reproduce.sh $(PROFILE) $(ARGS)

smoke: $(VENV_NEEDED)
	WANDB_MODE=disabled PY="$(PY)" scripts/reproduce.sh smoke $(ARGS)

# The analysis reads and writes the folder scripts/reproduce.sh wrote: the smoke profile's
# records and tables are in $(OUTPUTS)/smoke/results, never in results/; the others' in
# $(RESULTS_DIR)/<profile> (found in review: RESULTS_DIR was ignored here, and the
# committed results/<profile>/ rewritten from its records).
OUTPUTS ?= outputs
PROFILE_RESULTS = $(if $(filter smoke,$(PROFILE)),$(OUTPUTS)/smoke/results,$(RESULTS_DIR)/$(PROFILE))
# With ARGS=source=wandb the runs come from wandb: no runs_dir (it would be warned of as unread).
# The folders are quoted for the shell and for Hydra (found in review: an OUTPUTS folder
# with a space, which make reproduce took, failed here: "cannot parse the override 'b/...'";
# and one with a quote ended the quotes, one with backquotes ran a command): hydra_value is
# key=value, the value in Hydra's quotes, inside the shell's double quotes (' and ${ escaped
# for Hydra, which reads ${...} in quotes too, as an interpolation; then \ " $ ` for the shell).
quote := '
hydra_value = "$(1)='$(subst `,\`,$(subst $$,\$$,$(subst ",\",$(subst \,\\,$(subst $${,\$${,$(subst $(quote),\$(quote),$(2)))))))'"
analyze: $(VENV_NEEDED)
	$(PY) scripts/analyze.py profile=$(PROFILE) $(if $(filter smoke,$(PROFILE))$(RESULTS_DIR),$(if $(filter source=wandb,$(ARGS)),,$(call hydra_value,runs_dir,$(PROFILE_RESULTS)/runs) )$(call hydra_value,out_dir,$(PROFILE_RESULTS))) $(ARGS)

train: $(VENV_NEEDED)
	$(PY) scripts/train.py $(ARGS)

benchmark: $(VENV_NEEDED)
	$(PY) scripts/benchmark_train.py $(ARGS)

benchmark-layers: $(VENV_NEEDED)
	$(PY) scripts/benchmark_layers.py $(ARGS)

# The folders of speed records summarized (the committed summary's, and results/gpu-<gpu> where
# make gpu-speed writes); of these defaults those that do not exist are left out, while folders
# named with SPEED_FOLDERS=... are passed as given (speed_report.py refuses a missing one: a
# typo must not summarize the defaults over the committed summary).
SPEED_FOLDERS ?= $(wildcard results results/cpu-fuse-norm results/cpu-fuse-norm-auto results/cpu-compile results/cpu-auto results/gpu*/)
speed-report: $(VENV_NEEDED)
	$(PY) scripts/speed_report.py $(SPEED_FOLDERS) $(ARGS)

# No .venv here: a GPU machine's python3 has its CUDA torch; the script needs no network.
gpu-check:
	$(GPU_PYTHON) scripts/gpu_check.py $(ARGS)

# The GPU speed measurements (training step, layers, whole model), most important first.
gpu-speed:
	PY="$(GPU_PYTHON)" scripts/gpu_speed.sh $(SPEED)

# For a GPU machine without network that has its own CUDA torch: the pure-Python pins it
# lacks, as wheels to carry over (docs/gpu.md). antlr4 4.9.3 (omegaconf's
# parser runtime) exists only as a source archive, so it is built into a wheel here.
# PyYAML (omegaconf's, and the tests') is built from its source archive without its
# optional C extension: one pure-Python wheel for whichever Python the GPU machine has (a
# python3 with torch, numpy, pandas, matplotlib, pytest and triton need not have it;
# found in review: omegaconf, and so every part, did not import without it); no cache, as
# pip's cache would hand back a wheel built with the extension for this Python alone.
gpu-wheels: $(VENV_NEEDED)
	mkdir -p wheels
	$(PY) -m pip download --quiet --disable-pip-version-check --no-deps -d wheels \
	  $$(grep -E '^(hydra-core|omegaconf|tqdm|pytest-random-order|pytest-timeout)==' requirements.txt)
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps -w wheels \
	  antlr4-python3-runtime==4.9.3
	PYYAML_FORCE_LIBYAML=0 $(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps \
	  --no-cache-dir --no-binary PyYAML -w wheels $$(grep -E '^PyYAML==' requirements.txt)
	@ls wheels

clean:
	rm -rf "$(VENV)" .pytest_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
