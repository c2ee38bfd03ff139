"""Training and evaluation engine: ``train(config)``, ``evaluate(checkpoint)``, ``TrainConfig``,
``build_from_checkpoint`` (the one path that rebuilds a trained model). ``mixerlab.train`` is the
function :func:`train` of this package."""
from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .config import TrainConfig, config_to_yaml, load_config
from .evaluate import evaluate
from .factory import build_from_checkpoint, model_for_run
from .loop import NonFiniteLossError, resume_config, train
from .optim import lr_at, param_groups

__all__ = [
    "TrainConfig", "load_config", "config_to_yaml", "train", "resume_config", "evaluate",
    "NonFiniteLossError", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_weights",
    "lr_at", "param_groups", "build_from_checkpoint", "model_for_run",
]
