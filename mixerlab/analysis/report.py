"""Tie the records, the PNGs and a short Markdown summary together in one folder:

    OUT/analysis.json        every record (analyze.analyze_model), plus how it was produced
    OUT/*.png                the figures of plots.py that apply to the model
    OUT/summary.md           headline numbers and links to the figures
"""
from __future__ import annotations

import json
from pathlib import Path

from ..engine.checkpoint import atomic_write_text
from . import plots
from .analyze import layer_label


def read_cached_analysis(path: str | Path, log=None) -> dict | None:
    """The records of a cached analysis (``analysis.json``, or ``analysis-<n>.json`` in a run
    folder), or None -- after logging the file's name and what is wrong -- when it cannot be read
    (torn write, disk error, not an analysis): the caller computes it again (and should write it
    with :func:`~mixerlab.engine.checkpoint.atomic_write_text`)."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
        if isinstance(rec, dict) and "diagonality" in rec and "layers" in rec:
            return rec
        problem = "not an analysis record"
    except (OSError, ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        problem = f"{type(e).__name__}: {e}"
    if log is not None:
        log(f"cached analysis {path} is unreadable ({problem}); computing it again")
    return None


def _fmt(v, nd=3) -> str:
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def summary_markdown(rec: dict, figures: dict[str, str]) -> str:
    """A short Markdown page: provenance, headline metrics, a per-layer table, the figures."""
    sim, nl, fs = rec["attention_similarity"], rec["nonlocality"], rec["feature_similarity"]
    src = rec.get("source", {})
    lines = [f"# Analysis of `{rec['model']}`", "",
             f"- weights: {src.get('weights', '?')}; images: {rec['num_images']} from "
             f"{src.get('data', '?')} (input {'x'.join(map(str, rec['input_size']))})",
             f"- command: `{src.get('command', '')}`" if src.get("command") else "",
             f"- attention layers: {len(rec['layers'])}; similar blocks (adjacent similarity > "
             f"{sim['threshold']}): **{sim['similar_blocks']}**"
             + (f" ({', '.join(sim['similar_block_names'])})" if sim["similar_block_names"] else ""),
             ]
    adj = [v for v in sim["adjacent"] if v is not None]
    if adj:
        lines.append(f"- adjacent-layer attention similarity: mean {sum(adj) / len(adj):.3f}, "
                     f"min {min(adj):.3f}, max {max(adj):.3f}")
    fadj = [v for v in fs["adjacent"] if v is not None]
    if fadj:
        lines.append(f"- adjacent-block token-feature similarity: mean {sum(fadj) / len(fadj):.3f}; "
                     f"intra-token similarity of the last block: {_fmt(fs['intra_token'][-1])}")
    lines = lines[:2] + [line for line in lines[2:] if line]
    if rec["layers"]:
        lines += ["", "| layer | mixer | heads | tokens | grid | nonlocality (mean) | entropy (mean) | "
                  "head sim. (off-diag) | sim. to next | gates |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for i, layer in enumerate(rec["layers"]):
            lab = layer["label"]
            nxt = sim["next_k"][layer["name"]][0] if sim["next_k"][layer["name"]] else None
            ent = nl[lab]["entropy_per_head"]
            g = rec["gpsa_gates"].get(lab)
            mixer = layer["mixer"] + (f" ({layer['mode']})" if layer.get("mode") else "")
            lines.append(
                f"| {lab} | {mixer} | {layer['heads']} | {layer['tokens']} | "
                f"{'x'.join(map(str, layer['grid']))} | {_fmt(nl[lab]['mean'], 2)} | "
                f"{_fmt(sum(ent) / len(ent), 2)} | {_fmt(rec['head_similarity'][lab]['mean_off_diagonal'])} | "
                f"{_fmt(nxt)} | {' '.join(f'{v:.2f}' for v in g['gate']) if g else '-'} |")
    if rec["diagonality"]:
        lines += ["", "| LaViT layer | mode | asymmetry | diagonal mass | dp_diag |", "|---|---|---|---|---|"]
        for lab, d in rec["diagonality"].items():
            lines.append(f"| {lab} | {d['mode']} | {_fmt(d['asymmetry'], 4)} | {_fmt(d['diag_mass'], 4)} | "
                         f"{_fmt(d['dp_diag'], 4)} |")
    lines += ["", "Definitions: see `analysis.json` (`definitions`) and `mixerlab/analysis/metrics.py`.", ""]
    for title, f in figures.items():
        lines += [f"## {title}", "", f"![{title}]({f})", ""]
    return "\n".join(lines)


def write_report(records: dict, pictures: dict, show_images, out_dir, *, plots_on: bool = True) -> dict[str, Path]:
    """Write ``analysis.json``, the figures and ``summary.md`` into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "analysis.json"}
    atomic_write_text(paths["json"], json.dumps(records, indent=1))  # a killed writer leaves no torn cache
    figures: dict[str, str] = {}
    if plots_on:
        title = records["model"]
        labels = {n: layer_label(n) for n in pictures}
        todo = [("Attention-map pictures", "attention_maps.png",
                 lambda p: plots.plot_attention_pictures(pictures, show_images, title, p, labels)),
                ("Cross-layer attention similarity", "attention_similarity.png",
                 lambda p: plots.plot_attention_similarity(records, title, p)),
                ("Head similarity", "head_similarity.png", lambda p: plots.plot_head_similarity(records, title, p)),
                ("Nonlocality and gates", "nonlocality.png", lambda p: plots.plot_nonlocality(records, title, p)),
                ("Token-feature similarity", "feature_similarity.png",
                 lambda p: plots.plot_feature_similarity(records, title, p)),
                ("Diagonality (LaViT)", "diagonality.png", lambda p: plots.plot_diagonality(records, title, p))]
        for heading, fname, fn in todo:
            p = fn(out / fname)
            if p is not None:
                figures[heading] = fname
                paths[fname] = p
    paths["summary"] = out / "summary.md"
    paths["summary"].write_text(summary_markdown(records, figures))
    return paths
