"""experiments/atari_smoke.toml: the CPU recipe that shows Atari working in minutes. It must
stay small (one game, one seed, a few thousand steps), on the CPU fast path (patches
convolutions), and state its measured time; `klrl config` resolves it without compiling."""

from __future__ import annotations

import re
from pathlib import Path

from engine_helpers import cli_in_process
from klrl.config import load_experiment

PATH = Path(__file__).resolve().parents[1] / "experiments" / "atari_smoke.toml"


def test_smoke_recipe_is_small_and_on_the_cpu_fast_path():
    exp = load_experiment(str(PATH))
    s = exp.static
    assert s.env.backend == "ale" and not exp.envs and len(exp.agents) <= 2 and len(exp.seeds) == 1
    assert s.agent.conv == "patches" and s.agent.torso == "nature_cnn"
    assert s.train.total_steps <= 5000 and s.train.learning_starts < s.train.total_steps
    assert re.search(r"# TIME: \d+ min \d+ s of wall time measured", PATH.read_text())


def test_smoke_recipe_resolves_with_klrl_config():
    res = cli_in_process("config", PATH)
    assert res.returncode == 0, res.stderr
    assert '  conv                  = "patches"' in res.stdout and "members in all: 2" in res.stdout
