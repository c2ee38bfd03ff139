"""The token-mixer contract shared by every mixer.

A mixer is ``Mixer(dim, *, ...)`` with keyword-only arguments (no ``**kwargs``: a misspelt keyword
raises ``TypeError``) and ``forward(x, ctx) -> y`` with ``x`` and ``y`` of shape (B, N, C).
Mixers hold no norm, residual, layer scale or drop path: the block owns those, so every mixer is
compared inside the same block.

``TokenContext`` travels through the blocks of one forward pass and carries what mixers need
besides the tokens: the patch grid, the number of prefix (class) tokens, per-forward state passed
between layers (LaViT's attention reuse) and auxiliary loss terms (LaViT's diagonality loss).

Attention-family mixers have two paths: a fused one (``F.scaled_dot_product_attention``) used when
the attention map is not needed, and an explicit one that materialises the map and sends it
through ``self.attn_probe``; the switch is ``fused_attn`` (see ``mixerlab.fast_paths``).
``attention_maps(model)`` forces the explicit path and records each layer's map (the map the layer
actually used: after gating, head mixing or transforms).

What a mixer knows about itself lives in its class, not in the benchmark or analysis code:
``cost()`` (analytic MACs of one forward), ``describe()`` (short facts for tables and records),
``analysis_summary()`` and ``monitor_diagonality`` (what the analysis reports besides the maps),
``examples`` (small instances for the contract tests).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from ..layers.fast_paths import fast_path_switch, fast_paths
from ..registry import Registry


@dataclass
class TokenContext:
    """What travels with the tokens through one forward pass.

    Attributes:
        grid: (H, W) of the patch tokens (raster order, after the prefix tokens).
        num_prefix_tokens: tokens before the grid (the class token), left alone by spatial mixers.
        state: cross-layer state of one forward (e.g. LaViT's carried attention logits).
        aux: auxiliary loss terms, name -> list of scalar tensors (one per layer).
    """

    grid: tuple[int, int] = (0, 0)  # set by the backbone before the first block
    num_prefix_tokens: int = 0
    state: dict = field(default_factory=dict)
    aux: dict = field(default_factory=dict)

    def add_aux(self, name: str, value: torch.Tensor) -> None:
        self.aux.setdefault(name, []).append(value)

    def aux_totals(self) -> dict[str, torch.Tensor]:
        """Each auxiliary term summed over the layers that reported it."""
        return {k: torch.stack(v).sum() for k, v in self.aux.items()}


class AttentionProbe(nn.Module):
    """Identity on an attention map; records it while a recorder is attached."""

    def __init__(self):
        super().__init__()
        self.recorder = None  # callable(map) or None

    def forward(self, attn: torch.Tensor) -> torch.Tensor:
        if self.recorder is not None:
            self.recorder(attn)
        return attn


@dataclass(frozen=True)
class MixerCost:
    """Arithmetic of one mixer forward, per image.

    Attributes:
        macs: multiply-accumulates of matmuls and convolutions (what
            ``torch.utils.flop_counter.FlopCounterMode`` counts, as FLOPs / 2).
        extra_flops: counted operations that are not MACs (pooling's additions); the counter
            does not see them.
    """

    macs: int = 0
    extra_flops: int = 0

    @property
    def flops(self) -> int:
        return 2 * self.macs + self.extra_flops

    def __add__(self, other: "MixerCost") -> "MixerCost":
        return MixerCost(self.macs + other.macs, self.extra_flops + other.extra_flops)


class NoCostFormula(NotImplementedError):
    """Raised by ``TokenMixer.cost`` for a mixer that defines no analytic cost."""


def attention_macs(n: int, c: int) -> int:
    """Multi-head self-attention on n tokens of width c: qkv 3nc^2 + q k^T n^2 c + A v n^2 c +
    proj nc^2 (independent of the number of heads)."""
    return 4 * n * c * c + 2 * n * n * c


class TokenMixer(nn.Module):
    """Base class of all token mixers.

    Class attributes (what the mixer needs; read by the model builder, never by the block):
        needs_num_tokens: the builder passes ``num_tokens=`` (the sequence length is fixed).
        fixed_num_tokens: the model cannot change its input size after construction.
        supports_prefix_tokens: the mixer accepts class tokens in the sequence.
        uses_context_state: the mixer reads ``ctx.state`` written by earlier layers.
        drop_kwarg: the keyword through which the builder passes the model's dropout rate.
        examples: keyword arguments (besides ``dim`` and ``num_tokens``) of small instances, for
            the contract tests; run in this order on one ``TokenContext``, so a later one may read
            state an earlier one wrote (LaViT: a ``va`` layer, then an ``la`` layer).
        cost_counter_comparable: ``cost(...).macs`` equals what ``FlopCounterMode`` counts for one
            forward with the fast paths off (eval, no autograd, no cached work), per image.
        monitor_diagonality: the analysis reports LaViT's diagonality monitors on this layer's map.
        fast_path_switches: kernel-choice attributes (see ``mixerlab.fast_paths``).
    """

    needs_num_tokens = False
    fixed_num_tokens = False
    supports_prefix_tokens = True
    uses_context_state = False  # reads state written by earlier layers (no recomputation)
    drop_kwarg: str | None = None  # keyword that receives the model's dropout rate
    examples: tuple[dict, ...] = ({},)
    cost_counter_comparable = True
    monitor_diagonality = False
    fast_path_switches: tuple[str, ...] = ()

    def cost(self, num_tokens: int, grid: tuple[int, int], *, dim: int, batch: int = 1) -> MixerCost:
        """Analytic cost of one forward, per image.

        Args:
            num_tokens: tokens in the sequence (prefix tokens included).
            grid: the (H, W) patch grid of the grid tokens.
            dim: the token width C.
            batch: images per forward (for work done once per forward, not per image).

        Raises:
            NoCostFormula: the mixer defines no formula (the base class); benchmarks then stop
                with this error rather than report a wrong 0.
        """
        raise NoCostFormula(f"token mixer {getattr(self, 'mixer_name', type(self).__name__)!r} has "
                            "no analytic cost formula: define its cost(num_tokens, grid, *, dim, batch)")

    def describe(self) -> dict:
        """Short facts about this layer (JSON-able; e.g. ``heads``, ``mode``, ``sr_ratio``) that
        tables and analysis records show next to the mixer's name. Options at their plain value
        are left out."""
        return {}

    def analysis_summary(self) -> dict[str, torch.Tensor]:
        """Per-head learned quantities worth reporting after training ({} if none). A gated
        mixer returns at least ``gate`` (H,) (1 = positional / prior, 0 = content)."""
        return {}

    def diagonality_map(self, attn: torch.Tensor) -> torch.Tensor:
        """The square map the diagonality monitors read from this layer's recorded map (the map
        itself by default; LaViT's reduced-key layers average query blocks)."""
        return attn

    def build_norm(self, dim: int, norm_layer):
        """The norm the block puts in front of this mixer (the block's own by default)."""
        return norm_layer(dim)

    def init_weights(self) -> None:
        """Mixer-specific initialisation, run after the model's generic init walk."""

    def check_tokens(self, x: torch.Tensor, ctx: TokenContext) -> None:
        if ctx.num_prefix_tokens and not self.supports_prefix_tokens:
            raise ValueError(
                f"{type(self).__name__} takes patch tokens only, but the sequence has "
                f"{ctx.num_prefix_tokens} prefix (class) token(s): insert the class token after it"
            )


class AttentionMixer(TokenMixer):
    """Base of attention-family mixers: the fused/explicit switch ``fused_attn`` and the probe."""

    drop_kwarg = "proj_drop"
    fast_path_switches = (fast_path_switch(
        "fused_attn", "attention family: fused attention (SDPA, factored forms); off: the explicit map"),)

    def __init__(self):
        super().__init__()
        self.fused_attn = True  # use the fused kernel where the map is not needed
        self.attn_probe = AttentionProbe()

    def describe(self) -> dict:
        return {"heads": self.num_heads}

    def value_projection(self) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(weight (C, C), bias or None) of the value projection when the layer's output is
        ``proj(A v)`` with the recorded map ``A`` over the full token sequence (what
        ``mean_attention`` adopts); None where that does not hold (e.g. reduced keys)."""
        return None

    def set_heads(self, dim: int, num_heads: int) -> None:
        """``num_heads``, ``head_dim`` and the 1/sqrt(head_dim) ``scale``; dim must divide evenly."""
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5


_MIXERS: Registry[type] = Registry("token mixer")


def register_mixer(name: str):
    def deco(cls):
        _MIXERS.add(name, cls)
        cls.mixer_name = name
        return cls
    return deco


def unregister_mixer(name: str) -> type:
    """Remove the mixer registered under ``name`` (e.g. a test's own mixer); returns its class."""
    return _MIXERS.remove(name)


def get_mixer(name: str) -> type:
    """The mixer class registered under ``name``; a ``ValueError`` lists the allowed names."""
    return _MIXERS.get(name)


def list_mixers() -> list[str]:
    return sorted(_MIXERS)


class AttentionRecord:
    """Maps recorded by ``attention_maps``: ``maps[layer_name]`` is (B, H, Nq, Nk)."""

    def __init__(self):
        self.maps: "OrderedDict[str, torch.Tensor]" = OrderedDict()

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.maps[name]

    def __len__(self) -> int:
        return len(self.maps)


@contextlib.contextmanager
def explicit_attention(model: nn.Module):
    """Force every attention-family mixer in ``model`` onto its explicit path (the map exists);
    the other fast paths stay as they are. Yields the attention-family mixers."""
    with fast_paths(model, False, kinds=("fused_attn",)):
        yield [m for m in model.modules() if isinstance(m, AttentionMixer)]


@contextlib.contextmanager
def attention_maps(model: nn.Module, layers=None, *, detach: bool = True, to_cpu: bool = False):
    """Record the attention map each attention-family layer used during forwards in the block.

    Args:
        model: any mixerlab model (or module containing mixers).
        layers: optional iterable of module names (as in ``model.named_modules()``) to record;
            the default records every attention-family mixer. Restricting it saves memory.
        detach: detach recorded maps from the graph.
        to_cpu: move maps to the CPU as they are recorded.

    Yields:
        An ``AttentionRecord``; after ``model(x)``, ``rec.maps`` maps layer names to (B, H, Nq, Nk)
        tensors, in forward order. A second forward overwrites the first one's maps.
    """
    wanted = None if layers is None else set(layers)
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, AttentionMixer)]
    if wanted is not None:
        unknown = wanted - {n for n, _ in named}
        if unknown:
            raise ValueError(f"not attention layers of this model: {sorted(unknown)}; "
                             f"attention layers: {[n for n, _ in named]}")
        named = [(n, m) for n, m in named if n in wanted]
    rec = AttentionRecord()

    def make(name):
        def record(attn):
            a = attn.detach() if detach else attn
            rec.maps[name] = a.cpu() if to_cpu else a
        return record

    with explicit_attention(model):
        for n, m in named:
            m.attn_probe.recorder = make(n)
        try:
            yield rec
        finally:
            for _, m in named:
                m.attn_probe.recorder = None


def split_prefix(x: torch.Tensor, ctx: TokenContext) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P + N, C) -> prefix (B, P, C), grid tokens (B, N, C)."""
    p = ctx.num_prefix_tokens
    return x[:, :p], x[:, p:]


def tokens_to_map(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Grid tokens (B, N, C) -> (B, C, H, W) view in channels-last memory (no copy)."""
    b, n, c = x.shape
    h, w = grid
    torch._assert(n == h * w, "the tokens do not fill the grid")  # traceable by torch.fx
    return x.reshape(b, h, w, c).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)
