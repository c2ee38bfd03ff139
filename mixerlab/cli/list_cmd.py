"""``mixerlab list [PATTERN]``: the zoo with parameters, MACs and the papers' numbers. The
``arch`` column tells the hierarchical MetaFormer versions apart (v1: PoolFormer, arXiv
2111.11418; v2: MetaFormer Baselines, arXiv 2210.13452), whose tables sit next to each other."""
from __future__ import annotations

import json
import sys


def add_parser(sub):
    p = sub.add_parser("list", help="list zoo models (params, MACs, reported top-1, paper)")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. 'convit_*'")
    p.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--no-macs", action="store_true", help="skip the MAC count (faster)")
    return p


def zoo_records(pattern: str = "*", *, macs: bool = True) -> list[dict]:
    """One record per zoo model: our params/MACs (at the native input size) and reported ones."""
    import torch

    from ..bench.complexity import count_macs, count_params
    from ..factory import create_model
    from ..models.hierarchical import metaformer_version
    from ..zoo import get_model_info, list_models

    names = list_models(pattern)
    if not names:
        raise ValueError(f"no model matches {pattern!r}; try 'mixerlab list' for all names")
    rows = []
    for name in names:
        e = get_model_info(name)
        with torch.device("meta"):  # shapes only: no memory, no arithmetic
            model = create_model(name)
        c, h, w = model.pretrained_cfg["input_size"]
        rows.append(dict(
            name=name, family=e.family,
            arch=(f"MetaFormer v{v}" if (v := metaformer_version(model.state_dict())) else None),
            params_m=round(count_params(model) / 1e6, 3),
            gmacs=round(count_macs(model) / 1e9, 3) if macs else None, input=f"{h}x{w}",
            reported_params_m=e.reported.get("params"), reported_gmacs=e.reported.get("gmacs"),
            reported_top1=e.reported.get("top1"), paper=e.paper, note=e.reported.get("note", "")))
    return rows


def run(args) -> int:
    rows = zoo_records(args.pattern, macs=not args.no_macs)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = [("name", "model"), ("family", "family"), ("arch", "arch"), ("params_m", "params (M)"),
            ("reported_params_m", "paper params"), ("gmacs", "GMACs"), ("input", "input"),
            ("reported_top1", "paper top-1"), ("paper", "paper")]
    fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
    if args.markdown:
        print("| " + " | ".join(t for _, t in cols) + " |")
        print("|" + "---|" * len(cols))
        for r in rows:
            print("| " + " | ".join(fmt(r[k]) for k, _ in cols) + " |")
    elif sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        t = Table(title="mixerlab zoo (MACs at the native input size, attention matmuls included)")
        for _, title in cols:
            t.add_column(title, overflow="fold")
        for r in rows:
            t.add_row(*(fmt(r[k]) for k, _ in cols))
        Console().print(t)
    else:
        widths = [max(len(title), *(len(fmt(r[k])) for r in rows)) for k, title in cols]
        print("  ".join(t.ljust(w) for (_, t), w in zip(cols, widths)).rstrip())
        for r in rows:
            print("  ".join(fmt(r[k]).ljust(w) for (k, _), w in zip(cols, widths)).rstrip())
    return 0
