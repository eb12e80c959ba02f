# The two commands a newcomer types: `make run` and `make test`.
# Each creates/refreshes the local virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench bench-atari device-kit install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Main job on a built-in default: the quickstart population (DQN, M-DQN, MVI(q=2) on CartPole).
run: $(STAMP)
	$(VENV)/bin/klrl train experiments/quickstart.toml --out results/quickstart

# Fast suite (slow-marked tests excluded) on both cores (pytest-xdist); notebooks run in quick mode inside it.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 -m "not slow" tests

# Everything, slow tests included; adds the envpool extra (~300 MB) for the Atari backend comparison.
test-all: $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,envpool]'
	$(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(VENV)/bin/klrl bench tabular
	$(VENV)/bin/klrl bench train

# Atari throughput: raw emulator pool vs whole training, vmap vs map (results/bench/atari.json; ~12 min on 2 cores).
bench-atari: $(STAMP)
	$(VENV)/bin/klrl bench atari

# Wheels the GPU host lacks for experiments/device/atari_gpu.sh (cp312, manylinux x86_64; the
# versions of .venv), into .whl/ (git-ignored): ale-py (every ROM) and gymnasium with its two
# pure-Python dependencies. jax, flax, optax, chex, numpy are the host's; gymnax is not needed.
KIT_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
KIT_WHEELS    := ale-py==0.12.1 gymnasium==1.3.0 farama-notifications==0.0.6 cloudpickle==3.1.3
device-kit: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  $(KIT_PLATFORMS) -d .whl $(KIT_WHEELS)
	@ls -l .whl && du -ch .whl/*.whl | tail -1

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
