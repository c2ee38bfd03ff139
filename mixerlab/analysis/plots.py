"""PNG figures from analysis records (``analyze.analyze_model``); nothing here computes a metric.

Every figure has labelled axes and, for heatmaps, a colour bar. Matplotlib runs headless (Agg).
Figures are sized for the docs (~100 dpi) so a PNG stays well under 300 KB.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

DPI = 100


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _matrix(m) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in m], dtype=float)


def _vmin(mat) -> float:
    """Colour-scale floor: the data minimum rounded down to 0.1 (contrast for values near 1)."""
    lo = float(mat.min()) if np.ma.count(mat) else 0.0
    return min(math.floor(lo * 10) / 10, 0.9)


def _ticks(ax, labels, axis="both", max_labels=24):
    step = max(1, math.ceil(len(labels) / max_labels))
    idx = list(range(0, len(labels), step))
    if axis in ("both", "x"):
        ax.set_xticks(idx)
        ax.set_xticklabels([labels[i] for i in idx], rotation=90, fontsize=7)
    if axis in ("both", "y"):
        ax.set_yticks(idx)
        ax.set_yticklabels([labels[i] for i in idx], fontsize=7)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def _matrix_and_curves(rec: dict, *, xlabel: str, ylabel: str, title: str, cbar: str):
    """A figure with a layer x layer similarity matrix (left, NaN in grey) and an empty right axis."""
    plt = _plt()
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained",
                                 gridspec_kw=dict(width_ratios=(1, 1.25)))
    mat = np.ma.masked_invalid(_matrix(rec["matrix"]))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")
    im = a0.imshow(mat, cmap=cmap, vmin=_vmin(mat), vmax=1.0)
    _ticks(a0, rec["layers"])
    a0.set_xlabel(xlabel)
    a0.set_ylabel(ylabel)
    a0.set_title(title, fontsize=9)
    fig.colorbar(im, ax=a0, fraction=0.046, pad=0.04, label=cbar)
    return fig, a0, a1


def plot_attention_similarity(rec: dict, title: str, path: Path) -> Path | None:
    """Left: layer x layer cross-layer similarity; right: similarity with the next 1..k layers."""
    sim = rec["attention_similarity"]
    if not sim["layers"]:
        return None
    fig, a0, a1 = _matrix_and_curves(
        sim, xlabel="attention layer q", ylabel="attention layer p",
        title="cross-layer attention similarity\n(grey: different map shape)", cbar="mean column cosine")
    labels = sim["layers"]
    k = max((len(v) for v in sim["next_k"].values()), default=0)
    x = np.arange(len(labels))
    for d in range(k):
        y = [np.nan if sim["next_k"][n][d] is None else sim["next_k"][n][d] for n in sim["names"]]
        a1.plot(x, y, marker="o", ms=3, label=f"p vs p+{d + 1}")
    a1.axhline(sim["threshold"], color="k", ls="--", lw=0.8, label=f"threshold {sim['threshold']}")
    _ticks(a1, labels, axis="x")
    a1.set_xlabel("attention layer p")
    a1.set_ylabel("similarity with layer p+k")
    a1.set_title(f"similarity to the next layers; similar blocks: {sim['similar_blocks']}", fontsize=9)
    a1.legend(fontsize=7, loc="best")
    a1.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_head_similarity(rec: dict, title: str, path: Path) -> Path | None:
    """One H x H head-similarity heatmap per attention layer, shared colour scale."""
    heads = rec["head_similarity"]
    if not heads:
        return None
    plt = _plt()
    n = len(heads)
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.9 * cols + 1, 1.9 * rows + 0.6), squeeze=False)
    mats = {k: _matrix(v["matrix"]) for k, v in heads.items()}
    lo = min(0.0, min(float(np.nanmin(m)) for m in mats.values()))
    im = None
    for ax, (label, m) in zip(axes.flat, mats.items()):
        im = ax.imshow(m, cmap="magma", vmin=lo, vmax=1.0)
        off = heads[label]["mean_off_diagonal"]
        ax.set_title(f"{label}: off-diag {off:.2f}" if off is not None else label, fontsize=7)
        ax.set_xticks(range(m.shape[0]))
        ax.set_yticks(range(m.shape[0]))
        ax.tick_params(labelsize=5)
        ax.set_xlabel("head", fontsize=6)
        ax.set_ylabel("head", fontsize=6)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02, label="mean column cosine")
    fig.suptitle(f"{title}: head-to-head attention similarity within each layer", fontsize=9)
    return _save(fig, path)


def plot_nonlocality(rec: dict, title: str, path: Path) -> Path | None:
    """Nonlocality per layer (dots: heads, line: mean); per-head gates (gated mixers such as
    ConViT's) as a layer x head heatmap, labelled with the gated layers' mixer names."""
    nl = rec["nonlocality"]
    if not nl:
        return None
    plt = _plt()
    gates = {lab: v for lab, v in rec["gpsa_gates"].items() if "gate" in v}
    gated = "/".join(sorted({layer["mixer"] for layer in rec["layers"] if layer["label"] in gates}))
    ncol = 2 if gates else 1
    fig, axes = plt.subplots(1, ncol, figsize=(5.6 * ncol, 4), squeeze=False, layout="constrained")
    ax = axes[0, 0]
    labels = list(nl)
    for i, lab in enumerate(labels):
        ph = nl[lab]["per_head"]
        ax.scatter([i] * len(ph), ph, s=14, alpha=0.7, color="tab:blue", zorder=3,
                   label="head" if i == 0 else None)
    ax.plot(range(len(labels)), [nl[lab]["mean"] for lab in labels], color="tab:red", marker="o", ms=4,
            label="layer mean")
    _ticks(ax, labels, axis="x")
    ax.set_xlabel("attention layer")
    ax.set_ylabel("mean attention distance (patches)")
    ax.set_title("nonlocality (ConViT), on each block's real input", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if gates:
        ax = axes[0, 1]
        g = np.array([v["gate"] for v in gates.values()], dtype=float)  # (layers, heads)
        im = ax.imshow(g.T, cmap="coolwarm", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(gates)))
        ax.set_xticklabels(list(gates), fontsize=7)
        ax.set_yticks(range(g.shape[1]))
        ax.set_xlabel(f"{gated} layer")
        ax.set_ylabel("head")
        for (i, j), v in np.ndenumerate(g):
            ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(f"{gated} gate per head: 1 positional, 0 content", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="gate")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_feature_similarity(rec: dict, title: str, path: Path) -> Path | None:
    """Block x block token-feature similarity, and adjacent/intra-token curves (over-smoothing)."""
    fs = rec["feature_similarity"]
    if not fs["layers"]:
        return None
    fig, a0, a1 = _matrix_and_curves(
        fs, xlabel="block q output", ylabel="block p output",
        title="token feature similarity across blocks\n(grey: different tokens or width)", cbar="mean token cosine")
    x = np.arange(len(fs["layers"]))
    adj = [np.nan] + [np.nan if v is None else v for v in fs["adjacent"]]
    a1.plot(x, adj, marker="o", ms=3, label="with previous block (same token)")
    a1.plot(x, [np.nan if v is None else v for v in fs["intra_token"]], marker="s", ms=3,
            label="between tokens of one block (over-smoothing)")
    _ticks(a1, fs["layers"], axis="x")
    a1.set_xlabel("block")
    a1.set_ylabel("mean cosine similarity")
    a1.set_ylim(min(0.0, np.nanmin(adj + [1.0])) - 0.05, 1.05)
    a1.grid(alpha=0.3)
    a1.legend(fontsize=7)
    a1.set_title("saturation (LaViT) and over-smoothing", fontsize=9)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_diagonality(rec: dict, title: str, path: Path) -> Path | None:
    """LaViT's monitors per less-attention-family layer: asymmetry and diagonal mass."""
    dp = rec["diagonality"]
    if not dp:
        return None
    plt = _plt()
    labels = list(dp)
    tokens = {l["label"]: l["tokens"] for l in rec["layers"]}
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(labels) + 2), 3.8))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [dp[l]["asymmetry"] for l in labels], 0.4, label="asymmetry mean|P - P^T|")
    ax.bar(x + 0.2, [dp[l]["diag_mass"] for l in labels], 0.4, label="diagonal mass mean P_ii")
    ax.scatter(x + 0.2, [1.0 / tokens[l] for l in labels], marker="_", s=200, color="k",
               label="uniform 1/N", zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{l}\n({dp[l]['mode']})" for l in labels], fontsize=7)
    ax.set_xlabel("less-attention-family layer (va: vanilla, la: less attention)")
    ax.set_ylabel("value")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"{title}: diagonality-preserving monitors (LaViT)", fontsize=9)
    return _save(fig, path)


def plot_attention_pictures(pictures: dict, images, title: str, path: Path, labels: dict | None = None) -> Path | None:
    """Rows: images; columns: the input, then each attention layer's head-averaged map of one
    query patch (marked with a box) over the image; each map is scaled to its own maximum."""
    if not pictures:
        return None
    import torch
    import torch.nn.functional as F
    plt = _plt()
    names = list(pictures)
    n_img = min(len(images), next(iter(pictures.values()))["maps"].shape[0])
    cols = len(names) + 1
    fig, axes = plt.subplots(n_img, cols, figsize=(1.35 * cols + 0.8, 1.4 * n_img + 0.5), squeeze=False)
    h, w = images.shape[1:3]
    im = None
    for r in range(n_img):
        axes[r, 0].imshow(images[r].numpy())
        axes[r, 0].set_ylabel(f"image {r}", fontsize=7)
        if r == 0:
            axes[r, 0].set_title("input", fontsize=7)
        for c, n in enumerate(names, start=1):
            p = pictures[n]
            m = p["maps"][r].float()
            m = m / m.abs().max().clamp_min(1e-12)
            up = F.interpolate(m[None, None], size=(h, w), mode="nearest")[0, 0].numpy()
            ax = axes[r, c]
            ax.imshow(images[r].numpy().mean(-1), cmap="gray")
            im = ax.imshow(up, cmap="inferno", alpha=0.6, vmin=0, vmax=1)
            gh, gw = p["grid"]
            qr, qc = p["query"]
            ph, pw = h / gh, w / gw
            ax.add_patch(plt.Rectangle((qc * pw - 0.5, qr * ph - 0.5), pw, ph, fill=False, ec="cyan", lw=1))
            if r == 0:
                ax.set_title((labels or {}).get(n, n), fontsize=7)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01,
                 label="attention of the query patch (cyan), per-map max = 1")
    fig.suptitle(f"{title}: head-averaged attention of one query patch per layer", fontsize=9)
    return _save(fig, path)
