"""Helpers shared by the engine tests (test_train.py, test_train_pool.py) and the CLI tests
(test_cli_train.py, test_tasks.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_BACKEND_OPT = {"xla_backend_optimization_level": 0}
CARTPOLE_MIN_EPISODE = 8    # from |θ| <= 0.05 rad, pushing one way, |θ| > 12° takes >= 8 Euler steps


def member_keys(*seeds):
    """[M, 2] member keys PRNGKey(seed) for each seed."""
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def compiled(fn, *args, fast=True):
    """jax.jit(fn) compiled for `args`; `fast` skips XLA's backend optimisation (compile time)."""
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(NO_BACKEND_OPT) if fast else lowered.compile()


def run_cli(*args, env=None, timeout=600):
    """`python -m klrl.cli ARGS` in the repository root, `env` added to the environment."""
    return subprocess.run([sys.executable, "-m", "klrl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)
