"""``mixerlab train``: train a model (offline data, resumable, ``torchrun``-ready).

Every TrainConfig field is an option (``--batch-size 64``, ``--amp bf16``, ``--clip-grad 1.0``,
``--ema-decay null``); ``--set key=value`` is the generic form. Precedence: dataclass defaults
<- ``--config YAML`` <- options. Distributed: ``torchrun --nproc_per_node N -m mixerlab train ...``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from mixerlab.data.datasets import FASHION_MNIST_DIR
from mixerlab.engine.config import DATASETS, TrainConfig, config_to_yaml, field_help

_BOOL = {"deterministic", "channels_last", "compile", "tensorboard"}


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a model (DeiT-style recipe, resumable, torchrun-ready)",
        description=(
            "Train a mixerlab model. Data is read offline only: Fashion-MNIST from "
            f"{FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist) or --data-dir; CIFAR from "
            "the python-pickle folders; any ImageFolder tree (train/, val/); or synthetic data. "
            "Options override the YAML recipe (--config), which overrides the defaults. "
            "Distributed: torchrun --nproc_per_node N -m mixerlab train ..."
        ),
    )
    p.add_argument("--config", metavar="YAML", help="recipe file (see configs/)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<model>-<data>-<time>); must be new")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR exactly from its last checkpoint")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="generic config override (repeatable)")
    p.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                   help="train in N processes on this machine (torchrun's launcher, run by this command): "
                        "Ctrl-C saves a checkpoint and exits 130 with one line, where a bare torchrun ends "
                        "in its own traceback")
    p.add_argument("--dry-run", action="store_true", help="check the model name and its options, print the resolved config and exit")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(dest=f.name, metavar=f.name.upper(), default=argparse.SUPPRESS,
                      help=field_help(f.name))
        if f.name in _BOOL:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        if f.name == "recipe":
            from mixerlab.engine.recipes import DEFAULT_RECIPE, list_recipes
            kwargs.update(choices=list_recipes(), metavar="{" + ",".join(list_recipes()) + "}",
                          help="named recipe the config starts from (mixerlab.engine.recipes); default: "
                               "the dataset's (" + ", ".join(f"{k}: {v}" for k, v in DEFAULT_RECIPE.items()) + ")")
        if f.name == "data":
            kwargs.update(choices=DATASETS, metavar="{" + ",".join(DATASETS) + "}")
        if f.name == "num_threads":  # one name across commands (bench, ablate): --threads; the old one still works
            p.add_argument("--threads", **{**kwargs, "metavar": "N"})
            p.add_argument(flag, **{**kwargs, "help": argparse.SUPPRESS})
            continue
        p.add_argument(flag, **kwargs)
    return p


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {k: v for k, v in vars(args).items() if k in names}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = value
    return out


def _check_like_the_run(cfg, args: argparse.Namespace) -> None:
    """What ``train`` checks before its first step, for ``--dry-run``: the device and mixed
    precision, and the run folder (a file, another command's folder, an existing run)."""
    from pathlib import Path

    from mixerlab.engine.distributed import resolve_device
    from mixerlab.engine.loop import _autocast, _check_out_path, _run_files
    from mixerlab.engine.run_folder import check_folder

    _autocast(cfg.amp, resolve_device(cfg.device))
    if args.out and not args.resume:
        out = Path(args.out)
        _check_out_path(out)
        check_folder(out, "train")
        if _run_files(out):
            raise ValueError(f"run folder {out} already holds a run ({', '.join(_run_files(out))}); "
                             "choose another --out")


def _launch(args: argparse.Namespace, cfg, overrides: dict[str, str]) -> int:
    """``--nproc-per-node N``: torchrun's launcher (``torch.distributed.run``) in this process,
    starting N workers of this command without the option. The workers save a checkpoint on
    Ctrl-C and say so; the launcher's own ``SignalException`` becomes exit 130, its failure
    report one line."""
    import logging

    os.environ.setdefault("LOGLEVEL", "ERROR")  # torchelastic's per-signal warnings (read when it is imported)
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run as torchrun

    from mixerlab.engine.loop import default_run_dir

    if args.nproc_per_node < 1:
        raise ValueError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    out = args.resume or args.out or str(default_run_dir(cfg))  # one folder for every worker
    child = ["train", "--resume" if args.resume else "--out", out]
    if args.config and not args.resume:
        child += ["--config", args.config]
    for key, value in overrides.items():
        child += ["--set", f"{key}={value}"]
    launch = get_args_parser().parse_args(["--nproc-per-node", str(args.nproc_per_node), "--standalone",
                                          "-m", "mixerlab", *child])
    for name in [*logging.root.manager.loggerDict, "torch.distributed.elastic"]:  # (imported before)
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.ERROR)
    os.environ.setdefault("OMP_NUM_THREADS", str(cfg.num_threads or 1))
    try:
        torchrun(launch)
    except SignalException:  # Ctrl-C / SIGTERM: the workers checkpointed (and said where) and stopped
        return 130
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        if codes and all(c in (130, -2) for c in codes):
            return 130
        print(f"mixerlab train: error: {len(e.failures)} of {args.nproc_per_node} worker(s) failed (exit "
              f"{', '.join(map(str, codes))}); their messages are above", file=sys.stderr)
        return 2 if codes == [2] else 1
    return 0


def run(args: argparse.Namespace) -> int:
    from mixerlab.engine import NonFiniteLossError, load_config, resume_config, train

    overrides = _overrides(args)
    if args.resume:
        if args.config:
            raise ValueError("--config cannot be combined with --resume (the run's stored config is used)")
        if args.out and args.out != args.resume:
            raise ValueError("--out cannot differ from --resume: a resumed run continues in its own folder")
        cfg = resume_config(args.resume, overrides)
    else:
        cfg = load_config(args.config, overrides)
    if args.nproc_per_node is not None and not args.dry_run:
        return _launch(args, cfg, overrides)
    if args.dry_run:
        # the model the run would build, for the data's shape, on the meta device (no memory):
        # whatever the run refuses (an unknown name or option, a size the patch does not divide,
        # model_args that contradict the run) the dry run refuses, in the same words
        import torch
        from ..data.datasets import dataset_shape
        from ..engine.factory import model_for_run
        num_classes, in_chans = dataset_shape(cfg.data, cfg.data_dir, synthetic_classes=cfg.synthetic_classes,
                                              synthetic_chans=cfg.synthetic_chans)
        with torch.device("meta"):
            model_for_run(cfg, num_classes=num_classes, in_chans=in_chans)
        _check_like_the_run(cfg, args)
        sys.stdout.write(config_to_yaml(cfg))
        return 0
    try:
        summary = train(cfg, out_dir=args.resume or args.out, resume=bool(args.resume))
    except NonFiniteLossError as e:
        print(f"mixerlab train: error: {e}", file=sys.stderr)
        return 1
    if summary.get("interrupted"):
        if int(os.environ.get("RANK", "0")) > 0:  # rank 0 says it once
            return 130
        print(f"mixerlab train: interrupted; resume with: mixerlab train --resume {summary['run_dir']}", file=sys.stderr)
        return 130
    best = summary["best_top1"]
    split = {"validation": "validation", "test": "test"}.get(summary.get("eval_split"), "val")
    print(f"done: {summary['model']} on {summary['data']}, {summary['steps']} steps, "
          f"best {split} top-1 {best:.2f}% (epoch {summary['best_epoch']}), run folder {summary['run_dir']}"
          if best is not None else f"done: run folder {summary['run_dir']}")
    return 0
