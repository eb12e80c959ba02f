"""Helpers shared by the engine tests (test_train.py, test_train_pool.py) and the CLI tests
(test_cli_train.py, test_tasks.py, test_sharding.py, test_distributed.py)."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NO_BACKEND_OPT = {"xla_backend_optimization_level": 0}
CARTPOLE_MIN_EPISODE = 8    # from |θ| <= 0.05 rad, pushing one way, |θ| > 12° takes >= 8 Euler steps


# A 3-member CartPole M-DQN population with per-member replay, on gymnax and on the host pool
# (2 chunks of 200 steps): the sharding and multi-process tests' run (3 members divide no
# device count above 1, so padding runs).
_THREE_MEMBERS = """
[env]
name = "CartPole-v1"
num_envs = 4
{backend}

[agent]
name = "mdqn"
hidden = [16]

[train]
total_steps = 400
chunk_steps = 200
buffer_size = 256
batch_size = 16
learning_starts = 100
target_update_every = 100
seeds = 3
replay_mode = "per-member"

[eval]
{eval}

[output]
checkpoint_every = 1
"""
THREE_MEMBERS = {
    "gymnax": _THREE_MEMBERS.format(backend="", eval="episodes = 2"),
    "pool": _THREE_MEMBERS.format(backend='backend = "pool"', eval='mode = "concurrent"\nenvs = 2'),
}


def member_keys(*seeds):
    """[M, 2] member keys PRNGKey(seed) for each seed."""
    return jnp.stack([jax.random.PRNGKey(s) for s in seeds])


def compiled(fn, *args, fast=True):
    """jax.jit(fn) compiled for `args`; `fast` skips XLA's backend optimisation (compile time)."""
    lowered = jax.jit(fn).lower(*args)
    return lowered.compile(NO_BACKEND_OPT) if fast else lowered.compile()


def cli_in_process(*args):
    """`klrl ARGS` through klrl.cli.main in this process (no interpreter start, and the test
    run's compiled programs are reused): a CompletedProcess-like (returncode, stdout, stderr)."""
    import contextlib
    import io

    from klrl import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return subprocess.CompletedProcess(["klrl", *args], code, out.getvalue(), err.getvalue())


def run_cli(*args, env=None, timeout=600):
    """`python -m klrl.cli ARGS` in the repository root, `env` added to the environment."""
    return subprocess.run([sys.executable, "-m", "klrl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def fake_devices_env(devices: int, extra=None) -> dict:
    """The environment of a subprocess that sees `devices` fake CPU devices (plus `extra`);
    XLA's backend optimisation is off there (compile time: these runs compare layouts, not speed)."""
    flags = f"--xla_force_host_platform_device_count={devices} --xla_backend_optimization_level=0"
    return {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu", **(extra or {})}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_processes(cfg, out, *flags, kill_second_after=None, devices=2):
    """`klrl train CFG --out OUT --distributed` as processes 0 and 1 of 2 on 127.0.0.1, `devices`
    fake CPU devices each (process 1 killing itself after `kill_second_after` chunks);
    [(returncode, stderr)]."""
    port = _free_port()
    procs = []
    for i in (0, 1):
        extra = {"KLRL_TEST_KILL_AFTER_CHUNKS": str(kill_second_after)} if i == 1 and kill_second_after else {}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "klrl.cli", "train", str(cfg), "--out", str(out), "--distributed",
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i),
             "--heartbeat-timeout", "10", *flags],
            cwd=ROOT, env=fake_devices_env(devices, extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        _, err = p.communicate(timeout=900)
        results.append((p.returncode, err))
    return results


# The smallest CartPole run the CLI tests share; a test appends its own [train] keys and tables.
TINY_CARTPOLE_TOML = """
[env]
name = "CartPole-v1"
num_envs = 4

[agent]
name = "dqn"
hidden = [16]

[train]
total_steps = 800
chunk_steps = 200
buffer_size = 256
batch_size = 16
learning_starts = 100
"""
