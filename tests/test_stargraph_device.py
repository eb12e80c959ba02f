"""experiments/device/stargraph_gpu.sh and experiments/qsharp_stargraph_gpu.toml (docs/stargraph.md,
"On a GPU host"): the GPU config resolves for both tasks at 6 × 384 within the memory bound its
header states, and the script's quick mode refuses to write into results/. The GPU run itself
is not a test; its logic is checked on CPU by the script's quick mode."""

from __future__ import annotations

import os
import subprocess

import pytest

from klrl.stargraph.experiment_config import load_experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "qsharp_stargraph_gpu.toml")
SCRIPT = os.path.join(ROOT, "experiments", "device", "stargraph_gpu.sh")


@pytest.mark.parametrize("overrides, task", [([], (5, 5, 50)), (["task.degree=3", "task.path_length=8"], (3, 8, 50))])
def test_gpu_config_resolves_for_both_tasks(overrides, task):
    exp = load_experiment(CONFIG, overrides)
    assert tuple(exp.task) == task
    assert (exp.pretrain.layers, exp.pretrain.width) == (6, 384) == (exp.critic.layers, exp.critic.width)
    assert exp.critic.init == "ref" and exp.critic.heads == exp.pretrain.heads     # the trunk copy needs one size
    assert exp.rounds.rounds * exp.rounds.prompts <= exp.offline.posttrain_size   # fresh prompts every round
    # one sampling batch: ~1.8 MB of XLA temporaries per sequence at 6 × 384 (the config's header)
    assert exp.offline.posttrain_size * exp.offline.tries <= 12_000 and exp.eval.test_size <= 10_000


def test_quick_mode_never_writes_into_results():
    out = os.path.join("results", "stargraph_quick_check")
    env = {**os.environ, "KLRL_DEVICE_QUICK": "1", "OUT": out}
    res = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"quick mode never writes into results/ (OUT={out})"]
    assert not os.path.exists(os.path.join(ROOT, out))
