"""Shared helpers for the training-engine tests: tiny configs that train in well under a second per epoch."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mixerlab.data.datasets import FASHION_MNIST_DIR
from mixerlab.engine import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
HAVE_FMNIST = all(
    (Path(FASHION_MNIST_DIR) / f).is_file()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
)
# deit_micro shrunk to 66k parameters (dim 32, 16 patches of 8x8): a CPU step takes ~10 ms.
TINY_DEIT = {"dim": 32, "patch_size": 8}
# deepvit_micro shrunk to two re-attention blocks (it has BatchNorm inside re-attention).
TINY_DEEPVIT = {"dim": 24, "patch_size": 8, "depth": 2, "num_heads": 2}


def tiny_config(**overrides) -> TrainConfig:
    """Synthetic data, tiny deit, no augmentation noise unless asked: fast and learnable."""
    base = dict(
        model="deit_micro", model_args=dict(TINY_DEIT), drop_path_rate=0.0, data="synthetic", synthetic_size=128,
        batch_size=16, epochs=2, lr=3e-3, warmup_epochs=0.0, randaugment=None, random_erasing=0.0, mixup=0.0,
        cutmix=0.0, hflip=0.0, train_crop="none", ema_decay=None, eval_batch_size=64, progress="none",
        deterministic=True, num_threads=1,  # tiny matmuls: one thread beats two on a shared 2-core box
    )
    base.update(overrides)
    return TrainConfig(**base)


def run_cli(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m mixerlab ARGS`` in a subprocess (CPU only, two threads)."""
    full_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "mixerlab", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


# The run options of the CLI tests' tiny runs (everything but the model), the same knobs as
# tiny_config: fast and deterministic.
TINY_RUN_ARGS = ["--data", "synthetic", "--synthetic-size", "64", "--batch-size", "16", "--epochs", "1",
                 "--lr", "3e-3", "--warmup-epochs", "0", "--randaugment", "null", "--mixup", "0", "--cutmix", "0",
                 "--ema-decay", "null", "--num-threads", "1", "--progress", "none", "--deterministic"]


def cli_main(capsys, *argv):
    """``mixerlab ARGV`` in this process: (exit code, stdout, stderr)."""
    from mixerlab.cli.main import main
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err
