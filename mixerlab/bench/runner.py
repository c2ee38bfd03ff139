"""``mixerlab bench``: one record per (model, implementation, mode, batch, device, options).

Each row holds the parameters, analytic MACs/FLOPs (``flops.py``), the timing of ``speed.py`` and,
with ``vs_timm``, the matching timm model timed interleaved in the same process, with the
mixerlab/timm ratios of throughput and peak memory on the mixerlab row.
"""
from __future__ import annotations

import platform

import torch

from .flops import model_breakdown
from .speed import Case, Runner, benchmark_interleaved

# mixerlab zoo family prefix -> timm name pattern (architectures timm also implements).
TIMM_NAMES = {
    "deit_tiny": "deit_tiny_patch16_224", "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
}


SAME_NAME_FAMILIES = ("convit_", "poolformer_", "poolformerv2_", "convformer_", "caformer_")


def timm_counterpart(name: str) -> str | None:
    """timm's name for zoo model ``name`` (deit_*, convit_*, poolformer_s*/m*, the v2
    poolformerv2_* / convformer_* / caformer_*: timm's names are the official ones), or None."""
    import timm
    cand = TIMM_NAMES.get(name)
    if cand is None and name.startswith(SAME_NAME_FAMILIES) and not name.endswith("_micro"):
        cand = name
    if cand is not None and timm.is_model(cand):
        return cand
    return None


def _build_timm(tname: str, model) -> tuple[torch.nn.Module, str]:
    """timm's model shaped like ``model``; weights converted from mixerlab when the converter exists."""
    import timm
    kw = dict(pretrained=False, num_classes=model.num_classes, in_chans=model.in_chans)
    if not tname.startswith(("poolformer", "convformer", "caformer")):  # timm's MetaFormers take no img_size
        kw["img_size"] = model.img_size
    tm = timm.create_model(tname, **kw)
    try:
        from ..convert import export_timm_weights  # written by another issue; optional here
        tm.load_state_dict(export_timm_weights(model))
        return tm, "same weights (mixerlab -> timm conversion)"
    except Exception as e:  # converter missing or not covering this model: timing does not need it
        why = str(e).split(";")[0].split(". ")[0][:120]
        return tm, f"independent random init (speed/memory do not depend on the values; no conversion: {why})"


def environment() -> dict:
    """Machine and versions for the record."""
    import timm
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    env = dict(torch=torch.__version__, timm=timm.__version__, python=platform.python_version(), cpu=cpu,
               cpu_cores=len(os_sched_cpus()), torch_threads=torch.get_num_threads())
    try:
        env["load_avg_1m"] = round(__import__("os").getloadavg()[0], 2)  # other work on the machine
    except OSError:
        pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def os_sched_cpus():
    import os
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return range(os.cpu_count() or 1)


def bench_rows(names: list[str], *, batch_sizes=(1,), modes=("infer",), img_size: int | None = None,
               device: str = "cpu", channels_last: bool = False, compile: bool = False, vs_timm: bool = False,
               dtype: str = "float32",
               reps: int = 5, warmup: int = 2, min_time: float = 0.2, speed: bool = True,
               progress=None) -> list[dict]:
    """Benchmark models (zoo names, or any source ``mixerlab.open_model`` takes: a run folder, a
    checkpoint, a weight file); returns one JSON-able row per measurement (see module docstring)."""
    from ..engine.factory import open_model
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    rows = []
    for name in names:
        overrides = {"img_size": img_size} if img_size else {}
        torch.manual_seed(0)
        model, _ = open_model(name, **overrides)
        name = model.zoo_name  # a run folder or weight file is benchmarked as the zoo model it holds
        size = tuple(model.img_size)
        fl = model_breakdown(model, (model.in_chans, *size))
        base = dict(model=name, img_size=f"{size[0]}x{size[1]}", params_m=fl["params"] / 1e6,
                    gmacs=fl["macs"] / 1e9, gflops=fl["flops"] / 1e9, mixer_gmacs=fl["mixer_macs"] / 1e9,
                    mixer_share=fl["mixer_share"],
                    by_mixer={k: round(v["macs"] / 1e9, 4) for k, v in fl["by_mixer"].items()})
        tname = timm_counterpart(name) if vs_timm else None
        if vs_timm and tname is None and progress:
            progress(f"{name}: timm has no counterpart; timing mixerlab only")
        if not speed:
            rows.append(dict(base, impl="mixerlab", device=device))
            continue
        timm_model, weights = (None, None)
        if tname:
            timm_model, weights = _build_timm(tname, model)
        for mode in modes:
            for b in batch_sizes:
                case = Case(mode=mode, batch_size=b, img_size=size, device=device,
                            channels_last=channels_last, compile=compile, dtype=dtype)
                runners = {"mixerlab": Runner(model, case, model.in_chans, size, model.num_classes)}
                if timm_model is not None:
                    runners["timm"] = Runner(timm_model, case, model.in_chans, size, model.num_classes)
                if progress:
                    progress(f"{name} {mode} batch {b}" + (f" vs timm {tname}" if tname else ""))
                res = benchmark_interleaved(runners, reps=reps, warmup=warmup, min_time=min_time)
                common = dict(mode=mode, batch_size=b, device=device, dtype=dtype,
                              channels_last=channels_last, compile=compile)
                row = dict(base, impl="mixerlab", **common, **res["mixerlab"])
                if "timm" in res:
                    t = res["timm"]
                    row.update(timm_model=tname, timm_img_per_s=t["img_per_s"], timm_peak_mem_mb=t["peak_mem_mb"],
                               ratio_throughput=row["img_per_s"] / t["img_per_s"],
                               ratio_mem=(row["peak_mem_mb"] / t["peak_mem_mb"]) if t["peak_mem_mb"] > 0 else None,
                               timm_weights=weights)
                    rows.append(row)
                    rows.append(dict(model=name, impl="timm", timm_model=tname, img_size=row["img_size"],
                                     params_m=sum(p.numel() for p in timm_model.parameters()) / 1e6,
                                     **common, **t))
                else:
                    rows.append(row)
                del runners
        del model, timm_model
    return rows
