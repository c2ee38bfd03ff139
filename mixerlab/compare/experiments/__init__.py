"""The experiments of ``mixerlab compare``, one module each, registered by id.

Every experiment trains ``*_micro`` models (about 1M parameters, 32 px) with the same recipe on the
same data; variants are zoo builder arguments or config fields (``RunSpec.model_args``), never new
classes.

* E1 (``e1_matched``; FF-only arXiv 2105.02723, MetaFormer arXiv 2111.11418): every family at
  matched parameter count.
* E2 (``e2_data``; ConViT arXiv 2103.10697): ConViT vs DeiT on growing fractions of the training
  set; GPSA gates after training.
* E3 (``e3_depth``; DeepViT arXiv 2103.11886): plain attention vs re-attention at several depths;
  attention collapse.
* E4 (``e4_mixers``; PoolFormer arXiv 2111.11418, 2210.13452): attention / pooling / random /
  identity mixers and the pool-pool-attention-attention hybrid in one hierarchical backbone.
* E5 (``e5_less_attention``; LaViT arXiv 2406.00427): less attention replacing more of each
  stage's attention, with and without the diagonality-preserving loss.
* E6 (``e6_dense``; PoolFormer arXiv 2111.11418 sec. 4.2-4.3, LaViT arXiv 2406.00427): PoolFormer,
  LaViT and the ResNet-18 anchor as RetinaNet and Semantic FPN backbones on the Fashion-MNIST
  scenes, fine-tuned from the classification runs (E1's, by hash).

A new experiment is one module defining a frozen dataclass ``Experiment`` subclass (``id``,
``title``, ``claim``, knobs as fields, ``plan``, ``section``) registered with
``register_experiment``; presets run every registered experiment unless they list a subset.
"""
from __future__ import annotations

from .base import (Experiment, RunSpec, Section, dense_plan, get_experiment, list_experiments, plan,
                   register_experiment, selected_experiments, unregister_experiment, with_train_args)
from . import e1_matched, e2_data, e3_depth, e4_mixers, e5_less_attention, e6_dense  # noqa: E402,F401 (registers E1-E6)
from .e1_matched import MICRO_FAMILIES

__all__ = ["Experiment", "MICRO_FAMILIES", "RunSpec", "Section", "dense_plan", "get_experiment", "list_experiments",
           "plan", "register_experiment", "selected_experiments", "unregister_experiment",
           "with_train_args"]
