"""``mixerlab dense``: train and evaluate detectors and segmenters on mixerlab backbones.

    mixerlab dense scenes                      # write (once) and print the Fashion-MNIST scenes folder
    mixerlab dense train --task retinanet --backbone RUN_DIR --out runs/det   # the small recipe
    mixerlab dense train --resume runs/det     # continue an interrupted run exactly
    mixerlab dense eval runs/det               # box AP / mask AP / mIoU on its val split

Recipes (``--recipe``): ``small`` (the scenes, minutes on a CPU), ``retinanet_1x``, ``mask_rcnn_1x``
(COCO 2017, ``--data-dir``), ``semantic_fpn_40k`` (ADE20K, ``--data-dir``). See ``docs/dense.md``.
Bad input: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys

# options of ``dense train`` -> DenseConfig fields (None: not given)
_OPTIONS = {
    "task": dict(help="retinanet | mask_rcnn | semantic_fpn"),
    "backbone": dict(help="a zoo name (random init), a `mixerlab train` run folder or checkpoint, a mixerlab "
                          "weight file or a timm checkpoint (default: poolformer_micro)"),
    "data": dict(help="scenes (default) | coco | ade20k"),
    "data_dir": dict(help="COCO 2017 / ADEChallengeData2016 folder; for scenes the Fashion-MNIST folder"),
    "img_size": dict(type=int, help="scenes canvas / segmentation crop / detection short side"),
    "epochs": dict(type=int, help="passes over the training set"),
    "iters": dict(type=int, help="total iterations (instead of epochs)"),
    "batch_size": dict(type=int, help="images per step"),
    "lr": dict(type=float, help="base learning rate"),
    "optimizer": dict(help="adamw | sgd"),
    "num_threads": dict(type=int, help="torch intra-op threads (1 on a shared machine)"),
    "seed": dict(type=int, help="seed of the data order, flips and initialisation"),
    "eval_every": dict(type=int, help="evaluate every N epochs (and at the end)"),
    "max_eval_images": dict(type=int, help="evaluate on the first N val images only"),
}


def add_parser(sub) -> argparse.ArgumentParser:
    from mixerlab.dense.train import RECIPES

    p = sub.add_parser("dense", help="train / evaluate detectors and segmenters (RetinaNet, Mask R-CNN, Semantic FPN)",
                       description="Dense prediction on mixerlab backbones: the PoolFormer paper's COCO / ADE20K "
                                   "schedules and an offline Fashion-MNIST scenes dataset (docs/dense.md).")
    acts = p.add_subparsers(dest="action", metavar="ACTION")
    acts.required = True
    t = acts.add_parser("train", help="train a detector or segmenter (resumable run folder)")
    t.add_argument("--recipe", choices=sorted(RECIPES), help="named schedule (default: small)")
    t.add_argument("--out", metavar="RUN_DIR", help="run folder (must be new)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    for name, kw in _OPTIONS.items():
        if name == "num_threads":  # one name across commands (train, bench, ablate): --threads; the old one works
            t.add_argument("--threads", dest=name, default=None, metavar="N", **kw)
            t.add_argument("--num-threads", dest=name, default=None, type=int, help=argparse.SUPPRESS)
            continue
        t.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar=name.upper(), **kw)
    t.add_argument("--scenes-train", type=int, metavar="N", help="training scenes (default 1000)")
    t.add_argument("--scenes-val", type=int, metavar="N", help="validation scenes (default 200)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other DenseConfig field (YAML value), e.g. --set milestones=[0.5,0.9]")
    e = acts.add_parser("eval", help="evaluate a dense run (box / mask AP, mIoU)")
    e.add_argument("run", metavar="RUN_DIR", help="a `mixerlab dense train` run folder or checkpoint")
    e.add_argument("--ann-file", metavar="JSON", help="another COCO json to evaluate on (with --images); "
                                                      "for a segmenter: the label-PNG folder")
    e.add_argument("--images", metavar="DIR", help="the image folder of --ann-file")
    e.add_argument("--data-dir", metavar="DIR", help="where the run's dataset lies now")
    e.add_argument("--max-images", type=int, metavar="N", help="the first N images only")
    e.add_argument("--last", action="store_true", help="last.safetensors instead of best")
    e.add_argument("--json", metavar="FILE", help="also write the metrics here")
    s = acts.add_parser("scenes", help="write (once, cached) the Fashion-MNIST scenes and print their folder")
    s.add_argument("--canvas", type=int, default=128, help="canvas side (multiple of 32, <= 256)")
    s.add_argument("--num-train", type=int, default=1000, help="training scenes")
    s.add_argument("--num-val", type=int, default=200, help="validation scenes")
    s.add_argument("--seed", type=int, default=0, help="generator seed")
    s.add_argument("--data-dir", metavar="DIR", help="the Fashion-MNIST folder")
    return p


def _train_overrides(args) -> dict:
    import yaml

    out = {k: getattr(args, k) for k in _OPTIONS if getattr(args, k) is not None}
    scenes = {}
    if args.scenes_train is not None:
        scenes["num_train"] = args.scenes_train
    if args.scenes_val is not None:
        scenes["num_val"] = args.scenes_val
    if scenes:
        out["scenes"] = scenes
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = yaml.safe_load(v)
    return out


def run(args: argparse.Namespace) -> int:
    from mixerlab.dense import train as dt

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.action == "scenes":
        from mixerlab.dense.scenes import SceneSpec, fashion_mnist_scenes
        root = fashion_mnist_scenes(SceneSpec(num_train=args.num_train, num_val=args.num_val, canvas=args.canvas,
                                              seed=args.seed), data_dir=args.data_dir, log=log)
        print(root)
        return 0
    if args.action == "eval":
        r = dt.evaluate_run(args.run, ann_file=args.ann_file, image_dir=args.images, data_dir=args.data_dir,
                            max_images=args.max_images, prefer="last" if args.last else "best", log=log)
        text = json.dumps(r, indent=2)
        if args.json:
            from mixerlab.engine.checkpoint import atomic_write_text
            atomic_write_text(args.json, text + "\n")
        print(text)
        return 0
    overrides = _train_overrides(args)
    if args.resume:
        if args.out and args.out != args.resume:
            raise ValueError("--out cannot differ from --resume: a resumed run continues in its own folder")
        if args.recipe:
            raise ValueError("--recipe cannot be combined with --resume (the run's stored config is used)")
        import dataclasses
        cfg = dt.stored_config(args.resume)
        bad = sorted(set(overrides) - set(dt.RESUMABLE))
        if bad:
            raise ValueError(f"{', '.join(bad)} cannot change on resume; allowed: {', '.join(dt.RESUMABLE)}")
        cfg = dataclasses.replace(cfg, **overrides)
        out = args.resume
    else:
        if not args.out:
            raise ValueError("--out RUN_DIR is required for a new run")
        cfg = dt.dense_config(args.recipe or "small", **overrides)
        out = args.out
    try:
        summary = dt.train_dense(cfg, out, resume=bool(args.resume), log=log)
    except dt.NonFiniteLoss as e:
        print(f"mixerlab dense: error: {e}", file=sys.stderr)
        return 1
    if summary["interrupted"]:
        return 130
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"
    print(f"done: {summary['task']} on {summary['backbone_name']}, {summary['iters']} iterations, "
          f"{summary['metric']} {fmt(summary['initial'])} untrained -> {fmt(summary['final'])} "
          f"(best {fmt(summary['best'])} at epoch {summary['best_epoch']}), run folder {summary['run_dir']}")
    return 0
