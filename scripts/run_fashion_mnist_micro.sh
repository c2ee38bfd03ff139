#!/usr/bin/env bash
# Benchmark: every *_micro model on Fashion-MNIST with the short and the longer recipe, one after
# the other (2 CPU cores). Runs land in runs/fmnist/<schedule>/<model>; summarise with
#   .venv/bin/python scripts/summarize_fashion_mnist.py
# Usage: scripts/run_fashion_mnist_micro.sh [short|long] [models...]
set -u
cd "$(dirname "$0")/.."
schedule=${1:-short}
shift || true
models=${*:-deit_micro ffonly_micro convit_micro deepvit_micro poolformer_micro identityformer_micro lavit_micro}
for m in $models; do
  out=runs/fmnist/$schedule/$m
  [ -f "$out/summary.json" ] && continue
  rm -rf "$out"
  .venv/bin/python -m mixerlab train --config configs/fashion_mnist/micro_$schedule.yaml --model "$m" \
      --out "$out" --progress plain --log-every 20 > "runs/fmnist/$schedule-$m.log" 2>&1
  echo "$m done: $?"
done
