"""Shared pytest configuration.

- `x64` fixture: run a test with float64 enabled (tabular checks) without leaking the
  setting into the float32 agent tests that share the process.
- `jax_cache_env`: environment variables giving subprocesses a persistent JAX compilation
  cache in pytest's cache folder (the notebook tests' `klrl train` runs: only a first run
  pays the compiles in full).
- hypothesis: no per-example deadline (first calls compile), a modest example budget so
  the fast suite stays fast; `HYPOTHESIS_PROFILE=thorough` for more examples.
"""

import os

import jax
import pytest
from hypothesis import settings

settings.register_profile("fast", max_examples=25, deadline=None, derandomize=True)  # CI: same examples every run
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def jax_cache_env(request):
    path = str(request.config.cache.mkdir("jax_compilation_cache"))
    return {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
