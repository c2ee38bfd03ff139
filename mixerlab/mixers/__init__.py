"""Token mixers: one file each, one signature ``Mixer(dim, *, ...)``, ``forward(x, ctx)``."""
from .base import (AttentionMixer, AttentionRecord, MixerCost, NoCostFormula, TokenContext, TokenMixer,
                   attention_maps, explicit_attention, get_mixer, list_mixers, register_mixer,
                   unregister_mixer)
from .attention import Attention
from .gpsa import GPSA
from .identity import IdentityMixer
from .less_attention import LessAttention
from .mean_attention import MeanAttention
from .pooling import Pooling
from .random_mixing import RandomMixing
from .reattention import ReAttention
from .sepconv import SepConv
from .token_ff import TokenFF

__all__ = [
    "Attention", "AttentionMixer", "AttentionRecord", "GPSA", "IdentityMixer", "LessAttention",
    "MeanAttention", "MixerCost", "NoCostFormula", "Pooling", "RandomMixing", "ReAttention", "SepConv",
    "TokenContext", "TokenFF",
    "TokenMixer", "attention_maps", "explicit_attention", "get_mixer", "list_mixers", "register_mixer",
    "unregister_mixer",
]
