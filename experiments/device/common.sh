# Shared by the GPU host scripts (atari_gpu.sh, train_gpu.sh); source it from the repo root.
#
# The host has jax (CUDA), flax, optax, chex and orbax only; `make device-kit` downloads the
# other wheels (cp312, manylinux x86_64) into .whl/<kit>/, git-ignored: gym (gymnasium and its two
# pure-Python dependencies), ale (ale-py, every ROM), gymnax (gymnax and the plotting stack it
# imports at import time). A script installs the kits it names (install_kit).
#
# Environment: OUT (output folder; a script may give a default), PYTHON (default python3),
# KLRL_DEVICE_WALL (seconds for the whole script, default 470: the host's limit is 480),
# KLRL_DEVICE_QUICK (tiny sizes: a check of the logic on CPU), KLRL_DEVICE_NO_INSTALL (use
# PYTHON's own packages instead of the kits, e.g. PYTHON=.venv/bin/python on a CPU machine),
# KLRL_DEVICE_SITE (where the kits go, default /tmp/site).

# choose_out QUICK_DEFAULT FULL_DEFAULT: OUT (unless set) for quick mode or the real run; quick
# mode never writes into results/ (exit 2).
choose_out() {
  if [ -n "${KLRL_DEVICE_QUICK:-}" ]; then
    OUT=${OUT:-$1}
    case "$(realpath -m "$OUT")/" in
      "$(realpath -m results)"/*) echo "quick mode never writes into results/ (OUT=$OUT)" >&2; exit 2 ;;
    esac
  else
    OUT=${OUT:-$2}
  fi
}

# device_start: the clock, PYTHON, WALL and the output folder (OUT must be set).
device_start() {
  : "${OUT:?set OUT to the output directory}"
  PYTHON=${PYTHON:-python3}
  WALL=${KLRL_DEVICE_WALL:-470}
  DEVICE_START=$(date +%s)
  mkdir -p "$OUT"
}

# seconds_left: what remains of WALL since device_start.
seconds_left() {
  echo $(( WALL - ($(date +%s) - DEVICE_START) ))
}

# install_kit KIT...: the wheels of .whl/KIT/ for each KIT into KLRL_DEVICE_SITE (default
# /tmp/site), first on PYTHONPATH (then the repo); with KLRL_DEVICE_NO_INSTALL only the repo is
# put on PYTHONPATH.
install_kit() {
  if [ -n "${KLRL_DEVICE_NO_INSTALL:-}" ]; then
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
    return 0
  fi
  local kit wheels=() site=${KLRL_DEVICE_SITE:-/tmp/site}
  for kit in "$@"; do
    ls .whl/"$kit"/*.whl > /dev/null || { echo "no .whl/$kit/: run make device-kit first" >&2; return 2; }
    wheels+=(.whl/"$kit"/*.whl)
  done
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "${wheels[@]}"
  export PYTHONPATH=$site:$PWD
}

# show_device MODULE...: the device, jax's version and each module's (imported: an import check).
show_device() {
  "$PYTHON" - "$@" <<'PY'
import importlib, importlib.metadata, sys
import jax
d = jax.devices()[0]
for m in sys.argv[1:]:
    importlib.import_module(m)
mods = " | ".join(f"{m} {importlib.metadata.version(m)}" for m in sys.argv[1:])
print("device:", d.platform, d.device_kind, "| jax", jax.__version__, *(["|", mods] if mods else []))
PY
}
