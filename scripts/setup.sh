#!/usr/bin/env bash
# Set up mixerlab on a fresh Debian machine: Fashion-MNIST (Debian package), a virtualenv,
# PyTorch + torchvision, and mixerlab itself (editable, with test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
      || echo "warning: could not install dataset-fashion-mnist; pass --data-dir to a folder with the four IDX .gz files" >&2
  else
    echo "warning: Fashion-MNIST not found; run 'apt-get install dataset-fashion-mnist' as root" >&2
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
if ! python -c "import torch, torchvision" >/dev/null 2>&1; then
  case "$(uname -m)" in
    aarch64) python -m pip install -q torch==2.9.1 torchvision==0.24.1 ;;
    *)       python -m pip install -q torch==2.14.1 torchvision==0.29.1 ;;
  esac
fi
python -m pip install -q -e '.[test]'
