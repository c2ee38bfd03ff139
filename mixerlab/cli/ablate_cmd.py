"""``mixerlab ablate``: mixer surgery on a trained model (which blocks need attention?)."""
from __future__ import annotations

import argparse

from mixerlab.engine.config import DATASETS


def add_parser(sub) -> argparse.ArgumentParser:
    from mixerlab.surgery import REPLACEMENTS

    p = sub.add_parser(
        "ablate",
        help="replace token mixers of a trained model block by block: accuracy, MACs and time per block",
        description="Mixer surgery: for each block (or stage) and each replacement mixer, the validation "
                    "accuracy zero-shot and after a short fine-tune of the replaced parts, the MACs and "
                    "time saved; then a greedy search removes attention from as many blocks as the "
                    "tolerance allows and saves that model.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a run folder, a training checkpoint, a mixerlab weight file or a timm checkpoint")
    p.add_argument("--data", choices=DATASETS, default=None, help="dataset (default: the one a run was trained on)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="dataset folder (default: the dataset's standard place)")
    p.add_argument("--blocks", default=None, metavar="SPEC",
                   help="blocks to try, e.g. 3-11 or 0,2,5 (default: every attention-family block)")
    p.add_argument("--replace", nargs="+", default=None, choices=REPLACEMENTS, metavar="MIXER",
                   help=f"replacement mixers (default: all of {', '.join(REPLACEMENTS)})")
    p.add_argument("--stages", action="store_true", help="replace whole stages (hierarchical models)")
    p.add_argument("--finetune-steps", type=int, default=100,
                   help="AdamW steps fine-tuning only the replaced mixers and their norms (0: zero-shot only)")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="learning rate of that fine-tune (> 0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per fine-tune and evaluation batch (>= 1)")
    p.add_argument("--val-size", type=int, default=None,
                   help="validation images carved out of the training set (default: 2000, or a fifth of a "
                        "smaller training set)")
    p.add_argument("--tolerance", type=float, default=1.0, help="accuracy points the greedy search may lose")
    p.add_argument("--no-search", action="store_true", help="skip the greedy search")
    p.add_argument("--keep-variable-size", action="store_true",
                   help="refuse replacements that fix the token count (token_ff, mean_attention)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation split and the fine-tune batches")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", default="runs/ablate", metavar="DIR",
                   help="output folder (report.md, heatmap.png, results.json, ablated.safetensors); "
                        "an interrupted run in it resumes from its finished cells")
    return p


def run(args: argparse.Namespace) -> int:
    from mixerlab.surgery import ablate

    ablate(args.checkpoint, data=args.data, data_dir=args.data_dir, out=args.out, blocks=args.blocks,
           replace=args.replace, finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
           batch_size=args.batch_size, val_size=args.val_size, tolerance=args.tolerance, stages=args.stages,
           keep_variable_size=args.keep_variable_size, search=not args.no_search, seed=args.seed,
           threads=args.threads)
    return 0
