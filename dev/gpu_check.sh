#!/usr/bin/env bash
# Prepare and print the one command that runs bench/gpu.py on a lent GPU machine (the `device` tool of this
# workplace; see its README). That machine has Python 3.12 with torch, transformers, accelerate, timm, peft and
# onnxruntime, but no datasets, deepspeed, open_clip, av, optuna, evaluate, pydantic, facenet-pytorch or onnx, and no
# network: this script downloads those as Python 3.12 wheels into .whl/ (ignored by git, ~52 MB; deepspeed comes
# from this machine's pip cache or is built here as a pure-Python wheel), then prints the command to pass to
# `run` with carry [".whl"]. Usage: bash dev/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${EXPR_VENV:-.venv}/bin/python
mkdir -p .git/info .whl
grep -q "^/.whl/" .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pins=()
for name in datasets dill multiprocess hjson pydantic pydantic_core annotated-types typing-inspection typing_extensions \
  optuna alembic SQLAlchemy Mako colorlog evaluate av open_clip_torch ftfy wcwidth facenet-pytorch scikit-video onnx; do
  pins+=("$name==$(version "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
if ! ls .whl/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps -w .whl "deepspeed==$(version deepspeed)"
fi
du -sh .whl >&2
cat <<'EOF'
set -o pipefail; export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl > $OUT/pip.log 2>&1 || { tail -20 $OUT/pip.log; exit 3; }; export PYTHONPATH=/tmp/site:$PWD; nvidia-smi -L; python3 bench/gpu.py --out $OUT/gpu --keep-going --budget 400 --part-timeout 300 2>&1 | tee $OUT/gpu.log
EOF
