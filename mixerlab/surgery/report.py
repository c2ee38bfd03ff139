"""``report.md``, the block x replacement heatmap and the greedy path of an ablation."""
from __future__ import annotations

from pathlib import Path


def _plots(result: dict, out: Path) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files = {}
    reps = list(result["settings"]["replacements"])
    groups = list(dict.fromkeys(c["group"] for c in result["cells"]))
    grid = np.full((len(groups), len(reps)), np.nan)
    for c in result["cells"]:
        if c["status"] == "ok":
            grid[groups.index(c["group"]), reps.index(c["replacement"])] = c["finetuned_drop"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(reps), 0.9 + 0.38 * len(groups)))
    im = ax.imshow(grid, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(reps)), reps)
    ax.set_yticks(range(len(groups)), groups)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=8,
                color="grey" if np.isnan(v) else ("white" if v > np.nanmax(grid) / 2 else "black"))
    fig.colorbar(im, ax=ax, label="accuracy drop after fine-tune (points)")
    ax.set_title("validation accuracy lost per replaced block")
    fig.tight_layout()
    fig.savefig(out / "heatmap.png", dpi=110)
    plt.close(fig)
    files["heatmap"] = "heatmap.png"
    g = result.get("greedy")
    if g:
        steps = [p["step"] for p in g["path"]]
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        ax.plot(steps, [p["acc"] for p in g["path"]], "o-", label="validation accuracy")
        ax.axhline(result["original"]["acc"] - g["tolerance"], ls="--", c="grey", label="tolerance floor")
        ax.set_xlabel("attention blocks removed")
        ax.set_ylabel("validation top-1 (%)")
        ax2 = ax.twinx()
        ax2.plot(steps, [100 * p["macs_saved"] for p in g["path"]], "s:", c="C1", label="MACs saved")
        ax2.plot(steps, [100 * p["time_saved"] for p in g["path"]], "^:", c="C2", label="time saved")
        ax2.set_ylabel("saved (%)")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
        ax.set_title("greedy removal of attention")
        fig.tight_layout()
        fig.savefig(out / "greedy.png", dpi=110)
        plt.close(fig)
        files["greedy"] = "greedy.png"
    return files


def _best_text(group: str, best: dict) -> str:
    return f"{group} (best: {best['replacement']}, {best['finetuned_drop']:+.2f})"


def write_ablate_report(result: dict, out: Path) -> dict[str, str]:
    out = Path(out)
    files = _plots(result, out)
    st, base = result["settings"], result["original"]
    lines = ["# Mixer surgery: which blocks need attention?", "",
             f"Model: {result['source']['kind']} `{result['source']['path']}`; "
             f"{len(result['blocks'])} blocks ({', '.join(b['mixer'] for b in result['blocks'])}).",
             f"Validation split: {len(base['val_correct'])} class-balanced {st['data']} training-set images, "
             f"{result['source'].get('validation', 'carved out of the training set')}; every choice below is made "
             f"on it. Original validation accuracy "
             f"**{base['acc']:.2f} %**, {base['macs'] / 1e6:.2f} MMACs per image.",
             f"Fine-tune per cell: {st['finetune_steps']} AdamW steps (lr {st['finetune_lr']}, batch "
             f"{st['batch_size']}) of the replaced blocks' mixer parameters and norms only.", "",
             "| blocks | mixer | replacement | zero-shot acc | drop | fine-tuned acc | drop | MACs saved | time saved |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in result["cells"]:
        if c["status"] != "ok":
            lines.append(f"| {c['group']} | {', '.join(c['mixers'])} | {c['replacement']} | n/a | | | | | |")
            continue
        lines.append(f"| {c['group']} | {', '.join(c['mixers'])} | {c['replacement']} | {c['zero_shot_acc']:.2f} | "
                     f"{c['zero_shot_drop']:+.2f} | {c['finetuned_acc']:.2f} | {c['finetuned_drop']:+.2f} | "
                     f"{100 * c['macs_saved']:.1f} % | {100 * c['time_saved']:.1f} % |")
    na = [c for c in result["cells"] if c["status"] != "ok"]
    if na:
        lines += ["", "Not applicable: " + "; ".join(f"{c['group']} -> {c['replacement']}: {c['reason']}" for c in na)]
    lines += ["", "![heatmap](heatmap.png)", ""]
    # In words: a group needs attention when no replacement stays within the tolerance.
    tol = st["tolerance"]
    need, free = [], []
    for grp in dict.fromkeys(c["group"] for c in result["cells"]):
        ok = [c for c in result["cells"] if c["group"] == grp and c["status"] == "ok"]
        if not ok:
            continue
        best = min(ok, key=lambda c: c["finetuned_drop"])
        (free if best["finetuned_drop"] <= tol else need).append((grp, best))
    lines.append("## In words")
    lines.append("")
    lines.append(f"With a tolerance of {tol:g} accuracy points after the short fine-tune: "
                 + (f"**{', '.join(g for g, _ in need)} need attention** (no replacement stays within it); "
                    if need else "no single block needs attention; ")
                 + ("; ".join(_best_text(g, b) for g, b in free) + " can do without it, one at a time."
                    if free else "every block needs it."))
    g = result.get("greedy")
    if g:
        last = g["path"][-1]
        removed = ", ".join(f"block {r['block']} -> {r['replacement']}" for r in last["removed"]) or "none"
        lines += ["", "## Greedy search", "",
                  f"Removed together: {removed}. Validation accuracy {g['val_acc']:.2f} % (original "
                  f"{base['acc']:.2f} %, floor {base['acc'] - tol:.2f} %); MACs saved "
                  f"{100 * last['macs_saved']:.1f} %, measured forward time saved {100 * last['time_saved']:.1f} %.",
                  f"Test split ({g['test_n']} images, evaluated once, for the original and the final model): "
                  f"{g['test_acc_original']:.2f} % -> {g['test_acc_final']:.2f} %.",
                  f"The final model (per-block mixers: {', '.join(g['mixers'])}) is `ablated.safetensors`; "
                  "load it with `mixerlab.factory.model_from_weights`.", "", "![greedy](greedy.png)"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    files["report"] = "report.md"
    return files
