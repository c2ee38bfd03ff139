"""``mixerlab analyze MODEL_OR_CHECKPOINT``: attention and feature diagnostics into a folder."""
from __future__ import annotations

import sys
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser(
        "analyze", help="attention collapse, nonlocality, gates, feature similarity, attention pictures",
        description="Run a model over a few validation images and write analysis.json, PNG figures and "
                    "summary.md. MODEL is a zoo name (random init, or --weights FILE), a training "
                    "checkpoint (.safetensors) or a run folder written by `mixerlab train`.")
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT")
    p.add_argument("--weights", "--checkpoint", dest="weights", default=None,
                   help="weight file for a zoo name (mixerlab state dict or training checkpoint)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of a training checkpoint")
    p.add_argument("--data", default=None,
                   help="images: fashion-mnist (default; a checkpoint's own dataset if known), synthetic, ...")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the dataset's standard place)")
    p.add_argument("--num-images", type=int, default=64, help="images to average the metrics over")
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass (>= 1)")
    p.add_argument("--pictures", type=int, default=4, help="images in the attention-map picture grid")
    p.add_argument("--query", default="0.5,0.5",
                   help="picture query patch as grid fractions ROW,COL (0.5,0.5 = centre)")
    p.add_argument("--k", type=int, default=3, help="similarity with the next 1..k layers")
    p.add_argument("--threshold", type=float, default=0.9, help="'similar block' threshold (DeepViT: 0.9)")
    p.add_argument("--img-size", type=int, default=None, help="override the zoo model's input size")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to run (auto: cuda when available, else cpu)")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn")
    p.add_argument("--no-plots", action="store_true", help="records and summary only")
    p.add_argument("--out", default=None,
                   help="output folder (default: <run folder>/analysis for a checkpoint or run folder, "
                        "analysis/<model> for a zoo name); one that already holds an analysis is refused "
                        "unless --force")
    p.add_argument("--force", action="store_true", help="replace an analysis already in the output folder")
    return p


def default_out(loaded) -> Path:
    """``<run folder>/analysis`` for a checkpoint or run folder, else ``analysis/<model>``."""
    if loaded.info.get("checkpoint_part"):  # a training checkpoint: loaded.source is its file
        return Path(loaded.source).parent / "analysis"
    return Path("analysis") / loaded.name


def run(args) -> int:
    import torch

    from ..analysis.analyze import analyze_model
    from ..analysis.inputs import load_images, load_model
    from ..analysis.report import write_report

    for name in ("num_images", "batch_size", "k"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    try:
        query = tuple(float(v) for v in args.query.split(","))
        assert len(query) == 2 and all(0 <= v <= 1 for v in query)
    except (ValueError, AssertionError):
        raise ValueError(f"--query {args.query!r}: expected ROW,COL fractions in [0, 1], e.g. 0.5,0.5") from None
    overrides = {"img_size": args.img_size} if args.img_size else {}
    loaded = load_model(args.model, weights=args.weights, ema=args.ema, **overrides)
    out = Path(args.out) if args.out else default_out(loaded)
    from ..engine.run_folder import check_folder, claim_folder
    check_folder(out, "analyze")  # a run, compare or ablate folder: its files would mix with ours
    if (out / "analysis.json").exists() and not args.force:
        raise ValueError(f"{out} already holds an analysis (analysis.json); pass --force to replace it "
                         "or --out to write elsewhere")
    from ..engine.distributed import resolve_device
    model = loaded.model.to(resolve_device(args.device)).eval()
    data = args.data or loaded.data or "fashion-mnist"
    torch.manual_seed(args.seed)
    x, show, _ = load_images(data, args.num_images, in_chans=model.in_chans, img_size=model.img_size,
                             data_dir=args.data_dir or (loaded.data_dir if data == loaded.data else None),
                             seed=args.seed)
    records, pictures = analyze_model(model, x, batch_size=args.batch_size, k=args.k, threshold=args.threshold,
                                      query=query, num_pictures=args.pictures)
    records["source"] = dict(spec=args.model, weights=loaded.source, data=data,
                             command="mixerlab analyze " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["analyze"] else "",
                             **loaded.info)
    claim_folder(out, "analyze")
    paths = write_report(records, pictures, show[: args.pictures], out, plots_on=not args.no_plots)
    sim = records["attention_similarity"]
    print(f"{loaded.name} ({loaded.source}): {len(records['layers'])} attention layers, "
          f"{sim['similar_blocks']} similar blocks (> {sim['threshold']}) over {records['num_images']} {data} images")
    for p in paths.values():
        print(f"  wrote {p}")
    return 0
