"""Mixer surgery: replace the token mixers of a trained model block by block and measure what each
block's attention is worth (``mixerlab ablate``)."""
from .ablate import AblateSettings, ablate, load_subject, parse_blocks, validation_indices
from .blocks import REPLACEMENTS, BlockSlot, block_slots, replacement_spec, transplant, with_mixers

__all__ = ["AblateSettings", "BlockSlot", "REPLACEMENTS", "ablate", "block_slots", "load_subject", "parse_blocks",
           "replacement_spec", "transplant", "validation_indices", "with_mixers"]
