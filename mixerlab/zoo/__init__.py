"""The model zoo: one data table per paper. Importing this package registers every entry."""
from . import vit, ffonly, convit, deepvit, poolformer, lavit  # noqa: F401  (table order)
