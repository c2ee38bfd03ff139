"""``mixerlab convert``: convert weights between timm and mixerlab layouts (issue 3).

    mixerlab convert --from timm --model convit_tiny IN.pth OUT.safetensors
    mixerlab convert --from mixerlab --model poolformer_s12 IN.safetensors OUT_timm.safetensors

From timm: the weights are loaded into the mixerlab zoo model (guessed from the weights when
``--model`` is omitted) with the options timm's architecture needs (PoolFormer:
``head_norm_first=False``), and its state dict is written with metadata recording the model and
those options (MetaFormer v2: ``head_hidden_norm_eps=1e-6``, timm's MLP-head LayerNorm eps), so
``create_model(name, pretrained=OUT)`` rebuilds the same model. From mixerlab:
the model's weights are exported in timm's layout. The output is written atomically (temporary
file ``.OUT.tmp-<pid>`` in the same folder, then rename): a failure never leaves a partial OUT; an
interrupt or ``kill`` removes the temporary file, and the temporary file of a ``kill -9`` is removed
by the next write of OUT.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help="convert weights between timm and mixerlab",
        description="Convert a timm state dict to mixerlab weights (--from timm) or mixerlab "
                    "weights to a timm state dict (--from mixerlab). Covered timm models: "
                    "deit/vit tiny/small/base patch16_224, convit_tiny/small/base, "
                    "poolformer_s12/s24/s36/m36/m48 (v1), poolformerv2_s12/s24/s36/m36/m48, "
                    "convformer_s18/s36/m36/b36, caformer_s18/s36/m36/b36 (MetaFormer v2).")
    p.add_argument("--from", dest="source", choices=("timm", "mixerlab"), required=True,
                   help="layout of IN")
    p.add_argument("--model", default=None,
                   help="mixerlab zoo name (e.g. convit_tiny); guessed from the weights if omitted")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("input", metavar="IN", help="weights to read (.safetensors, .pth, .pt, .bin)")
    p.add_argument("output", metavar="OUT", help="file to write (.safetensors, .pth, .pt, .bin)")
    return p


def run(args) -> int:
    from ..convert.timm import TIMM_OPTIONS, export_timm_weights, timm_family, timm_names_for
    from ..engine.factory import (CHECKPOINT, RUN_FOLDER, STATE_DICT, TIMM_CHECKPOINT, WEIGHTS, identify,
                                  open_model)
    from ..models.timm_model import TimmModel
    from ..weights import save_weights, weights_metadata

    src, dst = Path(args.input), Path(args.output)
    if dst.suffix not in (".safetensors", ".pth", ".pt", ".bin"):
        raise ValueError(f"OUT {dst}: unknown weight-file extension {dst.suffix!r}; allowed: "
                         ".safetensors, .pth, .pt, .bin")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"IN and OUT are the same file ({src}); write the conversion to another file "
                         "(--force never overwrites the input)")
    if dst.exists() and not args.force:
        raise ValueError(f"OUT {dst} exists; pass --force to overwrite it")
    if not src.exists():
        raise FileNotFoundError(f"IN not found: {src}")
    kind = identify(src)
    if args.source == "timm":
        if kind != TIMM_CHECKPOINT:
            raise ValueError(f"{src} is a {kind}, not a timm ViT/DeiT, ConViT or PoolFormer (v1, v2, ConvFormer, "
                             "CAFormer) state dict"
                             + ("; for mixerlab weights use --from mixerlab" if kind in (CHECKPOINT, RUN_FOLDER, WEIGHTS) else ""))
        model, _ = open_model(src, name=args.model)
        model.eval()
        options = TIMM_OPTIONS[timm_family(model)]
        meta_out = weights_metadata(model, options)
        meta_out["source"] = f"timm:{'/'.join(timm_names_for(model.zoo_name))}"
        out_sd = model.state_dict()
        what = f"mixerlab {model.zoo_name} weights"
    else:
        if kind == TIMM_CHECKPOINT:
            raise ValueError(f"{src} is already a timm state dict; use --from timm to convert it "
                             "to mixerlab")
        if kind == STATE_DICT and not args.model:
            raise ValueError(f"{src} does not record its model; pass --model NAME")
        model, _ = open_model(src, name=args.model)
        if isinstance(model, TimmModel):  # a `train --model timm:NAME` run: timm's own weights
            out_sd = model.timm_state_dict()
            what = f"timm {model.zoo_name.removeprefix('timm:')} state dict"
        else:
            out_sd = export_timm_weights(model)
            what = f"timm {'/'.join(timm_names_for(model.zoo_name))} state dict"
        meta_out = {"format": "pt"}
    import signal
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:  # kill: the temporary file is removed (like Ctrl-C)
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        save_weights(out_sd, dst, metadata=meta_out)  # a kill -9's temporary file is removed by the next write
    finally:
        if previous is signal.SIG_DFL:  # the caller's handler back (main() may run in a longer process)
            signal.signal(signal.SIGTERM, previous)
    n_params = sum(v.numel() for v in out_sd.values()) / 1e6
    opts = meta_out.get("options")
    print(f"wrote {dst}: {what} ({len(out_sd)} tensors, {n_params:.2f}M values)"
          + (f"; model options {opts}" if opts else ""))
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
