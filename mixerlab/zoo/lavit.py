"""LaViT (Zhang et al., "You Only Need Less Attention at Each Stage in Vision Transformers",
CVPR 2024, arXiv 2406.00427). No official code or configuration tables exist; the reported numbers
(LaViT-T/S/B: 10.9M/22.4M/39.6M params, 1.6/3.3/6.1 GFLOPs, 79.2/82.6/83.1 top-1) come from a
secondary source (a list of reported numbers).

How the configurations were re-derived (all mixerlab PROPOSALS where the paper is silent):
* Skeleton: PVT-v1-like. Stem conv 4x4/4 + LayerNorm; between stages conv 2x2/2 + LayerNorm;
  learned position embedding per stage (trunc-normal 0.02, interpolated for other sizes); final
  LayerNorm, global average, Linear; no class token. Keys and values on the PVT-reduced grid in
  every layer (ratios 8/4/2/1: a 7 x 7 key grid in every stage at 224 px), so Theta is 49 x 49
  and the maps N x 49 (see ``mixers/less_attention.py``).
* Layout, "less attention at each stage": one vanilla-attention layer opens stages 1-3, every
  other layer is a less-attention layer; stage 4 is less attention only ("some stages consist of
  less-attention layers only", the authors' slides), starting from stage 3's map downsampled on
  the query axis and mixed across heads; the first VA layer of stages 2-3 receives the previous
  stage's map through the attention residual (at every downsampling).
* Widths, depths, heads and MLP ratio 4 were then searched with the cost formulas so that params
  and MACs (mixerlab's counter, 224 px) are each within 5 % of the reported pair and the model
  has >= 15 % fewer MACs than its vanilla twin: T (1, 2, 11, 2) x 48/96/240/384 -> 10.52M,
  1.564 G (twin 15.59M, 1.984 G); S (1, 2, 15, 2) x 64/128/320/512 -> 22.06M, 3.419 G (twin 33.95M,
  4.434 G); B (1, 3, 16, 2) x 96/192/384/768 -> 38.32M, 5.939 G (twin 58.72M, 7.683 G), with Psi
  Kronecker-factored in stages 2-3 and dense in stage 4 (the cost model of
  ``mixers/less_attention.py``, proposal 5). Stage 1 has
  one layer: at 56 x 56 tokens nothing in it saves much (its MLP dominates).
* Alternatives kept as options: ``la_proj=True`` (an output projection in LA layers),
  ``psi="dense"`` / ``"kron"`` (instead of the per-layer cost-model choice), ``la_source=
  "post_softmax"`` (the literal reading of Fig. 2), any ``layout`` (e.g. the earlier
  ``("AA", "AA", "VL", "VL")``).
* ``*_vanilla``: the same skeleton with every layer plain PVT attention, to measure the saving.
* ``lavit_micro`` (32 px): stem 2x2/2, widths 32/64/96/160, heads 1/2/3/5, MLP ratio 4, depths
  (1, 2, 2, 2), ratios 4/2/1/1 (key grids 4/4/4/2 per side), the same layout as T/S/B.
"""
from __future__ import annotations

from ..models.config import BlockConfig, HierarchicalConfig, StageConfig
from .registry import ZooEntry, register_zoo

PAPER = "You Only Need Less Attention at Each Stage in Vision Transformers (arXiv 2406.00427)"


LAYOUT_LETTERS = {"A": "plain attention (with the stage's spatial reduction)",
                  "V": "vanilla-attention layer (computes the map that later LA layers reuse)",
                  "L": "less-attention layer (transforms the last computed map; first in a stage: "
                       "inherits the previous stage's)"}


def layout_from_depths(depths, n_va) -> tuple[str, ...]:
    """``n_va[i]`` None -> ``"A" * depths[i]``; 0 -> ``"L" * depths[i]`` (a less-attention-only
    stage); else ``"V" * n_va[i] + "L" * (depths[i] - n_va[i])``."""
    out = []
    for i, (n, va) in enumerate(zip(depths, n_va)):
        if va is not None and not 0 <= va <= n:
            raise ValueError(f"stage {i}: n_va={va} must be in 0..{n}")
        out.append("A" * n if va is None else "V" * va + "L" * (n - va))
    return tuple(out)


def vanilla_layout(layout) -> tuple[str, ...]:
    """The all-vanilla twin of a layout: every layer plain attention (same depths)."""
    return tuple("A" * len(s) for s in layout)


def _conv_grid(grid, conv) -> tuple[int, int]:
    k, s, p = conv
    return tuple((g + 2 * p - k) // s + 1 for g in grid)


def lavit(depths=(2, 2, 2, 2), dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
          mlp_ratios=(8, 4, 4, 4), n_va=(2, 1, 1, 0), sr_ratios=(8, 4, 2, 1), *,
          layout=None, la_source: str = "logits", psi: str = "auto", la_proj: bool = False,
          img_size=224, stem=(4, 4, 0), downsample=(2, 2, 0), **kw) -> HierarchicalConfig:
    """A LaViT skeleton.

    Args:
        depths, n_va: blocks per stage and, per stage, the number of vanilla-attention layers
            before its less-attention layers (None: a plain-attention stage; 0: less attention
            only, inheriting the previous stage's map).
        sr_ratios: per stage, the spatial reduction of keys and values (every layer kind).
        layout: per stage a string of layer letters, ``A`` (plain attention with the stage's
            ``sr_ratios``), ``V`` (vanilla attention whose map LA layers reuse) and ``L``
            (less attention); e.g. ``("VV", "VL", "VL", "LL")``. When given it defines the
            depths and replaces ``depths`` / ``n_va``. An ``L`` reuses the map of the layer
            before it; an ``L`` that opens a stage inherits the previous stage's map (which must
            have one). The first ``V`` of a stage that follows a V/L stage receives that stage's
            map through the attention residual.
        la_source, psi, la_proj: the less-attention options (``la_proj`` = its ``out_proj``).
        img_size: the input size; it fixes every stage's grid, which the reduction ratios of
            the V/L stages must divide.

    Raises:
        ValueError: naming the stage, for a layout letter that is not A/V/L, an L with no map
            to reuse or inherit, or a grid that a V/L stage's reduction ratio does not divide.
    """
    if layout is None:
        layout = layout_from_depths(depths, n_va)
    if isinstance(layout, str):
        raise ValueError(f"layout is one string per stage, e.g. ('VV', 'VL', 'VL', 'LL'); got {layout!r}")
    layout = tuple(layout)
    per_stage = {"layout": len(layout), "dims": len(dims), "num_heads": len(num_heads),
                 "mlp_ratios": len(mlp_ratios), "sr_ratios": len(sr_ratios)}
    if len(set(per_stage.values())) != 1:
        raise ValueError(f"per-stage arguments must have one entry per stage, got lengths {per_stage}")
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    grid = _conv_grid(size, stem)
    stages, prev = [], None  # prev: (letters, heads, grid, sr ratio) of the previous stage
    for i, (letters, d, h, r) in enumerate(zip(layout, dims, num_heads, mlp_ratios)):
        if i > 0:
            grid = _conv_grid(grid, downsample)
        bad = sorted(set(letters) - set(LAYOUT_LETTERS))
        if not letters or bad:
            raise ValueError(f"layout stage {i} = {letters!r}: use one or more of the letters "
                             f"{''.join(LAYOUT_LETTERS)} ({'; '.join(f'{k}: {v}' for k, v in LAYOUT_LETTERS.items())})")
        sr = sr_ratios[i]
        prev_has_map = prev is not None and ("V" in prev[0] or "L" in prev[0])
        if "L" in letters:
            j = letters.index("L")
            if j > 0 and "V" not in letters[:j]:
                raise ValueError(f"layout stage {i} = {letters!r}: its first L layer follows plain "
                                 "attention (A), which computes no map to reuse; put a V before it")
            if j == 0 and not prev_has_map:
                where = ("it is the first stage" if prev is None else
                         f"stage {i - 1} = {prev[0]!r} computes no map")
                raise ValueError(f"layout stage {i} = {letters!r}: its first L layer has no map to "
                                 f"inherit ({where}); put a V before it")
        if ("V" in letters or "L" in letters) and (min(grid) < 1 or grid[0] % sr or grid[1] % sr):
            raise ValueError(f"stage {i} ({letters!r}): its {grid[0]}x{grid[1]} token grid at "
                             f"img_size {img_size} is not divisible by its reduction ratio {sr}; "
                             "use an input size the reduction ratios divide (224 px: 56/28/14/7 "
                             "tokens per side)")
        carry = {}
        if prev_has_map:
            ph, pg, psr = prev[1], prev[2], prev[3]
            f = downsample[1]
            if (tuple(pg) != (f * grid[0], f * grid[1])
                    or (pg[0] // psr) % (grid[0] // sr) or (pg[1] // psr) % (grid[1] // sr)):
                raise ValueError(f"stage {i} ({letters!r}): the {pg[0]}x{pg[1]} map of stage {i - 1} "
                                 f"(keys {pg[0] // psr}x{pg[1] // psr}) cannot be carried to its "
                                 f"{grid[0]}x{grid[1]} grid (keys {grid[0] // sr}x{grid[1] // sr}): "
                                 f"the query grid must shrink exactly {f}x and the key grid by an "
                                 f"integer factor; use an input size the downsampling divides")
            carry = {"prev_heads": ph, "prev_grid": tuple(pg), "prev_sr_ratio": psr}
        common = {"num_heads": h, "la_source": la_source, "sr_ratio": sr, "grid": tuple(grid)}
        mixers, first_v = [], True
        for j, c in enumerate(letters):
            if c == "A":
                mixers.append(("attention", {"num_heads": h, "sr_ratio": sr}))
            elif c == "V":
                res = {"attn_residual": True, **carry} if (first_v and carry and letters[0] != "L") else {}
                mixers.append(("less_attention", {**common, "mode": "va", **res}))
                first_v = False
            else:
                inh = {"inherit": True, **carry} if j == 0 else {}
                mixers.append(("less_attention", {**common, "mode": "la", "psi": psi,
                                                  "out_proj": la_proj, **inh}))
        prev = (letters, h, grid, sr)
        stages.append(StageConfig(dim=d, mixers=tuple(mixers), mlp_ratio=r, pos_embed="trunc_normal"))
    return HierarchicalConfig(stages=tuple(stages), block=BlockConfig(norm="layernorm"),
                              stem=stem, downsample=downsample, embed_norm="layernorm",
                              head_norm="layernorm", img_size=img_size, **kw)


def _e(name, args, params, gflops, top1):
    return ZooEntry(name, "lavit", lavit, args, PAPER,
                    dict(params=params, top1=top1, gmacs=gflops, params_source="secondary source "
                         "(rounded); configuration re-derived", note="GFLOPs as reported (MACs)"),
                    param_tolerance=0.05)


def _twin(name, args, target):
    """The all-vanilla twin of ``name``: same skeleton, every layer plain (PVT) attention."""
    return ZooEntry(f"{name}_vanilla", "lavit", lavit, {**args, "n_va": (None,) * len(args["depths"])},
                    PAPER, dict(target_params=target, note=f"mixerlab: {name} with every layer vanilla "
                                "attention, to measure the saving; not in the paper"))


# Re-derived (see the module docstring): one VA layer opens stages 1-3, the rest are LA layers;
# stage 4 is less attention only.
_T = dict(depths=(1, 2, 11, 2), dims=(48, 96, 240, 384), num_heads=(1, 2, 4, 6), mlp_ratios=(4, 4, 4, 4),
          n_va=(1, 1, 1, 0), sr_ratios=(8, 4, 2, 1))
_S = dict(depths=(1, 2, 15, 2), dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(4, 4, 4, 4),
          n_va=(1, 1, 1, 0), sr_ratios=(8, 4, 2, 1))
_B = dict(depths=(1, 3, 16, 2), dims=(96, 192, 384, 768), num_heads=(1, 2, 6, 12), mlp_ratios=(4, 4, 4, 4),
          n_va=(1, 1, 1, 0), sr_ratios=(8, 4, 2, 1))

register_zoo([
    _e("lavit_tiny", _T, 10.9, 1.6, 79.2),
    _e("lavit_small", _S, 22.4, 3.3, 82.6),
    _e("lavit_base", _B, 39.6, 6.1, 83.1),
    _twin("lavit_tiny", _T, 15.59),
    _twin("lavit_small", _S, 33.95),
    _twin("lavit_base", _B, 58.72),
    # 32 px: stem 2/2 -> 16x16, then 8x8, 4x4, 2x2 (key grids 4x4, 4x4, 4x4, 2x2); less attention in
    # stages 2-3 after one VA layer, stage 4 less attention only; residual at every downsampling.
    ZooEntry("lavit_micro", "lavit", lavit,
             dict(depths=(1, 2, 2, 2), dims=(32, 64, 96, 160), num_heads=(1, 2, 3, 5),
                  mlp_ratios=(4, 4, 4, 4), n_va=(1, 1, 1, 0), sr_ratios=(4, 2, 1, 1),
                  stem=(2, 2, 0), img_size=32, num_classes=10), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant; not in the paper"), param_tolerance=0.15),
])
