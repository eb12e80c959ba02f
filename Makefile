# The two commands a newcomer types: `make run` and `make test`.
# Each creates/refreshes the local virtual environment from pyproject.toml first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test test-all bench install clean

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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
