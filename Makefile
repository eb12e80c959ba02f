# The two commands a newcomer types: `make run` and `make test`.
# Each creates/refreshes the local virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench bench-atari device-kit install clean

# uv installs the packages: 13 s for a fresh venv here against pip's 30 s (warm caches; most of
# uv's time is --compile-bytecode, which pip does too, so that every process of the tests imports
# compiled modules). uv itself comes from PyPI with pip.
UV     := $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv
	$(UV) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Main job on a built-in default: the quickstart population (DQN, M-DQN, MVI(q=2) on CartPole).
run: $(STAMP)
	$(VENV)/bin/klrl train experiments/quickstart.toml --out results/quickstart

# Fast suite (slow-marked tests excluded) on both cores (pytest-xdist); notebooks run in quick mode inside it.
# Its tiny runs are compile-bound, so it compiles with XLA's backend (LLVM) optimisation off: the
# same HLO programs and assertions, less optimised machine code (8 min 54 s -> 6 min 37 s on the
# 2-core VM, same hour). `make test-all` compiles as a user's run does.
test: $(STAMP)
	XLA_FLAGS="--xla_backend_optimization_level=0 $$XLA_FLAGS" $(PY) -m pytest -q -n 2 --dist loadgroup -m "not slow" tests

# Everything, slow tests included; adds the envpool extra (~300 MB) for the Atari backend comparison.
test-all: $(STAMP)
	$(UV) -e '.[test,envpool]'
	$(PY) -m pytest -q -n 2 --dist loadgroup tests

bench: $(STAMP)
	$(VENV)/bin/klrl bench tabular
	$(VENV)/bin/klrl bench train

# Atari throughput: raw emulator pool vs whole training, vmap vs map (results/bench/atari.json; ~12 min on 2 cores).
bench-atari: $(STAMP)
	$(VENV)/bin/klrl bench atari

# Wheels the GPU host lacks for experiments/device/*.sh (cp312, manylinux x86_64; the versions of
# .venv), into .whl/<kit>/ (git-ignored; each script installs the kits it names, see
# experiments/device/common.sh): gym = gymnasium and its two pure-Python dependencies (both
# scripts); ale = ale-py with every ROM (atari_gpu.sh); gymnax = gymnax and what it imports at
# import time, matplotlib and seaborn (render code) with their dependencies, pandas included
# (train_gpu.sh). jax, flax, optax, chex, orbax, numpy, scipy are the host's. About 40 MB in all.
KIT_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
KIT_gym       := gymnasium==1.3.0 farama-notifications==0.0.6 cloudpickle==3.1.3
KIT_ale       := ale-py==0.12.1
KIT_gymnax    := gymnax==1.0.1 six==1.17.0 matplotlib==3.11.2 contourpy==1.3.3 cycler==0.12.1 fonttools==4.68.0 \
                 kiwisolver==1.5.1 packaging==26.4 pillow==13.0.0 pyparsing==3.3.3 python-dateutil==4.0.0 \
                 seaborn==0.13.2 pandas==3.1.1
kit_download   = $(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                 $(KIT_PLATFORMS) -d .whl/$(1) $(KIT_$(1))
device-kit: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(call kit_download,gym)
	$(call kit_download,ale)
	$(call kit_download,gymnax)
	@du -sh .whl/* && du -ch .whl/*/*.whl | tail -1

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
