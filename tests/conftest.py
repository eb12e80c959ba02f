"""Shared pytest configuration.

- `x64` fixture: run a test with float64 enabled (tabular checks) without leaking the
  setting into the float32 agent tests that share the process.
- One persistent JAX compilation cache for the whole test run: set in the environment before
  JAX is imported, so every xdist worker and every subprocess the tests start (CLI runs,
  fake-device runs, notebooks) reads and writes the same folder, and a program that several
  tests build compiles once. `KLRL_TEST_JAX_CACHE` names the folder (default: a fresh one per
  run under the system temp dir, removed at the end).
  `jax_cache_env` returns those variables for tests that build a subprocess environment.
- hypothesis: no per-example deadline (first calls compile), a modest example budget so
  the fast suite stays fast; `HYPOTHESIS_PROFILE=thorough` for more examples.
"""

import os
import shutil
import tempfile


def _cache_dir() -> str:
    """The run's cache folder: the controller process imports this file before it starts the
    xdist workers, so they inherit its KLRL_TEST_JAX_CACHE; a plain `pytest` makes its own."""
    global _CREATED
    path = os.environ.get("KLRL_TEST_JAX_CACHE")
    if not path:
        path = _CREATED = tempfile.mkdtemp(prefix="klrl-test-jax-cache-")
        os.environ["KLRL_TEST_JAX_CACHE"] = path
    return path


_CREATED = None   # the folder this process made (removed when the run ends)


# Programs that compile in under 0.5 s (eager ops, small jits) are not written: writing every
# one costs more than it saves.
JAX_CACHE_ENV = {"JAX_COMPILATION_CACHE_DIR": _cache_dir(),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": os.environ.get(
                     "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5"),
                 "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
os.environ.update(JAX_CACHE_ENV)   # before jax is imported: this process and every child

import jax  # noqa: E402
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
def jax_cache_env():
    return dict(JAX_CACHE_ENV)


def pytest_unconfigure(config):
    if _CREATED:
        shutil.rmtree(_CREATED, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `--dist loadgroup` (make test) the tests that share a module-scoped fixture run on
    one worker, so the fixture (a compiled run, a CLI training) is built once, not once per
    worker. A module that marks its own xdist_group keeps it."""
    for item in items:
        if any(True for _ in item.iter_markers("xdist_group")):
            continue
        defs = getattr(item, "_fixtureinfo", None)
        for name in item.fixturenames:
            fixture = defs.name2fixturedefs.get(name) if defs else None
            if fixture and fixture[-1].scope == "module":
                item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}.{name}"))
                break


