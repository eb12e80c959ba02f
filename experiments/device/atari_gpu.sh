#!/usr/bin/env bash
# Atari on the GPU host: `klrl bench atari` on ale with M = 1, 4, 16, 64 members
# (raw emulator pool vs whole training chunks; agent.conv lax vs patches x member_map vmap vs map,
# both convs being the bench's default --convs; update alone vs inside a scan), then a short Pong
# M-DQN learning run of 4 members with the fastest (conv, member_map) pair; at most 8 minutes
# wall in all. The sizes get what is left of the wall time less LEARN_RESERVE seconds for the
# learning run; the bench's time guard skips a row (cheapest rows first within a size) or a size
# that would end past it, so the JSON says what was measured and what the budget cut.
#
#   make device-kit                                      # on a networked machine: .whl/ (kits gym + ale: 4 MB)
#   OUT=/path/to/out bash experiments/device/atari_gpu.sh   # on the GPU host, from the repo root
#
# The host has jax (CUDA), flax, optax, chex, orbax but not ale-py / gymnasium: the kits' wheels
# go to /tmp/site (experiments/device/common.sh). Writes $OUT/atari_gpu.json (the GPU named by
# jax.devices()[0].device_kind; rewritten after every population size, so a timeout keeps what was
# measured) and $OUT/atari_gpu.log. Check of the logic on CPU, with the venv's packages instead of the kit:
#   OUT=/tmp/x KLRL_DEVICE_QUICK=1 KLRL_DEVICE_NO_INSTALL=1 PYTHON=.venv/bin/python bash experiments/device/atari_gpu.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
LEARN_RESERVE=${KLRL_DEVICE_LEARN_RESERVE:-110}   # seconds kept for the learning run (compile + 3000 steps)
device_start

run() {
  install_kit gym ale
  show_device ale_py gymnasium
  left=$(seconds_left)
  if [ -n "${KLRL_DEVICE_QUICK:-}" ]; then
    # quick trains at M = 2 only: its first row runs, the budget cuts the other rows
    args=(--quick --members 1,2 --budget 1 --learn-steps 16 --learn-members 2)
  else
    # the sizes within what is left less the learning run's reserve, then the learning run
    args=(--members 1,4,16,64 --budget $(( left - LEARN_RESERVE )) --learn-steps 3000 --learn-members 4)
  fi
  echo "bench: ${args[*]} (timeout ${left}s)"
  timeout -k 10 "$left" "$PYTHON" -m klrl.bench.atari --backends ale "${args[@]}" --out "$OUT/atari_gpu.json"
}

run 2>&1 | tee "$OUT/atari_gpu.log"
echo "atari_gpu.sh: $(( $(date +%s) - DEVICE_START ))s; wrote $OUT/atari_gpu.json and $OUT/atari_gpu.log"
