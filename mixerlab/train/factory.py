"""Model construction for the engine: ``mixerlab.create_model`` with the run's data shape."""
from __future__ import annotations

from torch import nn


def build_model(name: str, *, num_classes: int, in_chans: int, img_size: int, drop_path_rate: float,
                model_args: dict | None = None) -> nn.Module:
    """Create model ``name`` for ``num_classes`` classes of ``in_chans``-channel ``img_size`` images.

    ``model_args`` are further ``create_model`` overrides (model-config fields, e.g. ``depth``).
    Unknown names/keys raise ``ValueError``/``TypeError`` from the registry.
    """
    import mixerlab

    kwargs = dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size, drop_path_rate=drop_path_rate)
    kwargs.update(model_args or {})
    return mixerlab.create_model(name, **kwargs)
