"""Building blocks shared by every model: norms, MLPs, scales, drop path, embeddings."""
from .activations import SquaredReLU, StarReLU, get_act_layer
from .drop import DropPath, drop_path_rates, dropout
from .embed import ConvStem, PatchEmbed, resample_pos_embed
from .fast_paths import fast_path_switch, fast_paths
from .linear import Linear
from .mlp import Mlp, MlpHead
from .norm import GroupNorm1, LayerNorm, ScaledInputLayerNorm, TokenLayerNorm, get_norm_layer
from .scale import FixedScale, LayerScale

__all__ = [
    "ConvStem", "DropPath", "FixedScale", "GroupNorm1", "LayerNorm", "LayerScale", "Linear", "Mlp", "MlpHead",
    "PatchEmbed", "ScaledInputLayerNorm", "SquaredReLU", "StarReLU", "TokenLayerNorm", "drop_path_rates", "dropout", "fast_path_switch",
    "fast_paths", "get_act_layer", "get_norm_layer",
    "resample_pos_embed",
]
