"""Collect runs/fmnist/<schedule>/<model>/summary.json into docs/results/fashion_mnist_micro.{json,md}."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["deit_micro", "ffonly_micro", "convit_micro", "deepvit_micro", "poolformer_micro", "identityformer_micro", "lavit_micro"]


def main() -> int:
    rows = []
    for schedule in ("short", "long"):
        for model in MODELS:
            path = ROOT / "runs" / "fmnist" / schedule / model / "summary.json"
            if not path.is_file():
                continue
            s = json.loads(path.read_text())
            f = s["final"]
            cfg = (path.parent / "config.yaml").read_text()
            rows.append({
                "model": model, "schedule": schedule, "params_m": round(s["params"] / 1e6, 3), "epochs": s["epochs"],
                "steps": s["steps"], "test_top1": round(f["val_top1"], 2), "test_top5": round(f["val_top5"], 2),
                "test_loss": round(f["val_loss"], 4), "train_loss": round(f["train_loss"], 4),
                "train_images_per_s": round(f["images_per_s"], 1), "train_wall_s": round(s["train_wall_s"], 1),
                "total_wall_s": round(s["wall_s"], 1), "machine": s["machine"],
                "train_fraction": next(l.split(": ")[1] for l in cfg.splitlines() if l.startswith("train_fraction")),
            })
    out = ROOT / "docs" / "results"
    (out / "fashion_mnist_micro.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | schedule | params (M) | epochs | steps | test top-1 (%) | test top-5 (%) | test loss | train img/s | train wall (s) | total wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['schedule']} | {r['params_m']} | {r['epochs']} | {r['steps']} | {r['test_top1']:.2f} | "
                     f"{r['test_top5']:.2f} | {r['test_loss']:.4f} | {r['train_images_per_s']} | {r['train_wall_s']} | {r['total_wall_s']} |")
    table = "\n".join(lines)
    md = out / "fashion_mnist_micro.md"
    text = md.read_text() if md.exists() else ""
    begin, end = "<!-- table:begin -->", "<!-- table:end -->"
    if begin in text:
        text = text[: text.index(begin) + len(begin)] + "\n" + table + "\n" + text[text.index(end):]
        md.write_text(text)
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
