"""`klrl config CONFIG` / `klrl train CONFIG --dry-run`: the resolved config with its defaults,
the member table per agent and the swept values each agent ignores; nothing is written.
(`--estimate` compiles and times a slice: its slice is checked here, the measurement in a
slow test.)"""

from __future__ import annotations

import os

import pytest

from engine_helpers import TINY_CARTPOLE_TOML, cli_in_process
from klrl.config import load_experiment
from klrl.dryrun import ignored_notice, ignored_sweeps
from klrl.estimate import slice_experiment, slice_steps

TOML = TINY_CARTPOLE_TOML + """seeds = 2

[sweep]
"agent.name" = ["dqn", "mdqn", "mvi"]
"agent.tau" = [0.01, 0.03]
"agent.entropic_index" = [1.0, 2.0, 3.0]
"""


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text(TOML)
    return path


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_dry_run_prints_defaults_member_table_and_ignored_values_and_writes_nothing(cfg, tmp_path):
    out = tmp_path / "run"
    res = cli_in_process("train", cfg, "--dry-run", "--out", out)
    assert res.returncode == 0, res.stderr
    text = res.stdout
    # The resolved config, section by section, defaults marked, traced keys with their readers.
    for line in ("[train]", "  total_steps         = 800\n", "  gamma               = 0.99  (default)",
                 "  tau                   = 0.03  (default; read by mdqn, mvi)",
                 "  entropic_index        = 2.0  (default; read by mvi)", '  agent.tau = [0.01, 0.03]'):
        assert line in text, line
    # The member table per agent: dqn 2 seeds, mdqn 2 tau x 2 seeds, mvi 2 tau x 3 q x 2 seeds.
    assert "dqn: 2 members = 1 grid point(s) x 2 seed(s)" in text
    assert "mdqn: 4 members = 2 grid point(s) x 2 seed(s)" in text
    assert "mvi: 12 members = 6 grid point(s) x 2 seed(s)" in text
    assert "      17     1     5  0.03               3" in text       # mvi's last member
    assert "       5     1     1  0.03               —" in text       # mdqn ignores entropic_index
    assert "mdqn ignores agent.entropic_index [1.0, 2.0, 3.0] (4 members, not 12)" in text
    assert "members in all: 18" in text
    assert f"run directory: {out}  (would be created)" in text
    # Nothing written: not the run directory, nothing next to the config.
    assert not out.exists() and _files(tmp_path) == ["exp.toml"]
    # `klrl config` prints the same.
    assert cli_in_process("config", cfg, "--out", out).stdout == text


def test_dry_run_refuses_what_a_run_refuses_in_one_line(cfg, tmp_path):
    res = cli_in_process("config", cfg, "--set", "agent.tau=-1")
    assert res.returncode == 2 and res.stderr.startswith("klrl: error: agent.tau: got -1")
    assert res.stderr.count("\n") == 1 and res.stdout == ""
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("")
    res = cli_in_process("train", cfg, "--dry-run", "--out", used)
    assert res.returncode == 2 and res.stderr.startswith("klrl: error: --out: got")
    res = cli_in_process("train", cfg)
    assert res.returncode == 2 and res.stderr == ("klrl: error: --out: got nothing; allowed a run directory "
                                                  "(required unless --dry-run)\n")
    for flags in (["--resume"], ["--distributed"], ["--task", "0", "--num-tasks", "2"]):
        res = cli_in_process("train", cfg, "--dry-run", *flags)
        assert res.returncode == 2 and res.stderr == f"klrl: error: --dry-run: got {flags[0]}; allowed a dry run " \
            f"of one new run (without {flags[0]})\n"
    assert _files(tmp_path) == ["exp.toml", "used/x"]


def test_ignored_sweeps_and_the_one_line_notice(cfg):
    exp = load_experiment(str(cfg))
    assert ignored_sweeps(exp) == {"dqn": ["agent.tau", "agent.entropic_index"], "mdqn": ["agent.entropic_index"]}
    notice = ignored_notice(exp)
    assert "\n" not in notice and "dqn ignores agent.tau [0.01, 0.03], agent.entropic_index" in notice
    assert ignored_notice(load_experiment(str(cfg), ["sweep.agent.name=[\"mvi\"]"])) is None


def test_estimate_slice_has_a_fast_chunk_then_learning_chunks(cfg):
    assert slice_steps(4, 10) == 500 and slice_steps(4, 1) == 52 and slice_steps(1, 4) == 200
    sliced, c = slice_experiment(load_experiment(str(cfg)))
    t = sliced.static.train
    assert (t.total_steps, t.chunk_steps, t.learning_starts) == (4 * c, c, 2 * c)
    assert sliced.agents == ("dqn", "mdqn", "mvi") and sliced.swept_hparams() == {
        "tau": [0.01, 0.03], "entropic_index": [1.0, 2.0, 3.0]}


@pytest.mark.slow
def test_estimate_measures_a_slice_and_writes_nothing(cfg, tmp_path):
    res = cli_in_process("train", cfg, "--dry-run", "--estimate", "--set", 'sweep.agent.name=["mdqn"]',
                         "--set", "agent.entropic_index=2.0")
    assert res.returncode == 0, res.stderr
    assert "ESTIMATE of the wall time" in res.stdout and "mdqn: 4 members; compile" in res.stdout
    assert "total ~" in res.stdout and _files(tmp_path) == ["exp.toml"]
