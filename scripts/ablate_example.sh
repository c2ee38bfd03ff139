#!/usr/bin/env bash
# The committed mixer-surgery example (docs/results/ablate-example/): train the CPU-scale DeiT of
# `mixerlab compare` (native 28 x 28 grid, 7 x 7 patches = 16 tokens, width 64, 4 blocks) on
# Fashion-MNIST with 5,000 training images held out for validation, then ask of every attention
# block whether it needs attention (`mixerlab ablate`; its validation images are the ones the run
# held out). Usage: scripts/ablate_example.sh [OUT]   (PYTHON=... to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-docs/results/ablate-example}
RUN=runs/ablate-example-train
start=$(date +%s)
"$PY" -m mixerlab train --model deit_micro \
  --model-args '{"img_size": 28, "patch_size": 7, "dim": 64, "num_heads": 4, "depth": 4}' --img-size 28 \
  --data fashion-mnist --recipe small --epochs 2 --train-fraction 0.5 --val-images 5000 --lr 4e-3 \
  --out "$RUN" --progress plain
"$PY" -m mixerlab ablate "$RUN" --data fashion-mnist --out "$OUT" --val-size 2000 --finetune-steps 100 \
  --tolerance 1.0
echo "ablate example: $(( $(date +%s) - start )) s wall (train + ablate)"
