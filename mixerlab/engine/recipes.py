"""Named training recipes: a recipe is a set of ``TrainConfig`` values a run starts from.

``TrainConfig(...)``, ``load_config`` and so ``mixerlab train`` start from the recipe named by
``recipe`` (``--recipe``), else from the dataset's default (``default_recipe``): one rule whichever
door; YAML files and options override it, and the run's
config (``config.yaml``, every checkpoint, ``summary.json``) records the recipe's name.

* ``deit``: DeiT's ImageNet recipe (Touvron et al., arXiv 2012.12877; facebookresearch/deit
  ``main.py``): AdamW, wd 0.05, warm-up + cosine, label smoothing 0.1, RandAugment m9, Mixup 0.8,
  CutMix 1.0, random erasing 0.25, drop path 0.1, EMA. These are ``TrainConfig``'s field defaults.
  Meant for ImageNet-scale data and long schedules: on 3,000 Fashion-MNIST images for 3 epochs it
  reaches about 24 %: the strong regularisation has nothing to regularise yet.
* ``small``: for the 28-32 px sets (Fashion-MNIST, CIFAR) and budgets of minutes: the light end of
  the same recipe. AdamW + warm-up + cosine, label smoothing 0.1, weight decay 0.05, random shifts
  of up to 2 px (pad 2 + crop) and horizontal flips; no RandAugment, Mixup, CutMix, random erasing,
  drop path or EMA. Measured with this recipe on a 4-block width-64 ViT with 16 tokens: 81.4 %
  after 203k images (120 s on one thread). Its learning rate is a default; ``mixerlab compare``
  replaces it per family with the value its validation sweep chose (``compare/lr_table_quick.json`` for quick).
"""
from __future__ import annotations

RECIPES: dict[str, dict] = {
    "deit": {},  # TrainConfig's defaults are DeiT's recipe
    "small": dict(
        epochs=10, batch_size=64, lr=2e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=0.25,
        weight_decay=0.05, drop_path_rate=0.0, train_crop="pad-crop", crop_padding=2, hflip=0.5,
        randaugment=None, random_erasing=0.0, mixup=0.0, cutmix=0.0, label_smoothing=0.1,
        ema_decay=None,
    ),
}

# dataset -> its default recipe (ImageFolder trees are taken as ImageNet-like)
DEFAULT_RECIPE = {"fashion-mnist": "small", "cifar10": "small", "cifar100": "small",
                  "synthetic": "small", "imagefolder": "deit"}


def list_recipes() -> list[str]:
    return list(RECIPES)


def recipe_values(name: str) -> dict:
    """The ``TrainConfig`` values of recipe ``name`` (``ValueError`` listing the names)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return {**RECIPES[name], "recipe": name}


def default_recipe(data: str) -> str:
    """The recipe a run on dataset ``data`` starts from when none is named."""
    return DEFAULT_RECIPE.get(data, "deit")
