#!/usr/bin/env bash
# expr launcher: installs on first use, then runs the common jobs and prints the command it runs.
#
#   ./launch.sh train [--gpus N] [--zero 2|3] [TRAIN OPTIONS]
#                                       accelerate launch expr/train.py (demo data unless --data.cache is given);
#                                       --gpus N: N processes (multi_gpu.yaml when N > 1), --zero S: DeepSpeed ZeRO-S
#   ./launch.sh sweep --study NAME [SWEEP OPTIONS] [-- TRAIN OPTIONS]
#                                       an ablation study: python sweeps/run.py = expr sweep (studies: expr/sweep/studies/)
#   ./launch.sh test [PYTEST OPTIONS]   the test suite (what CI runs)
#   ./launch.sh install [--fresh]       (re)create the virtual environment in $EXPR_VENV (default .venv)
#
# Environment: EXPR_VENV (venv folder), EXPR_TORCH_SPEC (pip requirement for torch; default torch==2.13.0 on a
# machine without an NVIDIA GPU, plain `torch` with one), EXPR_TORCH_INDEX_URL (an extra index for torch, e.g.
# https://download.pytorch.org/whl/cpu), ACCELERATE_CONFIG (accelerate config file for `train`).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${EXPR_VENV:-.venv}
PY="$VENV/bin/python"

has_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

pip_quiet() {  # pip, minus the harmless warnings that some registry mirrors print for every package
  "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

install() {
  if [ "${1:-}" = "--fresh" ]; then rm -rf "$VENV"; fi
  echo "+ installing expr into $VENV" >&2
  [ -x "$PY" ] || python3 -m venv "$VENV"
  # torch first, then everything else constrained to that torch: otherwise open_clip_torch's torchvision pulls a
  # newer torch with gigabytes of CUDA packages onto CPU-only machines.
  local spec=${EXPR_TORCH_SPEC:-}
  if [ -z "$spec" ]; then
    if has_gpu; then spec="torch"; else spec="torch==2.13.0"; fi
  fi
  local extra=()
  if [ -n "${EXPR_TORCH_INDEX_URL:-}" ]; then extra=(--extra-index-url "$EXPR_TORCH_INDEX_URL"); fi
  pip_quiet install -q "${extra[@]}" "$spec"
  local version
  version=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch").split("+")[0])')
  echo "torch==$version" > "$VENV/constraints.txt"
  pip_quiet install -q -c "$VENV/constraints.txt" -e ".[dev]"
  "$PY" -c 'import expr, torch, accelerate, open_clip, evaluate, datasets, deepspeed, optuna; print("+ installed: torch", torch.__version__)' >&2
}

ensure_installed() {
  if [ ! -x "$PY" ] || ! "$PY" -c 'import expr, accelerate, open_clip, onnxruntime, pytest' >/dev/null 2>&1; then install; fi
}

run() { echo "+ $*" >&2; "$@"; }

cmd=${1:-help}
shift || true
case "$cmd" in
  install)
    install "$@" ;;
  train)
    gpus=""; zero=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --gpus) gpus=${2:?--gpus needs a number}; shift 2 ;;
        --zero) zero=${2:?--zero needs 2 or 3}; shift 2 ;;
        *) break ;;
      esac
    done
    case "$zero" in ""|2|3) ;; *) echo "--zero takes 2 or 3, not '$zero'" >&2; exit 2 ;; esac
    case "$gpus" in ""|*[!0-9]*|0) [ -z "$gpus" ] || { echo "--gpus takes a positive number, not '$gpus'" >&2; exit 2; } ;; esac
    config=${ACCELERATE_CONFIG:-}
    if [ -z "$config" ]; then
      if [ -n "$zero" ]; then config=accelerate_configs/deepspeed_zero$zero.yaml
      elif [ -n "$gpus" ] && [ "$gpus" -gt 1 ]; then config=accelerate_configs/multi_gpu.yaml
      elif has_gpu; then config=accelerate_configs/single_gpu.yaml
      else config=accelerate_configs/cpu.yaml
      fi
    fi
    extra=()
    if [ -n "$gpus" ]; then extra=(--num_processes "$gpus"); fi
    if [ "${EXPR_DRY_RUN:-}" = "1" ]; then
      echo "+ $VENV/bin/accelerate launch --config_file $config ${extra[*]} expr/train.py $*" | sed 's/  */ /g'
      exit 0
    fi
    ensure_installed
    run "$VENV/bin/accelerate" launch --config_file "$config" "${extra[@]}" expr/train.py "$@" ;;
  sweep)
    if [ "${EXPR_DRY_RUN:-}" = "1" ]; then echo "+ $PY sweeps/run.py $*"; exit 0; fi
    ensure_installed
    run "$PY" sweeps/run.py "$@" ;;
  test)
    ensure_installed
    set +e
    run "$PY" -m pytest "$@"
    rc=$?
    [ $rc -eq 5 ] && echo "pytest collected no tests" >&2
    exit $rc ;;
  help|-h|--help)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' ;;
  *)
    echo "unknown command '$cmd'; see ./launch.sh help" >&2
    exit 2 ;;
esac
