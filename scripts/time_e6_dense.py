"""Time compare's E6 dense runs at one thread: backbones at the CPU scale (trained briefly: the cost
does not depend on the weights), then each (backbone, task) fine-tuned and tested as ``mixerlab
compare`` does it (``mixerlab.compare.dense_runs``). The arithmetic in ``docs/compare_presets.md``
(section E6) comes from this script.

Usage: python scripts/time_e6_dense.py OUT [--iters 250] [--backbones poolformer,lavit,resnet18]
       [--tasks retinanet,semantic_fpn]
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--iters", type=int, default=250)
    ap.add_argument("--backbones", default="poolformer,lavit,resnet18")
    ap.add_argument("--tasks", default="retinanet,semantic_fpn")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from mixerlab.compare.dense_runs import DenseSpec, backbone_cost, dense_config_for, evaluate_for_compare
    from mixerlab.compare.experiments import RunSpec, get_experiment
    from mixerlab.compare.presets import get_preset
    from mixerlab.compare.runner import build_config
    from mixerlab.dense.train import train_dense
    from mixerlab.engine import train
    out = Path(a.out)
    e6 = dataclasses.replace(get_experiment("E6"), iters=a.iters)
    # the CPU scale, one epoch on 5 % of the pool: a backbone of the right shape in seconds
    p = dataclasses.replace(get_preset("standard"), train_fraction=0.05, epochs=1, val_images=500,
                            train_overrides=dict(eval_every=1, bn_calibration_batches=2, num_threads=1))
    for label in a.backbones.split(","):
        bb = out / f"bb-{label}"
        if not (bb / "summary.json").exists():
            s = train(build_config(RunSpec("E6", label, e6.models[label]), p, 0, "fashion-mnist", None, {}), out_dir=bb)
            print(f"{label}: pretrained, val top-1 {s['final'].get('val_top1'):.1f} %", flush=True)
        c = backbone_cost(bb, e6.canvas)
        print(f"{label}: backbone {c['params'] / 1e6:.3f} M params, {c['macs'] / 1e6:.1f} M MACs at {e6.canvas} px, "
              f"strides {c['strides']}", flush=True)
        for task in a.tasks.split(","):
            spec = DenseSpec("E6", label, task, RunSpec("E6", label, e6.models[label]), e6.dense_args())
            run = out / f"{task}-{label}-{a.iters}"
            t = time.time()
            s = train_dense(dense_config_for(spec, 0, bb, threads=1), run, log=lambda m: None)
            t_train = time.time() - t
            t = time.time()
            m = evaluate_for_compare(run)["metrics"]
            key = "box_AP" if task == "retinanet" else "mIoU"
            print(f"{label} {task}: {a.iters} iterations {t_train:.0f} s (loop {s['train_time_s']:.0f} s), "
                  f"test {time.time() - t:.0f} s, {key} {m[key]:.4f}", flush=True)


if __name__ == "__main__":
    main()
