"""Training and evaluation engine: ``train(config)``, ``evaluate(checkpoint)``, ``TrainConfig``,
``open_model`` (the one resolver: zoo names, ``timm:NAME``, run folders, checkpoints and weight
files -> a model and what it was), ``build_from_checkpoint`` (its rebuild of a trained model). ``mixerlab.train`` is the
function :func:`train` of this package."""
from .checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from .config import TrainConfig, config_to_yaml, load_config
from .evaluate import evaluate
from .factory import ModelSource, build_from_checkpoint, identify, model_for_run, open_model
from .loop import NonFiniteLossError, resume_config, train
from .optim import lr_at, param_groups

__all__ = [
    "TrainConfig", "load_config", "config_to_yaml", "train", "resume_config", "evaluate",
    "NonFiniteLossError", "CheckpointError", "save_checkpoint", "load_checkpoint", "load_weights",
    "lr_at", "param_groups", "build_from_checkpoint", "model_for_run", "open_model", "identify",
    "ModelSource",
]
