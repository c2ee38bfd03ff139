"""``mixerlab compare --preset quick|standard|full|gpu [--seeds S ...] [--calibration FILE] [--dry-run]
[--data ...] [--out DIR]``."""
from __future__ import annotations


def add_parser(sub):
    from ..compare.presets import PRESETS
    p = sub.add_parser(
        "compare", help="re-run the papers' central experiments and write a report",
        description="Train the models of the papers' central experiments (E1 every mixer at matched size, "
                    "E2 ConViT vs DeiT with less data, E3 DeepViT vs ViT in depth, E4 mixers in one "
                    "MetaFormer backbone, E5 LaViT's less attention, E6 PoolFormer / LaViT / ResNet-18 as "
                    "RetinaNet and Semantic FPN backbones on Fashion-MNIST scenes) on one recipe, with learning rates "
                    "chosen on a validation split, then write OUT/report.md (paired 95 % intervals holding "
                    "the test images and the training seeds, Holm-corrected per experiment, and a verdict "
                    "per claim: agrees / does not agree / inconclusive, with the probability that a rerun "
                    "flips it), results.json/.csv and figures. Finished runs are cached in OUT/runs and reused.")
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="quick: <= 15 min on 2 CPU cores; standard: <= 90 min on 2 CPU cores; gpu: <= 8 min on "
                        "one H100/H200 (needs CUDA; --dry-run tries it on a CPU); full: one GPU, ~30 min; "
                        "smoke: seconds, for tests")
    p.add_argument("--data", default=None,
                   help="fashion-mnist (default) | cifar10 | cifar100 | imagefolder | synthetic")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the Debian package's)")
    p.add_argument("--out", default=None, help="output folder (default runs/compare-<preset>)")
    from ..compare.experiments import list_experiments
    # no argparse choices: an experiment registered after the parser is built (a plugin, a test)
    # stays selectable; run_compare refuses an unknown id in one line, naming the allowed ones
    p.add_argument("--experiments", nargs="+", default=None, metavar="E",
                   help=f"subset of {' '.join(list_experiments())} (E6, the dense experiment, runs in "
                        "standard, full and gpu; quick leaves it out)")
    p.add_argument("--jobs", type=int, default=None,
                   help="train this many runs at once in separate processes (default: the preset's, gpu: "
                        "8; else 2: one thread each on 2 CPU cores, 1.25-1.3x the images/s of one "
                        "2-thread job for most micro models, see docs/benchmarks.md; results do not "
                        "depend on it)")
    p.add_argument("--sweep-only", action="store_true",
                   help="run only the preset's learning-rate sweep on the validation split and write "
                        "OUT/lr_sweep.json (scripts/sweep_lr.py commits it as the preset's LR table)")
    p.add_argument("--val-images", type=int, default=None, metavar="N",
                   help="size of the validation split held out of the training set (default: the preset's)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the finished runs in --out")
    p.add_argument("--seeds", nargs="*", default=None, metavar="S",
                   help="training seeds, replacing the preset's (integers >= 0, each once); e.g. a "
                        "replicate of a compare with disjoint seeds")
    p.add_argument("--calibration", default=None, metavar="FILE",
                   help="seed-calibration table (JSON, mixerlab.compare.calibration) giving the seed term "
                        "of the intervals when fewer than 5 seeds are trained; it must hold every "
                        "configuration the preset runs")
    p.add_argument("--save-calibration", default=None, metavar="FILE",
                   help="after the report, write this run's seed-calibration table (needs >= 5 seeds; e.g. "
                        "--seeds 0 1 2 3 4 --save-calibration mixerlab/compare/calibration_quick.json), "
                        "which --calibration reads for runs with fewer seeds")
    p.add_argument("--dry-run", action="store_true",
                   help="run the preset shrunk to toy sizes on the CPU (synthetic data, one epoch, at most "
                        "two seeds): checks that every run builds, trains and is reported, e.g. the gpu "
                        "preset on a machine without a GPU")
    p.add_argument("--threads", "--threads-per-job", dest="threads_per_job", type=int, default=None,
                   help="torch's CPU threads in each job, as --threads of train, bench and ablate "
                        "(default: CPU count / jobs; --threads-per-job is the older name)")
    return p


def _seeds(values):
    """``--seeds`` as integers; a value that is not one is refused in one line."""
    if values is None:
        return None
    out = []
    for v in values:
        try:
            out.append(int(v))
        except ValueError:
            raise ValueError(f"--seeds takes integers >= 0, got {v!r}") from None
    return out


def run(args) -> int:
    from ..compare import run_compare
    out = args.out or f"runs/compare-{args.preset}" + ("-dry-run" if args.dry_run else "")
    from ..compare.presets import get_preset
    jobs = args.jobs
    if jobs is None:
        jobs = 2 if args.dry_run else (get_preset(args.preset).jobs or 2)
    run_compare(args.preset, data=args.data, data_dir=args.data_dir, out=out,
                experiments=args.experiments, log=lambda s: print(s, flush=True),
                jobs=jobs, threads_per_job=args.threads_per_job,
                report_only=args.report_only, sweep_only=args.sweep_only,
                overrides=None if args.val_images is None else {"val_images": args.val_images},
                seeds=_seeds(args.seeds), calibration=args.calibration, dry_run=args.dry_run,
                save_calibration=args.save_calibration)
    return 0
