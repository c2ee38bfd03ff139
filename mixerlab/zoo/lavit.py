"""LaViT (Zhang et al., "You Only Need Less Attention at Each Stage in Vision Transformers",
CVPR 2024, arXiv 2406.00427). No official code or configuration tables exist; the reported numbers
(LaViT-T/S/B: 10.9M/22.4M/39.6M params, 1.6/3.3/6.1 GFLOPs, 79.2/82.6/83.1 top-1) come from a
secondary source (a list of reported
numbers; the paper's tables give FLOPs and top-1 only against other models).

How the configurations were re-derived (all mixerlab PROPOSALS where the paper is silent):
* Skeleton: PVT-v1-like. Stem conv 4x4/4 + LayerNorm; between stages conv 2x2/2 + LayerNorm;
  learned position embedding per stage (trunc-normal 0.02, interpolated for other sizes);
  widths 64/128/320/512, heads 1/2/5/8, MLP ratios 8/8/4/4; final LayerNorm, global average,
  Linear; no class token.
* Stages 1-2: plain attention with PVT spatial reduction (ratios 8 and 4; 4 and 2 for LaViT-T):
  an N x N transform at stage-1/2 resolution would cost 9.8M/0.6M parameters per matrix.
* Stages 3-4: the first block is a vanilla-attention layer (L_VA = 1), the others are
  less-attention layers; stage 4's VA layer receives stage 3's attention through the attention
  residual. Full square attention there (no spatial reduction), as the DP loss needs.
* Depths (and, for T, the spatial-reduction ratios) were then chosen so that the parameter count
  lands within 1% of the reported one: T (2, 2, 2, 2) with SR 4/2 -> 10.97M; S (3, 4, 8, 3) ->
  22.55M; B (3, 5, 23, 3) -> 39.71M. The MACs then differ from the reported FLOPs;
  ``mixerlab list`` shows ours.
* ``lavit_micro`` (32 px): stem 2x2/2, widths 32/64/96/160, 32 channels per head, MLP ratio 4,
  depths (1, 2, 2, 2); stage 1 attention with SR 2; stages 2-4 one VA layer then LA layers, with
  the attention residual from stage 2 to 3 and 3 to 4.
"""
from __future__ import annotations

from ..models.config import BlockConfig, HierarchicalConfig, StageConfig
from .registry import ZooEntry, register_zoo

PAPER = "You Only Need Less Attention at Each Stage in Vision Transformers (arXiv 2406.00427)"


LAYOUT_LETTERS = {"A": "plain attention (with the stage's spatial reduction)",
                  "V": "vanilla-attention layer (computes the map that later LA layers reuse)",
                  "L": "less-attention layer (transforms the stage's last computed map)"}


def layout_from_depths(depths, n_va) -> tuple[str, ...]:
    """``n_va[i]`` None -> ``"A" * depths[i]``; else ``"V" * n_va[i] + "L" * (depths[i] - n_va[i])``."""
    out = []
    for i, (n, va) in enumerate(zip(depths, n_va)):
        if va is not None and not 1 <= va <= n:
            raise ValueError(f"stage {i}: n_va={va} must be in 1..{n}")
        out.append("A" * n if va is None else "V" * va + "L" * (n - va))
    return tuple(out)


def lavit(depths=(2, 2, 2, 2), dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8),
          mlp_ratios=(8, 8, 4, 4), n_va=(None, None, 1, 1), sr_ratios=(8, 4, 1, 1), *,
          layout=None, la_source: str = "logits", stem=(4, 4, 0), downsample=(2, 2, 0),
          **kw) -> HierarchicalConfig:
    """A LaViT skeleton.

    Args:
        depths, n_va: blocks per stage and, per stage, the number of vanilla-attention layers
            before its less-attention layers (None: a plain-attention stage).
        layout: per stage a string of layer letters, ``A`` (plain attention with the stage's
            ``sr_ratios``), ``V`` (vanilla attention whose map LA layers reuse) and ``L``
            (less attention); e.g. ``("AA", "AA", "VL", "VL")``. When given it defines the depths
            and replaces ``depths`` / ``n_va``. An ``L`` needs a ``V`` before it in its stage.
            The first ``V`` of a stage that follows a V/L stage receives that stage's map through
            the attention residual.
    """
    if layout is None:
        layout = layout_from_depths(depths, n_va)
    if isinstance(layout, str):
        raise ValueError(f"layout is one string per stage, e.g. ('AA', 'AA', 'VL', 'VL'); got {layout!r}")
    per_stage = {"layout": len(layout), "dims": len(dims), "num_heads": len(num_heads),
                 "mlp_ratios": len(mlp_ratios), "sr_ratios": len(sr_ratios)}
    if len(set(per_stage.values())) != 1:
        raise ValueError(f"per-stage arguments must have one entry per stage, got lengths {per_stage}")
    stages, prev_la = [], False
    for i, (letters, d, h, r) in enumerate(zip(layout, dims, num_heads, mlp_ratios)):
        bad = sorted(set(letters) - set(LAYOUT_LETTERS))
        if not letters or bad:
            raise ValueError(f"layout stage {i} = {letters!r}: use one or more of the letters "
                             f"{''.join(LAYOUT_LETTERS)} ({'; '.join(f'{k}: {v}' for k, v in LAYOUT_LETTERS.items())})")
        if "L" in letters and ("V" not in letters or letters.index("L") < letters.index("V")):
            raise ValueError(f"layout stage {i} = {letters!r}: an L layer reuses the map of an "
                             "earlier V layer of its stage; put a V before it")
        common = {"num_heads": h, "la_source": la_source}
        mixers, first_v = [], True
        for c in letters:
            if c == "A":
                mixers.append(("attention", {"num_heads": h, "sr_ratio": sr_ratios[i]}))
            elif c == "V":
                mixers.append(("less_attention", {**common, "mode": "va", "attn_residual": prev_la}
                               if first_v else {**common, "mode": "va"}))
                first_v = False
            else:
                mixers.append(("less_attention", {**common, "mode": "la"}))
        prev_la = "V" in letters
        stages.append(StageConfig(dim=d, mixers=tuple(mixers), mlp_ratio=r, pos_embed="trunc_normal"))
    return HierarchicalConfig(stages=tuple(stages), block=BlockConfig(norm="layernorm"),
                              stem=stem, downsample=downsample, embed_norm="layernorm",
                              head_norm="layernorm", **kw)


def _e(name, args, params, gflops, top1):
    return ZooEntry(name, "lavit", lavit, args, PAPER,
                    dict(params=params, top1=top1, gmacs=gflops, params_source="secondary source "
                         "(rounded); configuration re-derived", note="GFLOPs as reported (MACs)"))


register_zoo([
    _e("lavit_tiny", dict(depths=(2, 2, 2, 2), sr_ratios=(4, 2, 1, 1)), 10.9, 1.6, 79.2),
    _e("lavit_small", dict(depths=(3, 4, 8, 3)), 22.4, 3.3, 82.6),
    _e("lavit_base", dict(depths=(3, 5, 23, 3)), 39.6, 6.1, 83.1),
    # 32 px: stem 2/2 -> 16x16, then 8x8, 4x4, 2x2; LA in stages 2-4 with the attention residual.
    ZooEntry("lavit_micro", "lavit", lavit,
             dict(depths=(1, 2, 2, 2), dims=(32, 64, 96, 160), num_heads=(1, 2, 3, 5),
                  mlp_ratios=(4, 4, 4, 4), n_va=(None, 1, 1, 1), sr_ratios=(2, 1, 1, 1),
                  stem=(2, 2, 0), img_size=32, num_classes=10), PAPER,
             dict(target_params=1.0, note="mixerlab micro variant; not in the paper"), param_tolerance=0.15),
])
