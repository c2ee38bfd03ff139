"""``mixerlab eval``: top-1/top-5/loss, per-class accuracy and a confusion-matrix PNG for a checkpoint."""
from __future__ import annotations

import argparse
import json

from mixerlab.engine.config import DATASETS


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "eval",
        help="evaluate a checkpoint (accuracy, per-class accuracy, confusion matrix)",
        description="Evaluate a training checkpoint on the validation/test split of a dataset.",
    )
    p.add_argument("source", nargs="?", default=None, metavar="RUN_DIR_OR_CHECKPOINT",
                   help="a run folder (uses best, else last) or a .safetensors checkpoint, as analyze and ablate take it")
    p.add_argument("--checkpoint", default=None, metavar="RUN_DIR_OR_FILE",
                   help="the same, as an option (kept for older scripts)")
    p.add_argument("--data", choices=DATASETS, default=None, help="dataset (default: the one it was trained on)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="dataset folder")
    p.add_argument("--batch-size", type=int, default=256, help="images per evaluation batch (>= 1)")
    p.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    p.add_argument("--bn-calibration", choices=("auto", "on", "off"), default="auto",
                   help="recalibrate BatchNorm statistics on un-augmented training images first (auto: if the model has BN)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder for eval_*.json and the confusion PNG (default: <checkpoint folder>/eval)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (auto: cuda when available, else cpu)")
    p.add_argument("--num-workers", type=int, default=0,
                   help="DataLoader worker processes (0: load in the main process)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    return p


def _progress(done: int, total: int | None) -> None:
    from .main import progress_line
    progress_line(f"mixerlab eval: {done}/{total or '?'} images", last=done == total)


def run(args: argparse.Namespace) -> int:
    from mixerlab.engine import evaluate

    if args.source and args.checkpoint and args.source != args.checkpoint:
        raise ValueError(f"two checkpoints given ({args.source} and --checkpoint {args.checkpoint}); give one")
    checkpoint = args.source or args.checkpoint
    if checkpoint is None:
        raise ValueError("give the run folder or checkpoint to evaluate: mixerlab eval RUN_DIR")
    if args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    res = evaluate(checkpoint, data=args.data, data_dir=args.data_dir, batch_size=args.batch_size, ema=args.ema,
                   bn_calibration=args.bn_calibration, out_dir=args.out, device=args.device, num_workers=args.num_workers,
                   progress=_progress)
    if args.json:
        print(json.dumps({k: v for k, v in res.items() if k != "confusion"}, indent=2))
        return 0
    print(f"{res['model']} on {res['data']} ({res['n']} images, {res['weights']} weights, {res['checkpoint']})")
    print(f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  loss {res['loss']:.4f}")
    classes = json.load(open(res["files"]["json"]))["classes"] if "files" in res else range(len(res["per_class_top1"]))
    width = max(len(str(c)) for c in classes)
    for name, acc in zip(classes, res["per_class_top1"]):
        print(f"  {str(name):<{width}}  {acc:6.2f}%")
    if "files" in res:
        print(f"wrote {res['files']['json']} and {res['files']['png']}")
    return 0
