"""The model zoo: one data table per paper. Importing this package registers every entry."""
from . import convit, deepvit, ffonly, lavit, poolformer, vit  # noqa: F401
