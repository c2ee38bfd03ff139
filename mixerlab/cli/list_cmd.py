"""``mixerlab list [PATTERN]``: the zoo with parameters, MACs and the papers' numbers. The
``arch`` column tells the hierarchical MetaFormer versions apart (v1: PoolFormer, arXiv
2111.11418; v2: MetaFormer Baselines, arXiv 2210.13452), whose tables sit next to each other."""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("list", help="list zoo models (params, MACs, reported top-1, paper)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'convit_*'")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--columns", default=None, metavar="COLS",
                   help="comma-separated columns to show (" + ", ".join(c[0] for c in COLUMNS) + ") or all; "
                        "default: as many as fit the terminal's width (all when not on a terminal)")
    p.add_argument("--no-macs", action="store_true",
                   help="leave the GMACs column empty (no counting; counts are otherwise cached in "
                        "$MIXERLAB_CACHE/zoo_macs.json, default ~/.cache/mixerlab)")
    return p


# (option name, record key, title), in display order; FIT_ORDER: dropped first when the terminal is narrow
COLUMNS = [("model", "name", "model"), ("family", "family", "family"), ("arch", "arch", "arch"),
           ("params", "params_m", "params (M)"), ("paper_params", "reported_params_m", "paper params"),
           ("gmacs", "gmacs", "GMACs"), ("input", "input", "input"), ("paper_top1", "reported_top1", "paper top-1"),
           ("paper", "paper", "paper")]
FIT_ORDER = ("paper", "arch", "paper_params", "input", "family", "paper_top1", "gmacs")


def choose_columns(rows: list[dict], spec: str | None, width: int | None) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The columns to print and the names left out: ``spec`` (``a,b`` or ``all``) when given, else
    every column that fits in ``width`` characters (``None``: no limit), dropping ``FIT_ORDER`` first."""
    names = [c[0] for c in COLUMNS]
    if spec:
        wanted = names if spec.strip() == "all" else [c.strip() for c in spec.split(",") if c.strip()]
        bad = [c for c in wanted if c not in names]
        if bad or not wanted:
            raise ValueError(f"--columns {spec!r}: unknown column(s) {', '.join(bad) or '(none)'}; "
                             f"choose from {', '.join(names)} or all")
        return [c for c in COLUMNS if c[0] in wanted], []
    cols = list(COLUMNS)
    dropped = []

    def total(cs):
        return sum(max(len(t), *(len(_fmt(r[k])) for r in rows)) for _, k, t in cs) + 2 * (len(cs) - 1)
    for name in FIT_ORDER:
        if width is None or total(cols) <= width:
            break
        cols = [c for c in cols if c[0] != name]
        dropped.append(name)
    return cols, dropped


def _fmt(v) -> str:
    return "-" if v is None else str(v)


def macs_cache_path() -> Path:
    """Where counted MACs are kept: ``$MIXERLAB_CACHE/zoo_macs.json`` (default ``~/.cache/mixerlab``)."""
    return Path(os.environ.get("MIXERLAB_CACHE") or Path.home() / ".cache" / "mixerlab") / "zoo_macs.json"


def _config_key(model) -> str:
    """The cache key of a model's MAC count: its resolved config and the torch version (the
    counter is torch's ``FlopCounterMode``)."""
    import torch
    text = json.dumps(model.cfg.to_dict(), sort_keys=True, default=str) + torch.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):  # absent, unreadable or damaged: count again
        return {}


def zoo_records(pattern: str = "*", *, macs: bool = True, progress=None) -> list[dict]:
    """One record per zoo model: our params/MACs (at the native input size) and reported ones.

    MAC counts (a traced forward per model, ~1 s each) are kept in :func:`macs_cache_path`, keyed
    by the resolved config and the torch version, so only new or changed models are counted;
    ``progress(done, total, name)`` is called before each count."""
    import torch

    from ..bench.complexity import count_macs, count_params
    from ..engine.checkpoint import atomic_write_text
    from ..factory import create_model
    from ..models.hierarchical import metaformer_version
    from ..zoo import get_model_info, list_models

    names = list_models(pattern)
    if not names:
        raise ValueError(f"no model matches {pattern!r}; try 'mixerlab list' for all names")
    cache_path = macs_cache_path()
    cache = _load_cache(cache_path) if macs else {}
    models = {}
    for name in names:
        with torch.device("meta"):  # shapes only: no memory, no arithmetic
            models[name] = create_model(name)
    keys = {n: _config_key(models[n]) for n in names} if macs else {}
    todo = [n for n in keys if cache.get(n, {}).get("key") != keys[n]]
    for i, name in enumerate(todo):
        if progress is not None:
            progress(i, len(todo), name)
        cache[name] = dict(key=keys[name], gmacs=round(count_macs(models[name]) / 1e9, 3))
    if todo:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True))
        except OSError:  # a read-only home: the counts are simply not kept
            pass
    rows = []
    for name in names:
        e, model = get_model_info(name), models[name]
        c, h, w = model.pretrained_cfg["input_size"]
        rows.append(dict(
            name=name, family=e.family,
            arch=(f"MetaFormer v{v}" if (v := metaformer_version(model.state_dict())) else None),
            params_m=round(count_params(model) / 1e6, 3),
            gmacs=cache[name]["gmacs"] if macs else None, input=f"{h}x{w}",
            reported_params_m=e.reported.get("params"), reported_gmacs=e.reported.get("gmacs"),
            reported_top1=e.reported.get("top1"), paper=e.paper, note=e.reported.get("note", "")))
    return rows


def _progress(done: int, total: int, name: str) -> None:
    from .main import progress_line
    progress_line(f"mixerlab list: counting MACs {done + 1}/{total} ({name}; kept for the next call)",
                  last=done + 1 == total)


def run(args) -> int:
    rows = zoo_records(args.pattern, macs=not args.no_macs, progress=_progress)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    import shutil
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() and not args.markdown else None
    chosen, dropped = choose_columns(rows, args.columns, width)
    cols = [(k, t) for _, k, t in chosen]
    fmt = _fmt
    if args.markdown:
        print("| " + " | ".join(t for _, t in cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(fmt(r[k]) for k, _ in cols) + " |")
    else:
        widths = [max(len(title), *(len(fmt(r[k])) for r in rows)) for k, title in cols]
        print("  ".join(t.ljust(w) for (_, t), w in zip(cols, widths)).rstrip())
        for r in rows:
            print("  ".join(fmt(r[k]).ljust(w) for (k, _), w in zip(cols, widths)).rstrip())
        if dropped:
            print(f"({', '.join(dropped)} left out to fit {width} columns; --columns all shows them, --json has "
                  "every field)", file=sys.stderr)
    return 0
