#!/usr/bin/env bash
# Installs what the build needs into the project: PyTorch 2.11.0 (its libtorch is what tch
# 0.24 links against) in a project-local virtualenv, and numpy/scipy for the reference
# scripts. Idempotent: a second call only checks. Needs python3 >= 3.10 with venv and pip.
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
VENV=.venv
PY=${PYTHON:-python3}

if ! command -v "$PY" >/dev/null; then
  echo "setup: $PY not found; install Python 3.10+ (with venv and pip)" >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
have=$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)
if [ "$have" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION into $VENV (about 3 GB with the CUDA libraries)"
  "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off \
    "torch==$TORCH_VERSION" numpy scipy
fi
"$VENV/bin/python" -c 'import numpy, scipy' 2>/dev/null || \
  "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off numpy scipy

torch_dir=$("$VENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" "$VENV/libtorch"
echo "setup: libtorch $TORCH_VERSION at $VENV/libtorch -> $torch_dir"
