"""Training and evaluation engine: ``train(config)``, ``evaluate(checkpoint)``, ``TrainConfig``."""
from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .config import TrainConfig, config_to_yaml, load_config
from .evaluate import evaluate
from .loop import NonFiniteLossError, resume_config, train
from .optim import lr_at, param_groups

__all__ = [
    "TrainConfig", "load_config", "config_to_yaml", "train", "resume_config", "evaluate",
    "NonFiniteLossError", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_weights",
    "lr_at", "param_groups",
]


# ``mixerlab.train`` is both this package and the documented function ``mixerlab.train(config)``:
# once the package is imported, the attribute ``mixerlab.train`` is the module, so the module
# itself is made callable and forwards to :func:`train`.
import sys as _sys
import types as _types


class _CallableModule(_types.ModuleType):
    def __call__(self, *args, **kwargs):
        """``mixerlab.train(config, out_dir=..., resume=...)``: see :func:`mixerlab.train.train`."""
        return train(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
