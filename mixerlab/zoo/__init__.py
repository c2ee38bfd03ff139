"""The model zoo: the registry and one table per paper (importing this package registers them)."""
from .registry import ZooEntry, get_model_info, list_models, register_zoo
from . import vit, ffonly, convit, deepvit, poolformer, metaformer_baselines, lavit  # noqa: F401,E402  (table order)

__all__ = ["ZooEntry", "get_model_info", "list_models", "register_zoo"]
