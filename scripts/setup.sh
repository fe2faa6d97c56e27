#!/usr/bin/env bash
# Installs what the build needs into the project: PyTorch 2.11.0 (its libtorch is what tch
# 0.24 links against) in a project-local virtualenv, and numpy/scipy/safetensors for the reference
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
    "torch==$TORCH_VERSION" numpy scipy safetensors
fi
# safetensors: the test scripts that write weights the Rust side reads (make_pth.py).
# tensorboard: the train tests read the event files back with it (pillow comes with it).
"$VENV/bin/python" -c 'import numpy, scipy, safetensors, tensorboard' 2>/dev/null || \
  "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off numpy scipy safetensors tensorboard==2.21.0
# The metrics CLI tests' reference packages (tests/it/metrics_cli.rs, folder_refs.py):
# pytorch-fid, torchmetrics (KID), scikit-image (PSNR/SSIM), lpips, cityscapesScripts, and
# torchvision for the first and lpips; torch==$TORCH_VERSION keeps pip from swapping torch.
"$VENV/bin/python" -c 'import pytorch_fid, torchmetrics, skimage, lpips, cityscapesscripts, torchvision' 2>/dev/null || \
  "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off "torch==$TORCH_VERSION" \
    torchvision==0.26.0 pytorch-fid==0.3.0 torchmetrics==1.9.0 scikit-image==0.26.0 lpips==0.1.4 \
    cityscapesscripts==2.3.0

# Headers that the wheel's CUDA runtime headers include but its packages leave out: the C
# runtime's crt/ and CCCL's nv/target. crates/torch-ext compiles c10d's NCCL backend
# against them (headers only, a few MB; the versions of CUDA 13.0, which torch 2.11 uses).
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cuda_inc="$site/nvidia/cu13/include"
if [ -d "$cuda_inc" ] && { [ ! -f "$cuda_inc/crt/host_config.h" ] || [ ! -e "$cuda_inc/nv/target" ]; }; then
  "$VENV/bin/pip" install --disable-pip-version-check --progress-bar off --no-deps \
    nvidia-cuda-crt==13.0.88 nvidia-cuda-cccl==13.0.85
fi

torch_dir=$("$VENV/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))')
ln -sfn "$torch_dir" "$VENV/libtorch"
echo "setup: libtorch $TORCH_VERSION at $VENV/libtorch -> $torch_dir"
"$(dirname "$0")/install-chromium.sh" || echo "setup: chromium could not be installed; the report browser test will skip"
