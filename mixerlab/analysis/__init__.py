"""Attention and feature diagnostics (DeepViT, ConViT, LaViT): metrics return records, plotting
is a separate layer, ``report`` ties them into a folder of JSON, PNGs and a Markdown summary."""
from .analyze import analyze_model, collect, layer_label, similarity_records
from .metrics import (attention_similarity, column_cosine, diagonality_terms, entropy, head_similarity,
                      intra_token_similarity, nonlocality, patch_distances, token_similarity)

__all__ = [
    "analyze_model", "attention_similarity", "collect", "column_cosine", "diagonality_terms", "entropy",
    "head_similarity", "intra_token_similarity", "layer_label", "nonlocality", "patch_distances",
    "similarity_records", "token_similarity",
]
