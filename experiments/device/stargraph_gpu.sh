#!/usr/bin/env bash
# The star-graph experiment (Q♯, Zhou et al. 2025, §3.1) at the paper's model size on the GPU host:
# `python -m klrl.stargraph run experiments/qsharp_stargraph_gpu.toml` on G(5, 5, 50), then on
# G(3, 8, 50) (`task.degree=3 task.path_length=8`), each with 6-layer × 384 transformers: π_ref
# pretrained by next-token prediction, the oracle critic, the paper's one offline round, Algorithm
# 1's rounds, REINFORCE / RPO / DPO; sized for about 3.5 minutes per task on one H100 (an estimate
# from XLA's FLOP and memory counts, not a measurement: see the config's header), at most 8 minutes
# wall in all.
#
#   OUT=/path/to/out bash experiments/device/stargraph_gpu.sh   # on the GPU host, from the repo root
#                                                               # (OUT defaults to results/qsharp_stargraph_gpu)
#   KLRL_RUNS=OUT/d5_l5_n50 python notebooks/qsharp_stargraph.py # then, where matplotlib is: the figures
#
# Needs no kit: klrl.stargraph imports jax, flax, optax, chex, orbax and numpy only (no gymnax,
# gymnasium or plotting stack), which the host has; the repo goes on PYTHONPATH. Each task runs
# under `timeout`: the first gets half of what is left of the wall time less MARGIN seconds, the
# second all of what is left less MARGIN. The driver writes each part as it ends (OUT/<task>/parts/,
# π_ref in OUT/<task>/pi_ref/) and skips parts already written, so a task cut by its timeout keeps
# what was done: the script then gathers those parts into OUT/<task>/summary.json (`run.parts=[]`),
# and running the script again with the same OUT finishes the rest. Writes OUT/d5_l5_n50/,
# OUT/d3_l8_n50/ (each: config.json, parts/, summary.json with the GPU named under "machine"),
# OUT/stargraph_gpu.json (per task: the driver's exit status, null where the time left was too
# short to start it; its seconds; whether summary.json exists) and
# OUT/stargraph_gpu.log. Extra `section.key=value` overrides for both tasks: KLRL_STARGRAPH_SET.
# Check of the logic on CPU (tiny models and sizes, a scratch OUT by default, never results/, the
# venv's packages):
#   KLRL_DEVICE_QUICK=1 KLRL_DEVICE_NO_INSTALL=1 PYTHON=.venv/bin/python bash experiments/device/stargraph_gpu.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
set -f   # no globbing: overrides such as baselines.seeds=[0] are words, not patterns
MARGIN=${KLRL_DEVICE_MARGIN:-20}   # seconds kept after the tasks: a cut task's summary, the last writes
CONFIG=experiments/qsharp_stargraph_gpu.toml
TASKS=("d5_l5_n50:task.degree=5 task.path_length=5 task.num_nodes=50"
       "d3_l8_n50:task.degree=3 task.path_length=8 task.num_nodes=50")
# Quick: every part at tiny size (1 layer × 16, a few steps, 64 test prompts), same two tasks.
QUICK_SET="pretrain.layers=1 pretrain.width=16 pretrain.heads=2 pretrain.steps=20 pretrain.train_size=512
pretrain.test_size=64 pretrain.eval_every=20 pretrain.warmup=2 critic.layers=1 critic.width=16 critic.heads=2
critic.steps=10 critic.batch_size=16 critic.warmup=2 offline.posttrain_size=64 offline.tries=2 rounds.rounds=2
rounds.prompts=32 baselines.steps=3 baselines.batch_size=8 baselines.seeds=[0] eval.test_size=64
eval.etas=[0.1,1.0]"
choose_out "${TMPDIR:-/tmp}/klrl-stargraph-gpu-quick" results/qsharp_stargraph_gpu
device_start

# run_task NAME SETTINGS TIMEOUT: the driver on one task; a cut or failed run's written parts are
# gathered into its summary.json. Appends "NAME rc seconds" to STATUS.
run_task() {
  local name=$1 settings=$2 limit=$3 start rc=0 dir=$OUT/$1
  local set=($settings ${KLRL_DEVICE_QUICK:+$QUICK_SET} ${KLRL_STARGRAPH_SET:-})
  start=$(date +%s)
  echo "== $name: ${set[*]} (timeout ${limit}s)"
  timeout -k 10 "$limit" "$PYTHON" -m klrl.stargraph run "$CONFIG" "$dir" "${set[@]}" || rc=$?
  if [ "$rc" -ne 0 ] && [ -f "$dir/pi_ref/lm.json" ] && [ "$(seconds_left)" -gt 5 ]; then
    echo "$name: exit status $rc; gathering the parts written into $dir/summary.json"
    timeout -k 5 $(( $(seconds_left) - 5 )) "$PYTHON" -m klrl.stargraph run "$CONFIG" "$dir" "${set[@]}" \
      'run.parts=[]' || echo "$name: no summary ($?)"
  fi
  STATUS+=("$name $rc $(( $(date +%s) - start ))")
}

run() {
  # no kit: the host's jax/flax/optax/chex/orbax are all klrl.stargraph imports
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  show_device
  "$PYTHON" -c "import klrl.stargraph.experiment" || { echo "klrl.stargraph.experiment does not import" >&2; return 2; }
  STATUS=()
  local i=0 n=${#TASKS[@]} task share
  for task in "${TASKS[@]}"; do
    i=$(( i + 1 ))
    if [ $(( $(seconds_left) - MARGIN )) -lt 30 ]; then      # too little to load π_ref and write a part
      echo "== ${task%%:*}: skipped, $(seconds_left)s left"; STATUS+=("${task%%:*} null 0"); continue
    fi
    share=$(( ($(seconds_left) - MARGIN) / (n - i + 1) ))     # an equal share of what is left
    run_task "${task%%:*}" "${task#*:}" "$share"
  done
  local entries=() s
  for s in "${STATUS[@]}"; do
    set -- $s
    entries+=("\"$1\": {\"exit_status\": $2, \"seconds\": $3, \"summary\": $([ -f "$OUT/$1/summary.json" ] && echo true || echo false)}")
  done
  (IFS=,; printf '{"config": "%s", "quick": %s, "tasks": {%s}}\n' "$CONFIG" \
    "$([ -n "${KLRL_DEVICE_QUICK:-}" ] && echo true || echo false)" "${entries[*]}") > "$OUT/stargraph_gpu.json"
  cat "$OUT/stargraph_gpu.json"
}

run 2>&1 | tee "$OUT/stargraph_gpu.log"
echo "stargraph_gpu.sh: $(( $(date +%s) - DEVICE_START ))s; wrote $OUT/stargraph_gpu.json, $OUT/stargraph_gpu.log, $OUT/d*/"
