"""Per-image test predictions of a finished run, stored beside its summary.

The training loop only ever evaluates the validation split held out of the training set
(``TrainConfig.val_images``); the test split is read once per run, here, after training: the final
weights (``last.safetensors``, BatchNorm statistics as the loop calibrated them) predict every test
image, and ``test_predictions.npz`` keeps ``pred`` (predicted class), ``target`` and ``index``
(position in the test split) so that every run of a comparison can be paired image by image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FILE = "test_predictions.npz"


class CorruptPredictions(ValueError):
    """A run's ``test_predictions.npz`` cannot be read (truncated, not an archive, missing arrays)."""


def load_predictions(run_dir: str | Path) -> dict | None:
    """``dict(pred, target, index, correct)`` of a run, or None when it has none yet; a file that
    cannot be read raises :class:`CorruptPredictions` naming it."""
    import zipfile
    path = Path(run_dir) / FILE
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            out = {k: z[k] for k in ("pred", "target", "index")}
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError) as e:
        raise CorruptPredictions(f"{path} cannot be read ({type(e).__name__}: {e}); it is written again "
                                 "from the run's weights") from None
    if not (out["pred"].shape == out["target"].shape == out["index"].shape):
        raise CorruptPredictions(f"{path} holds arrays of different lengths; it is written again from the "
                                 "run's weights")
    out["correct"] = (out["pred"] == out["target"]).astype(np.int8)
    return out


def write_predictions(run_dir: str | Path, cfg, *, batch_size: int = 500) -> dict:
    """Predict the test split with the run's final weights; writes ``test_predictions.npz`` and
    ``test.json`` (top-1, number of images). Cached: a second call reads the file."""
    import torch

    from ..data import build_data, eval_loader
    from ..engine.factory import open_model

    run_dir = Path(run_dir)
    try:
        have = load_predictions(run_dir)
    except CorruptPredictions:
        have = None  # computed again below and replaced atomically
    if have is not None:
        return have
    bundle = build_data(cfg)
    test = bundle.test if bundle.test is not None else bundle.val
    model, _ = open_model(run_dir / "last.safetensors", weights="model")
    model.eval()
    loader = eval_loader(test, batch_size=batch_size, rank=0, world=1, workers=0, pin=False)
    preds, targets = [], []
    with torch.no_grad():
        for x, y in loader:
            preds.append(model(x).argmax(dim=1).to(torch.int16).numpy())
            targets.append(y.to(torch.int16).numpy())
    pred, target = np.concatenate(preds), np.concatenate(targets)
    index = np.asarray(test.indices, dtype=np.int32)
    tmp = run_dir / (FILE + ".tmp.npz")
    np.savez_compressed(tmp, pred=pred, target=target, index=index)
    tmp.replace(run_dir / FILE)  # whole or absent
    top1 = 100.0 * float(np.mean(pred == target))
    from ..engine.checkpoint import atomic_write_text
    atomic_write_text(run_dir / "test.json", json.dumps(dict(test_top1=top1, n=int(len(pred))), indent=1) + "\n")
    return load_predictions(run_dir)
