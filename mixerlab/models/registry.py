"""The model zoo registry: name -> ``ZooEntry`` (configuration + the paper's reported numbers)."""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model.

    Attributes:
        name: mixerlab name, ``family_size``.
        family: deit | ffonly | convit | vit | deepvit | poolformer | identityformer | randformer | lavit.
        config: an ``IsotropicConfig`` or ``HierarchicalConfig``.
        paper: short citation (title, arXiv id).
        reported: the paper's / official code's numbers: ``params`` (millions, the reference our
            count is tested against), ``top1`` (ImageNet-1k unless ``note`` says otherwise),
            ``gmacs``, ``params_source`` and ``note``. mixerlab's own variants (``*_micro``)
            have no paper numbers, only ``target_params``.
        param_tolerance: allowed relative deviation of our count from the reference.
    """

    name: str
    family: str
    config: object
    paper: str
    reported: dict = field(default_factory=dict)
    param_tolerance: float = 0.01

    @property
    def reference_params(self) -> float:
        """Millions of parameters our count must match (paper/official, or the micro target)."""
        return self.reported.get("params", self.reported.get("target_params"))


_ZOO: dict[str, ZooEntry] = {}


def register_zoo(entries) -> None:
    for e in entries:
        if e.name in _ZOO:
            raise ValueError(f"zoo name {e.name!r} registered twice")
        _ZOO[e.name] = e


def _ensure_loaded() -> None:
    if not _ZOO:
        from .. import zoo  # noqa: F401  (registers every table on import)


def list_models(pattern: str = "*") -> list[str]:
    """Zoo names matching a shell-style pattern (``"convit_*"``), in table order."""
    _ensure_loaded()
    return [n for n in _ZOO if fnmatch.fnmatch(n, pattern)]


def get_model_info(name: str) -> ZooEntry:
    """The zoo entry of ``name``; a ``ValueError`` suggests close names."""
    _ensure_loaded()
    if name.startswith("mixerlab_"):
        name = name[len("mixerlab_"):]
    try:
        return _ZOO[name]
    except KeyError:
        close = difflib.get_close_matches(name, _ZOO, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (see `mixerlab list` for all "
                         f"{len(_ZOO)} names)") from None
