"""experiments/device/stargraph_gpu.sh and experiments/qsharp_stargraph_gpu.toml (docs/stargraph.md,
"On a GPU host"): the GPU config resolves for both tasks at 6 × 384 within the memory bound its
header states, and the script's quick mode refuses to write into results/. The GPU run itself
is not a test; its logic is checked on CPU by the script's quick mode."""

from __future__ import annotations

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "experiments", "qsharp_stargraph_gpu.toml")
SCRIPT = os.path.join(ROOT, "experiments", "device", "stargraph_gpu.sh")


def test_quick_mode_never_writes_into_results():
    out = os.path.join("results", "stargraph_quick_check")
    env = {**os.environ, "KLRL_DEVICE_QUICK": "1", "OUT": out}
    res = subprocess.run(["bash", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"quick mode never writes into results/ (OUT={out})"]
    assert not os.path.exists(os.path.join(ROOT, out))
