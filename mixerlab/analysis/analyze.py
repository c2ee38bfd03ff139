"""Run a model over images and turn its attention maps and features into JSON records.

Papers: DeepViT (arXiv 2103.11886) for cross-layer / head attention similarity and "similar
blocks"; ConViT (arXiv 2103.10697) for nonlocality and the GPSA gates; LaViT (arXiv 2406.00427)
for token-feature saturation and the diagonality-preserving monitors. Formulas: ``metrics.py``.

How the inputs are captured:

* Attention maps come from ``mixerlab.attention_maps`` (explicit paths, the map each layer used:
  after GPSA gating, re-attention head mixing or LaViT's transforms), per batch, reduced to running
  sums at once, so memory stays at one batch of maps.
* What is reported per layer besides the maps comes from the mixer itself: ``describe()`` (heads,
  mode, spatial reduction, ... copied into the layer record), ``analysis_summary()`` (per-head gates,
  e.g. ConViT's) and ``monitor_diagonality`` (LaViT's diagonality monitors on that layer's map).
* Every mixer is hooked with a forward *pre*-hook that reads its real input ``norm1(x)`` and the
  ``TokenContext`` of that moment: the patch grid and whether the class token is in the sequence
  (ConViT inserts it only before block ``cls_token_at``). Nonlocality therefore uses each block's
  real input (not the patch embeddings for every block, as ConViT's logging did: convit#23).
* Token features are each block's output, grid tokens only (prefix tokens dropped), so ConViT's
  blocks before and after the class token joins are comparable.

Records are plain dicts of numbers, lists and strings (``json.dumps``-able; NaN becomes None).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from ..mixers.base import AttentionMixer, TokenMixer, attention_maps
from . import metrics as M

SIMILAR_THRESHOLD = 0.9


def layer_label(name: str) -> str:
    """'blocks.3.token_mixer' -> 'b3'; 'stages.2.blocks.1.token_mixer' -> 's2.b1'."""
    parts = name.replace(".token_mixer", "").split(".")
    out = []
    for i in range(0, len(parts) - 1, 2):
        out.append({"blocks": "b", "stages": "s"}.get(parts[i], parts[i]) + parts[i + 1])
    return ".".join(out) or name


def _clean(v):
    """NaN/inf -> None, tensors -> lists, recursively (JSON-safe)."""
    if isinstance(v, torch.Tensor):
        v = v.tolist()
    if isinstance(v, float):
        return None if not math.isfinite(v) else round(v, 6)
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class _Capture:
    """Pre-hooks on mixers (input + context) and hooks on blocks (output tokens)."""

    def __init__(self, model: nn.Module):
        self.mixers = [(n, m) for n, m in model.named_modules() if isinstance(m, TokenMixer)]
        self.meta: "OrderedDict[str, dict]" = OrderedDict()  # mixer name -> grid, prefix, tokens
        self.features: "OrderedDict[str, torch.Tensor]" = OrderedDict()  # block name -> (B, N, C)
        self.handles = []
        for name, mixer in self.mixers:
            self.handles.append(mixer.register_forward_pre_hook(self._pre(name)))
            block = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else None
            if block is not None:
                self.handles.append(block.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(mod, args):
            x, ctx = args[0], args[1]
            self.meta[name] = dict(grid=tuple(ctx.grid), num_prefix=int(ctx.num_prefix_tokens),
                                   tokens=int(x.shape[1]), dim=int(x.shape[2]))
        return hook

    def _post(self, name):
        def hook(mod, args, out):
            p = self.meta[name]["num_prefix"]
            self.features[name] = out[:, p:].detach()  # grid tokens of the block output
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _unit_columns(a: torch.Tensor) -> torch.Tensor:
    a = a.float()
    return a / a.norm(dim=-2, keepdim=True).clamp_min(M.EPS)


def _unit_tokens(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(M.EPS)


@torch.no_grad()
def collect(model: nn.Module, images: torch.Tensor, *, batch_size: int = 16, query: tuple[float, float] = (0.5, 0.5),
            num_pictures: int = 4) -> dict:
    """Accumulate every metric over ``images`` (N, C, H, W) in batches; returns raw sums/means.

    Args:
        query: the query patch of the pictures, as a fraction of the grid (row, col): (0.5, 0.5) is
            the centre patch; it maps to each layer's own grid.
        num_pictures: images whose per-layer query-row maps are kept for plotting.
    """
    model.eval()
    dev = next(model.parameters()).device
    cap = _Capture(model)
    att_names = [n for n, m in cap.mixers if isinstance(m, AttentionMixer)]
    feat_names = [n for n, _ in cap.mixers if n.rsplit(".", 1)[0] != n]
    sums: dict = dict(pair={}, head={}, nonloc={}, entropy={}, dp={}, fpair={}, intra={})
    pictures: dict = {}
    total = 0
    try:
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(dev)
            b = x.shape[0]
            with attention_maps(model) as rec:
                model(x)
            maps = {n: rec.maps[n] for n in att_names if n in rec.maps}
            units = {n: _unit_columns(a) for n, a in maps.items()}
            names = list(maps)
            for i, p in enumerate(names):
                for q in names[i:]:
                    if units[p].shape == units[q].shape:
                        s = (units[p] * units[q]).sum(-2).mean().item()
                        sums["pair"][(p, q)] = sums["pair"].get((p, q), 0.0) + s * b
                meta = cap.meta[p]
                a = maps[p]
                sums["head"][p] = sums["head"].get(p, 0) + M.head_similarity(a) * b
                sums["nonloc"][p] = sums["nonloc"].get(p, 0) + M.nonlocality(a, meta["grid"], meta["num_prefix"]) * b
                sums["entropy"][p] = sums["entropy"].get(p, 0) + M.entropy(a) * b
                mod = model.get_submodule(p)
                if mod.monitor_diagonality:
                    t = M.diagonality_terms(mod.diagonality_map(a))
                    acc = sums["dp"].setdefault(p, {k: 0.0 for k in t})
                    for k, v in t.items():
                        acc[k] += v * b
                if start == 0:
                    pictures[p] = _query_rows(a[:num_pictures], meta, query)
            feats = {n: _unit_tokens(cap.features[n]) for n in feat_names if n in cap.features}
            fn = list(feats)
            for i, p in enumerate(fn):
                for q in fn[i:]:
                    if feats[p].shape == feats[q].shape:
                        s = (feats[p] * feats[q]).sum(-1).mean().item()
                        sums["fpair"][(p, q)] = sums["fpair"].get((p, q), 0.0) + s * b
                sums["intra"][p] = sums["intra"].get(p, 0.0) + M.intra_token_similarity(cap.features[p]) * b
            total += b
            cap.features.clear()
    finally:
        cap.close()
    avg = lambda d: {k: (v / total if not isinstance(v, dict) else {kk: vv / total for kk, vv in v.items()})  # noqa: E731
                     for k, v in d.items()}
    return dict(meta=dict(cap.meta), attention_layers=att_names, feature_layers=feat_names,
                mixers={n: type(m).mixer_name for n, m in cap.mixers}, num_images=total,
                pair=avg(sums["pair"]), head=avg(sums["head"]), nonloc=avg(sums["nonloc"]),
                entropy=avg(sums["entropy"]), dp=avg(sums["dp"]), fpair=avg(sums["fpair"]),
                intra=avg(sums["intra"]), pictures=pictures)


def _query_rows(a: torch.Tensor, meta: dict, query: tuple[float, float]) -> dict:
    """Head-averaged attention of one query patch over the key grid, for the picture grid."""
    grid = meta["grid"]
    r = min(int(query[0] * grid[0]), grid[0] - 1)
    c = min(int(query[1] * grid[1]), grid[1] - 1)
    rows = M.grid_part(a, meta["num_prefix"], grid)  # (b, H, N, Nk): grid queries and keys
    row = rows[:, :, r * grid[1] + c].float().mean(dim=1)  # (b, Nk), heads averaged
    kg = M.key_grid(row.shape[-1], grid)
    return dict(maps=row.reshape(-1, *kg).cpu(), query=(r, c), grid=grid, key_grid=kg)


def similarity_records(names: list[str], pair: dict, *, k: int, threshold: float) -> dict:
    """The layer x layer matrix (None where not comparable), next-k curves and similar blocks."""
    n = len(names)
    mat = [[None] * n for _ in range(n)]
    for (p, q), v in pair.items():
        i, j = names.index(p), names.index(q)
        mat[i][j] = mat[j][i] = v
    next_k = {names[i]: [mat[i][i + d] if i + d < n else None for d in range(1, k + 1)] for i in range(n)}
    adjacent = [mat[i - 1][i] for i in range(1, n)]
    similar = [names[i] for i in range(1, n) if mat[i - 1][i] is not None and mat[i - 1][i] > threshold]
    return dict(layers=[layer_label(x) for x in names], names=names, matrix=mat, next_k=next_k,
                adjacent=adjacent, threshold=threshold, similar_blocks=len(similar),
                similar_block_names=[layer_label(x) for x in similar],
                similar_ratio=len(similar) / n if n else None)


def analyze_model(model: nn.Module, images: torch.Tensor, *, batch_size: int = 16, k: int = 3,
                  threshold: float = SIMILAR_THRESHOLD, query: tuple[float, float] = (0.5, 0.5),
                  num_pictures: int = 4) -> tuple[dict, dict]:
    """All diagnostics of ``model`` on ``images``.

    Args:
        model: a mixerlab model (any mixer; attention metrics are empty without attention layers).
        images: normalised inputs (N, C, H, W).
        batch_size: images per forward.
        k: the similarity of each layer with its next 1..k layers is reported (DeepViT's curves).
        threshold: "similar block" threshold on the adjacent-layer similarity (DeepViT: 0.9).
        query: picture query patch as a grid fraction (row, col).
        num_pictures: images kept for the attention-map pictures.

    Returns:
        (records, pictures): JSON-able records, and the picture data (tensors) for ``plots``.
    """
    raw = collect(model, images, batch_size=batch_size, query=query, num_pictures=num_pictures)
    att, meta = raw["attention_layers"], raw["meta"]
    layers = []
    for n in att:
        desc = model.get_submodule(n).describe()
        m = meta.get(n, {})
        rec = dict(name=n, label=layer_label(n), mixer=raw["mixers"][n], heads=desc.get("heads"),
                   tokens=m.get("tokens"), grid=list(m.get("grid", ())), num_prefix=m.get("num_prefix"))
        rec.update({k: v for k, v in desc.items() if k not in rec})  # mode, sr_ratio, ...
        layers.append(rec)

    sim = similarity_records(att, raw["pair"], k=k, threshold=threshold)
    heads = {}
    for n in att:
        hm = raw["head"][n]
        heads[layer_label(n)] = dict(matrix=hm, mean_off_diagonal=M.mean_off_diagonal(hm))
    nonloc = {}
    for n in att:
        v = raw["nonloc"][n]
        nonloc[layer_label(n)] = dict(per_head=v, mean=v.mean().item(), entropy_per_head=raw["entropy"][n])
    gates = {}  # layers whose mixer reports per-head gates (ConViT's GPSA)
    for n in att:
        summary = model.get_submodule(n).analysis_summary()
        if "gate" in summary:
            gates[layer_label(n)] = summary
    dp = {layer_label(n): dict(v, mode=model.get_submodule(n).describe().get("mode"))
          for n, v in raw["dp"].items()}

    fnames = raw["feature_layers"]
    fmat = [[None] * len(fnames) for _ in fnames]
    for (p, q), v in raw["fpair"].items():
        i, j = fnames.index(p), fnames.index(q)
        fmat[i][j] = fmat[j][i] = v
    features = dict(layers=[layer_label(x) for x in fnames],
                    matrix=fmat,
                    adjacent=[fmat[i - 1][i] for i in range(1, len(fnames))],
                    intra_token=[raw["intra"][x] for x in fnames])
    records = dict(
        model=getattr(model, "zoo_name", type(model).__name__),
        num_images=raw["num_images"], input_size=list(images.shape[1:]),
        layers=layers,
        attention_similarity=sim,
        head_similarity=heads,
        nonlocality=nonloc,
        gpsa_gates=gates,  # key kept for the readers (compare/report.py); holds any gated mixer
        diagonality=dp,
        feature_similarity=features,
        definitions=dict(
            attention_similarity="DeepViT: cosine of attention columns A[h,:,t], mean over heads, tokens, "
                                 "images; only between layers with the same map shape (heads, tokens)",
            similar_blocks=f"layers whose similarity with the previous attention layer exceeds {threshold}",
            nonlocality="ConViT: sum_ij A_ij ||delta_ij|| / N per head on each block's real input; prefix "
                        "tokens excluded from both axes and rows renormalised over patch keys; weights |A|",
            gates="ConViT: sigmoid(lambda) per head (1 = positional, 0 = content); centre distance from "
                  "pos_proj (span = -1/w_d2, delta = w_xy * span / 2)",
            feature_similarity="cosine of the same grid token's features in two block outputs (same "
                               "token count and width), mean over tokens and images; intra_token: mean "
                               "pairwise cosine of distinct grid tokens within a block output",
            diagonality="LaViT monitors on each less-attention layer's softmax map P: asymmetry = mean "
                        "|P - P^T|, diag_mass = mean P_ii, dp_diag = mean_i sum_j max(0, P_ij - P_ii)"),
    )
    return _clean(records), raw["pictures"]
