#!/usr/bin/env bash
# The training bench on the GPU host: whole M-DQN runs, population vmapped in one jit,
# through `python -m klrl.bench.train --suite gpu` — CartPole-v1 (the bench's reference config,
# 50k env steps per member) at M = 1, 64, 256, 1024, MinAtar Breakout (minatar_cnn, 50k steps) at
# M = 1, 16, 64, then one row of 1024 CartPole members x 500k steps if time allows; at most
# 8 minutes wall in all. The suite's time guard skips a size (and the larger ones after it) that
# would end past the budget (what is left of the wall time less MARGIN seconds) and lists it in
# the JSON's skipped_by_budget. The JSON states the bench's goals: 64 members take at most 2x
# the seconds of one (each env), and 1024 CartPole members x 500k steps run in under 2 minutes.
#
#   make device-kit                                         # on a networked machine: .whl/ (kits gym + gymnax)
#   OUT=/path/to/out bash experiments/device/train_gpu.sh   # on the GPU host, from the repo root
#                                                           # (OUT defaults to results/bench)
#
# The host has jax (CUDA), flax, optax, chex, orbax but not gymnax, gymnasium or the plotting
# stack gymnax imports (matplotlib, seaborn, pandas, ...): the kits' wheels go to /tmp/site
# (experiments/device/common.sh). Writes $OUT/train_gpu.json (the GPU named by
# jax.devices()[0].device_kind; rewritten after every row, so a timeout keeps what was measured)
# and $OUT/train_gpu.log. Check of the logic on CPU (tiny sizes, a scratch OUT by default, the
# venv's packages instead of the kits):
#   KLRL_DEVICE_QUICK=1 KLRL_DEVICE_NO_INSTALL=1 PYTHON=.venv/bin/python bash experiments/device/train_gpu.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
MARGIN=${KLRL_DEVICE_MARGIN:-15}   # seconds between the suite's budget and the wall limit (exit, last write)
choose_out "${TMPDIR:-/tmp}/klrl-train-gpu-quick" results/bench
device_start

run() {
  install_kit gym gymnax
  show_device gymnax gymnasium
  left=$(seconds_left)
  args=(--suite gpu --budget $(( left - MARGIN )))
  if [ -n "${KLRL_DEVICE_QUICK:-}" ]; then
    args+=(--quick)   # the same parts and goals at M = 1, 2 on 2,000-step runs (4,000 for the last part)
  fi
  echo "bench: ${args[*]} (timeout ${left}s)"
  timeout -k 10 "$left" "$PYTHON" -m klrl.bench.train "${args[@]}" --out "$OUT/train_gpu.json"
}

run 2>&1 | tee "$OUT/train_gpu.log"
echo "train_gpu.sh: $(( $(date +%s) - DEVICE_START ))s; wrote $OUT/train_gpu.json and $OUT/train_gpu.log"
