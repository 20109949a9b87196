#!/usr/bin/env bash
# The TPU (XLA) path, tried on a CPU: torch-xla runs XLA on the CPU with PJRT_DEVICE=CPU. torch-xla pins its own
# torch release, so it lives in a virtualenv of its own, never the project's or CI's. Then the check: by default
# 3 epochs of 16 steps (48 steps, batch 32, 32 px: 512 training images; --steps sets the steps per epoch) through
# accelerate's XLA support on a CIFAR-10 subset (benchmarks/xla_check.py).
#   bash benchmarks/xla_cpu.sh                                   # make the virtualenv (once), run the check
#   bash benchmarks/xla_cpu.sh --dataset ../shared/data/cifar10 --steps 40
# XLA_VENV (default ~/.cache/image-classifier-xla/venv-<version>) and TORCH_XLA_VERSION choose where and which.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${TORCH_XLA_VERSION:-2.9.0}"   # torch-xla X.Y.Z needs torch X.Y.Z and the torchvision of that torch
torchvision="${TORCHVISION_VERSION:-0.24.0}"
venv="${XLA_VENV:-$HOME/.cache/image-classifier-xla/venv-$version}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch_xla, timm, accelerate, datasets" 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # the training side of requirements.txt (the app's gradio is not needed), with torch pinned to torch-xla's
    grep -vE "^(torch|torchvision|gradio)[<>=]" requirements.txt > "$venv/requirements-training.txt"
    "$venv/bin/python" -m pip install -q "torch==$version" "torchvision==$torchvision" "torch-xla==$version" \
        -r "$venv/requirements-training.txt"
fi
"$venv/bin/python" -c "import torch, torch_xla; print(f'torch {torch.__version__}, torch_xla {torch_xla.__version__}')"
PJRT_DEVICE=CPU exec "$venv/bin/python" -m benchmarks.xla_check "$@"
