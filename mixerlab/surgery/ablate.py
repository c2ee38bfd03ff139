"""``mixerlab ablate``: does *this* trained model need attention, block by block?

For each selected block (or whole stage of a hierarchical model) and each replacement mixer
(``identity``, ``pooling``, ``token_ff``, ``mean_attention``; see ``blocks.REPLACEMENTS``), the
block's token mixer is swapped in the model's config and the model rebuilt with every other weight
kept. Each cell records, on a fixed class-balanced validation split carved out of the training set:

* **zero-shot** accuracy: the replacement as constructed (``mean_attention`` adopts the trained
  layer's value and output projections and its map averaged over training images);
* **fine-tuned** accuracy after ``finetune_steps`` AdamW steps on training images outside the
  validation split, updating only the replaced blocks' mixer parameters and norms (everything else
  frozen, the model in eval mode so dropout, drop path and BatchNorm statistics stay fixed);
* the MACs saved (FLOP counter, one image) and the measured forward time saved (batch of
  validation images, original and replacement timed alternately, median of ``time_reps``).

The greedy search then removes attention from as many blocks as it can: candidate blocks are tried
in the order of their single-block fine-tuned accuracy (best first), each with its best
replacement; a candidate is accepted when the cumulative model, after fine-tuning the new block,
stays within ``tolerance`` (accuracy points) of the original on the validation split; the search
stops when no remaining candidate is accepted. Ties (equal accuracy) go to the replacement, and then
the block, that saves more MACs. Every choice uses the validation split only; the
test split is evaluated once, for the original and the final model. The final model is saved as an
ordinary mixerlab weight file (its config is the per-block mixer list), loadable with
``mixerlab.factory.model_from_weights``.

Finished cells are written to ``OUT/cells/*.json`` atomically; a second run with the same settings
reuses them, so an interrupted run resumes from the finished cells (a cell file that cannot be read
is named in the log and its cell computed again; an unreadable ``settings.json`` is refused, naming
it). Long steps (evaluation, fine-tuning, the search) print a progress line at least every
``engine.report.PROGRESS_EVERY_S`` seconds.

Questions of this kind follow "Do You Even Need Attention?" (Melas-Kyriazi, arXiv 2105.02723) and
MetaFormer (Yu et al., arXiv 2111.11418), asked here of a user's own model.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..bench.flops import model_breakdown
from ..data import STATS, build_sources
from ..data.datasets import validation_split
from ..data.loader import TransformedDataset
from ..data.transforms import eval_transform
from ..engine.checkpoint import atomic_write_text
from ..engine.report import Heartbeat
from ..mixers.base import attention_maps
from .blocks import (REPLACEMENTS, BlockSlot, block_slots, check_runs, replacement_spec, trainable_parameters,
                     transplant, with_mixers)

RESULTS_FORMAT = "mixerlab-ablate/1"


@dataclass
class AblateSettings:
    """Everything that decides a cell's numbers (a changed setting means new cells)."""

    source: str
    data: str
    val_size: int = 2000
    finetune_steps: int = 100
    finetune_lr: float = 1e-3
    batch_size: int = 64
    tolerance: float = 1.0  # accuracy points below the original the greedy search accepts
    seed: int = 0
    map_batches: int = 4  # training batches averaged into mean_attention's map
    stages: bool = False  # cells are whole stages (hierarchical models)
    blocks: list[int] | None = None
    replacements: list[str] = field(default_factory=lambda: list(REPLACEMENTS))
    keep_variable_size: bool = False
    time_reps: int = 5

    def digest(self) -> str:
        d = asdict(self)
        for k in ("tolerance", "time_reps"):  # these do not change a cell's accuracy
            d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def parse_blocks(text: str | None, n: int) -> list[int] | None:
    """``"3-11"``, ``"0,2,5"``, ``"1-3,7"`` -> sorted indices; ``ValueError`` out of range."""
    if text is None:
        return None
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if a > b:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ValueError(f"--blocks {text!r}: expected indices like 3-11 or 0,2,5") from None
    bad = sorted(i for i in out if not 0 <= i < n)
    if bad:
        raise ValueError(f"--blocks {text!r}: block index(es) {bad} out of range; the model has {n} blocks (0-{n - 1})")
    return sorted(out)


# -- the model and the data ---------------------------------------------------------------------
def _held_out(train_cfg: dict) -> list[int] | None:
    """(val_images, seed) of the validation split a training run held out, if any."""
    n = int(train_cfg.get("val_images") or 0)
    return [n, int(train_cfg.get("subset_seed", 0))] if n > 0 else None


def load_subject(source: str | os.PathLike) -> tuple[nn.Module, dict]:
    """The trained model of a run folder, a training checkpoint, a mixerlab weight file or a
    timm checkpoint of a covered architecture (``mixerlab.open_model``); returns (model, info)."""
    from ..engine.factory import TIMM, ZOO, identify, open_model

    kind = identify(source)
    if kind in (ZOO, TIMM):
        raise ValueError(f"{source!r} is a model name: ablate needs a trained model (a run folder, a training "
                         "checkpoint, a mixerlab weight file or a timm checkpoint)")
    model, src = open_model(source)
    from ..models.timm_model import TimmModel
    if isinstance(model, TimmModel):  # a `train --model timm:NAME` run
        raise ValueError(f"{source} holds {model.zoo_name}, a timm model: ablate replaces mixerlab's token "
                         "mixers block by block, which a timm model does not have; train a mixerlab zoo model "
                         "(mixerlab list) to ablate it")
    info = {"kind": src.kind, "data": src.data, "path": src.path}
    if src.train_config is not None:
        info["held_out"] = _held_out(src.train_config)
    return model, info


def validation_indices(targets: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A fixed class-balanced set of ``size`` indices (``mixerlab.data.validation_split``)."""
    classes = np.unique(targets)
    if size < len(classes):
        raise ValueError(f"val_size {size} is smaller than the number of classes ({len(classes)})")
    if size >= len(targets):
        raise ValueError(f"val_size {size} leaves no training images (the training split has {len(targets)})")
    return validation_split(targets, size, seed)[1]


class _Cached:
    """A dataset whose transformed items are kept after their first use: every cell evaluates the
    same validation images and fine-tunes on the same training images (same seed), so each image
    is decoded and transformed once per run."""

    def __init__(self, ds):
        self.ds, self.items = ds, {}

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        item = self.items.get(i)
        if item is None:
            item = self.items[i] = self.ds[i]
        return item


@dataclass
class AblateData:
    tune: _Cached  # training images outside the validation split
    val: _Cached
    test: _Cached
    num_classes: int


def auto_val_size(n_train: int, n_classes: int) -> int:
    """The default validation split: 2000 images, or a fifth of a smaller training set (at least
    one image per class), so a small training set is split instead of refused."""
    return min(DEFAULT_VAL_SIZE, max(n_classes, n_train // 5))


DEFAULT_VAL_SIZE = 2000


def build_ablate_data(model: nn.Module, data: str, data_dir: str | None, val_size: int | None, seed: int,
                      synthetic_size: int = 512, held_out: tuple[int, int] | None = None) -> AblateData:
    """The fine-tune, validation and test images. ``held_out = (val_images, seed)`` of the run the
    model was trained in: the validation split is then taken from the images that run held out
    (never trained on) and the fine-tune images are that run's training pool."""
    img = model.img_size
    if img[0] != img[1]:
        raise ValueError(f"ablate evaluates square images; this model takes {img[0]}x{img[1]}")
    train, test = build_sources(data, data_dir, size=synthetic_size, num_classes=model.num_classes,
                                in_chans=model.cfg.in_chans, img_size=img[0])
    if train.in_chans != model.cfg.in_chans or len(train.classes) != model.num_classes:
        raise ValueError(f"the model takes {model.cfg.in_chans}-channel images in {model.num_classes} classes; "
                         f"{data} has {train.in_chans} channel(s) and {len(train.classes)} classes")
    mean, std = STATS.get(data, STATS["synthetic"])
    t = eval_transform(img[0], tuple(mean[: train.in_chans]), tuple(std[: train.in_chans]))
    targets = np.asarray(train.targets)
    if val_size is None:
        val_size = auto_val_size(len(targets), len(train.classes))
    if held_out and held_out[0] > 0:
        rest, pool = validation_split(targets, held_out[0], held_out[1])
        val = pool if val_size >= len(pool) else pool[validation_indices(targets[pool], val_size, seed)]
    else:
        val = validation_indices(targets, val_size, seed)
        rest = np.setdiff1d(np.arange(len(targets)), val)
    return AblateData(_Cached(TransformedDataset(train, t, rest)), _Cached(TransformedDataset(train, t, val)),
                      _Cached(TransformedDataset(test, t, None)), model.num_classes)


class _Progress:
    """Time-based progress of the running ablation (``_run`` installs a :class:`Heartbeat`):
    ``beat(what)`` prints ``<label>: <what()>`` when nothing was printed for a while."""

    def __init__(self):
        self.hb: Heartbeat | None = None
        self.label = "ablate"

    def beat(self, what: Callable[[], str]) -> None:
        if self.hb is not None:
            self.hb.beat(lambda: f"{self.label}: {what()}")


_progress = _Progress()


def _batches(ds, batch_size: int, order=None):
    order = np.arange(len(ds)) if order is None else order
    for i in range(0, len(order), batch_size):
        items = [ds[int(j)] for j in order[i:i + batch_size]]
        yield torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


def _images(ds, n: int) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(min(n, len(ds)))])


@torch.no_grad()
def correctness(model: nn.Module, ds, batch_size: int = 256) -> np.ndarray:
    """Per-image correctness (bool) of ``model`` on ``ds``, in order."""
    model.eval()
    out = []
    for x, y in _batches(ds, batch_size):
        out.append((model(x).argmax(1) == y).numpy())
        _progress.beat(lambda: f"evaluated {sum(len(o) for o in out)}/{len(ds)} images")
    return np.concatenate(out)


def mean_maps(model: nn.Module, layer: str, ds, *, batches: int, batch_size: int, seed: int) -> torch.Tensor:
    """The attention map of ``layer`` averaged over ``batches`` training batches: (H, N, N)."""
    order = np.random.default_rng(seed).permutation(len(ds))[: batches * batch_size]
    total, count = None, 0
    model.eval()
    with torch.no_grad(), attention_maps(model, [layer]) as rec:
        for x, _ in _batches(ds, batch_size, order):
            model(x)
            m = rec[layer].sum(0)
            total = m if total is None else total + m
            count += x.shape[0]
            _progress.beat(lambda: f"averaged the attention maps of {count}/{len(order)} images")
    return total / count


def finetune(model: nn.Module, params: list[nn.Parameter], ds, *, steps: int, lr: float, batch_size: int,
             seed: int) -> None:
    """``steps`` AdamW steps on ``params`` only (everything else frozen, the model in eval mode)."""
    if steps <= 0 or not params:
        return
    wanted = {id(p) for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in wanted)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    model.eval()
    done, order = 0, rng.permutation(len(ds))
    pos = 0
    while done < steps:
        if pos + batch_size > len(order):
            order, pos = rng.permutation(len(ds)), 0
        x, y = next(_batches(ds, batch_size, order[pos:pos + batch_size]))
        pos += batch_size
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        _progress.beat(lambda: f"fine-tuning step {done}/{steps}")
    for p in model.parameters():
        p.requires_grad_(True)


def time_pair(a: nn.Module, b: nn.Module, x: torch.Tensor, reps: int) -> tuple[float, float]:
    """Median forward seconds of ``a`` and ``b`` on ``x``, measured alternately."""
    ta, tb = [], []
    a.eval(), b.eval()
    with torch.inference_mode():
        a(x), b(x)  # warm-up
        for _ in range(reps):
            for m, acc in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                m(x)
                acc.append(time.perf_counter() - t0)
    return statistics.median(ta), statistics.median(tb)


def _macs(model: nn.Module) -> int:
    return int(model_breakdown(model)["macs"])


def _write_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


# -- cells --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """Blocks replaced together: one block, or a whole stage."""

    label: str
    blocks: tuple[int, ...]


def groups_of(slots: list[BlockSlot], *, stages: bool, blocks: list[int] | None) -> list[Group]:
    if stages:
        if slots[0].stage is None:
            raise ValueError("--stages needs a hierarchical model (this one is isotropic)")
        out = []
        for s in sorted({sl.stage for sl in slots}):
            members = tuple(sl.index for sl in slots if sl.stage == s and (blocks is None or sl.index in blocks))
            if members:
                out.append(Group(f"stage {s}", members))
        return out
    if blocks is None:  # default: every block whose mixer is attention-family
        return [Group(f"block {s.index}", (s.index,)) for s in slots if s.is_attention]
    return [Group(f"block {i}", (i,)) for i in blocks]


def apply_replacement(model: nn.Module, slots: list[BlockSlot], group: Group, name: str, data: AblateData,
                      st: AblateSettings) -> nn.Module:
    """The model with ``group``'s mixers replaced by ``name`` (zero-shot state); ``ValueError``
    when a block cannot take it."""
    by_index = {s.index: s for s in slots}
    specs = {i: replacement_spec(model, by_index[i], name, keep_variable_size=st.keep_variable_size)
             for i in group.blocks}
    new = transplant(model, with_mixers(model.cfg, specs), set(group.blocks))
    check_runs(new, f"{group.label} -> {name}")
    if name == "mean_attention":
        for i in group.blocks:
            layer = f"{by_index[i].module}.token_mixer"
            m = mean_maps(model, layer, data.tune, batches=st.map_batches, batch_size=st.batch_size, seed=st.seed)
            new.get_submodule(layer).adopt(model.get_submodule(layer), m)
    return new


def run_cell(model: nn.Module, slots, group: Group, name: str, data: AblateData, st: AblateSettings,
             base: dict, timing_x: torch.Tensor) -> dict:
    cell = {"group": group.label, "blocks": list(group.blocks), "replacement": name,
            "mixers": sorted({slots[i].mixer_name for i in group.blocks})}
    if all(slots[i].mixer_name == name for i in group.blocks):
        return {**cell, "status": "not applicable", "reason": f"{group.label} already uses {name}"}
    try:
        new = apply_replacement(model, slots, group, name, data, st)
    except ValueError as e:
        return {**cell, "status": "not applicable", "reason": str(e)}
    zs = correctness(new, data.val)
    torch.manual_seed(st.seed)
    finetune(new, trainable_parameters(new, set(group.blocks)), data.tune, steps=st.finetune_steps,
             lr=st.finetune_lr, batch_size=st.batch_size, seed=st.seed)
    ft = correctness(new, data.val)
    macs = _macs(new)
    t_old, t_new = time_pair(model, new, timing_x, st.time_reps)
    return {**cell, "status": "ok",
            "zero_shot_acc": 100 * float(zs.mean()), "zero_shot_drop": base["acc"] - 100 * float(zs.mean()),
            "finetuned_acc": 100 * float(ft.mean()), "finetuned_drop": base["acc"] - 100 * float(ft.mean()),
            "macs": macs, "macs_saved": 1 - macs / base["macs"],
            "params_delta": sum(p.numel() for p in new.parameters()) - base["params"],
            "time_s": t_new, "time_orig_s": t_old, "time_saved": 1 - t_new / t_old}


def greedy(model: nn.Module, slots, cells: list[dict], data: AblateData, st: AblateSettings, base: dict,
           timing_x: torch.Tensor, log: Callable[[str], None]) -> tuple[nn.Module, list[dict]]:
    """Remove attention from as many single blocks as the tolerance allows (see the module doc)."""
    best: dict[tuple, dict] = {}
    for c in cells:
        if c["status"] == "ok" and len(c["blocks"]) == 1:
            key = tuple(c["blocks"])
            rank = (c["finetuned_acc"], c["macs_saved"])  # ties: the cheaper replacement
            if key not in best or rank > (best[key]["finetuned_acc"], best[key]["macs_saved"]):
                best[key] = c
    order = sorted(best.values(), key=lambda c: (-c["finetuned_acc"], -c["macs_saved"]))
    current, replaced = model, []
    path = [{"step": 0, "removed": [], "acc": base["acc"], "macs": base["macs"], "macs_saved": 0.0,
             "time_saved": 0.0, "accepted": True}]
    floor = base["acc"] - st.tolerance
    remaining = list(order)
    step = 0
    while remaining:
        accepted = None
        for c in remaining:
            i, name = c["blocks"][0], c["replacement"]
            group = Group(f"block {i}", (i,))
            _progress.label = f"greedy: + block {i} -> {name}"
            cand = apply_replacement(current, slots, group, name, data, st)
            torch.manual_seed(st.seed)
            finetune(cand, trainable_parameters(cand, {i}), data.tune, steps=st.finetune_steps,
                     lr=st.finetune_lr, batch_size=st.batch_size, seed=st.seed + 1 + step)
            acc = 100 * float(correctness(cand, data.val).mean())
            log(f"greedy: + block {i} -> {name}: validation {acc:.2f} % (floor {floor:.2f} %)"
                f" {'accepted' if acc >= floor else 'rejected'}")
            if acc >= floor:
                accepted = (c, cand, acc)
                break
        if accepted is None:
            break
        c, current, acc = accepted
        step += 1
        replaced.append({"block": c["blocks"][0], "replacement": c["replacement"]})
        remaining.remove(c)
        macs = _macs(current)
        t_old, t_new = time_pair(model, current, timing_x, st.time_reps)
        path.append({"step": step, "removed": list(replaced), "acc": acc, "macs": macs,
                     "macs_saved": 1 - macs / base["macs"], "time_saved": 1 - t_new / t_old, "accepted": True})
    return current, path


# -- the job ------------------------------------------------------------------------------------
def ablate(source: str | os.PathLike, *, data: str | None = None, data_dir: str | None = None,
           out: str | os.PathLike = "runs/ablate", blocks: str | None = None,
           replace: list[str] | tuple[str, ...] | None = None, finetune_steps: int = 100,
           finetune_lr: float = 1e-3, batch_size: int = 64, val_size: int | None = None, tolerance: float = 1.0,
           stages: bool = False, keep_variable_size: bool = False, search: bool = True, seed: int = 0,
           synthetic_size: int = 512, time_reps: int = 5, threads: int | None = None,
           log: Callable[[str], None] = print) -> dict:
    """Mixer surgery on a trained model; writes ``OUT/results.json``, ``report.md``, plots and
    (with ``search``) ``OUT/ablated.safetensors``. Returns the results record.

    Args:
        source: a run folder, a training checkpoint, a mixerlab weight file or a timm checkpoint.
        data, data_dir: the dataset (default: the one a run folder was trained on).
        blocks: which blocks (``"3-11"``, ``"0,2"``); default every attention-family block.
        replace: replacement mixers (default all of ``REPLACEMENTS``).
        finetune_steps, finetune_lr, batch_size: the short fine-tune of each replaced block.
        val_size: the validation split carved out of the training set (class-balanced, fixed;
            None: 2000, or a fifth of a smaller training set).
        tolerance: accuracy points the greedy search may lose against the original.
        stages: cells are whole stages (hierarchical models).
        keep_variable_size: refuse replacements that fix the token count.
        search: run the greedy search and save its model.
    """
    replace = list(replace) if replace else list(REPLACEMENTS)
    unknown = [r for r in replace if r not in REPLACEMENTS]
    if unknown:
        raise ValueError(f"unknown replacement(s) {unknown}; allowed: {', '.join(REPLACEMENTS)}")
    for name, v, lo in (("finetune_steps", finetune_steps, 0), ("batch_size", batch_size, 1),
                        ("val_size", val_size, 1), ("time_reps", time_reps, 1)):
        if name == "val_size" and v is None:
            continue
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be >= 0 accuracy points, got {tolerance!r}")
    if threads:
        torch.set_num_threads(threads)
    model, info = load_subject(source)
    model.eval()
    data = data or info.get("data")
    if data is None:
        raise ValueError(f"{source} does not record its dataset: pass --data")
    slots = block_slots(model)
    chosen = parse_blocks(blocks, len(slots))
    out = Path(out)
    from ..engine.run_folder import check_folder, claim_folder
    check_folder(out, "ablate")  # a file, a run folder, a compare or analysis folder: refused before any work
    groups = groups_of(slots, stages=stages, blocks=chosen)
    if not groups:
        raise ValueError("no block to ablate: the model has no attention-family block; choose blocks with --blocks")
    if not stages:  # a block the user named that cannot take any replacement is bad input
        for g in groups:
            errs = []
            for r in replace:
                try:
                    replacement_spec(model, slots[g.blocks[0]], r, keep_variable_size=keep_variable_size)
                except ValueError as e:
                    errs.append(str(e))
            if len(errs) == len(replace):
                raise ValueError(errs[0])
    held = info.get("held_out") if data == info.get("data") else None
    ad = build_ablate_data(model, data, data_dir, val_size, seed, synthetic_size, held_out=held)
    st = AblateSettings(source=str(Path(source).resolve()), data=data, val_size=len(ad.val),
                        finetune_steps=finetune_steps, finetune_lr=finetune_lr, batch_size=batch_size,
                        tolerance=tolerance, seed=seed, stages=stages, blocks=chosen, replacements=replace,
                        keep_variable_size=keep_variable_size, time_reps=time_reps)
    info["validation"] = ("held out by the training run (never trained on)" if held else
                          "carved out of the training set here: the model may have been trained on these images")
    from ..engine.runlock import run_folder_lock
    claim_folder(out, "ablate")
    (out / "cells").mkdir(parents=True, exist_ok=True)
    with run_folder_lock(out, what="ablate folder"):
        return _run(model, info, slots, groups, ad, st, out, search, log)


def _run(model, info, slots, groups, ad, st, out: Path, search: bool, log) -> dict:
    settings_path = out / "settings.json"
    if settings_path.exists():
        try:
            old = json.loads(settings_path.read_text())
            if not isinstance(old, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
            raise ValueError(f"{out} holds an unreadable ablation settings file {settings_path} ({e}); "
                             f"remove {out} (or that file and {out / 'cells'}) or use another --out") from None
        if old.get("digest") != st.digest():
            raise ValueError(f"{out} holds an ablation with other settings ({settings_path}); use another --out")
    _write_json(settings_path, {"format": RESULTS_FORMAT, "digest": st.digest(), "settings": asdict(st)})

    hb = Heartbeat(log)
    log = hb.say  # the job's own lines restart the progress interval
    _progress.hb, _progress.label = hb, "original model"
    try:
        return _run_cells(model, info, slots, groups, ad, st, out, search, log)
    finally:
        _progress.hb = None


def _cached_cell(path: Path, log) -> dict | None:
    """A finished cell's record, or None (recompute) when the file is unreadable or no cell."""
    try:
        cell = json.loads(path.read_text())
        if isinstance(cell, dict) and isinstance(cell.get("status"), str) and isinstance(cell.get("blocks"), list):
            return cell
        problem = "not a cell record"
    except (OSError, ValueError, UnicodeDecodeError) as e:
        problem = f"{type(e).__name__}: {e}"
    log(f"cached cell {path} is unreadable ({problem}); computing it again")
    return None


def _run_cells(model, info, slots, groups, ad, st, out: Path, search: bool, log) -> dict:
    replace, tolerance, stages = st.replacements, st.tolerance, st.stages
    base_val = correctness(model, ad.val)
    base = {"acc": 100 * float(base_val.mean()), "macs": _macs(model),
            "params": sum(p.numel() for p in model.parameters())}
    log(f"{info['kind']} {info['path']}: {len(slots)} blocks, validation {base['acc']:.2f} % on {len(ad.val)} "
        f"images, {base['macs'] / 1e6:.1f} MMACs")
    timing_x = _images(ad.val, 32)
    cells, todo = [], [(g, r) for g in groups for r in replace]
    for k, (g, r) in enumerate(todo, 1):
        path = out / "cells" / f"{g.label.replace(' ', '')}__{r}.json"
        cell = _cached_cell(path, log) if path.exists() else None
        if cell is not None:
            log(f"[{k}/{len(todo)}] {g.label} -> {r}: finished earlier (reused)")
        else:
            _progress.label = f"[{k}/{len(todo)}] {g.label} -> {r}"
            cell = run_cell(model, slots, g, r, ad, st, base, timing_x)
            _write_json(path, cell)
            if cell["status"] == "ok":
                log(f"[{k}/{len(todo)}] {g.label} -> {r}: zero-shot {cell['zero_shot_acc']:.2f} % "
                    f"({-cell['zero_shot_drop']:+.2f}), fine-tuned {cell['finetuned_acc']:.2f} % "
                    f"({-cell['finetuned_drop']:+.2f}), MACs saved {100 * cell['macs_saved']:.1f} %")
            else:
                log(f"[{k}/{len(todo)}] {g.label} -> {r}: {cell['status']} ({cell['reason']})")
        cells.append(cell)

    result = {"format": RESULTS_FORMAT, "settings": asdict(st), "source": info, "blocks": [
        {"index": s.index, "stage": s.stage, "module": s.module, "mixer": s.mixer_name, "tokens": s.tokens,
         "dim": s.dim} for s in slots], "original": {**base, "val_correct": base_val.astype(int).tolist()},
        "cells": cells}
    if search and not stages:
        final, path = greedy(model, slots, cells, ad, st, base, timing_x, log)
        _progress.label = "final model"
        from ..weights import save_weights, weights_metadata
        weights = save_weights(final.state_dict(), out / "ablated.safetensors", metadata=weights_metadata(final))
        val_final = correctness(final, ad.val)
        test_orig, test_final = correctness(model, ad.test), correctness(final, ad.test)
        result["greedy"] = {"path": path, "weights": str(weights), "tolerance": tolerance,
                            "val_acc": 100 * float(val_final.mean()),
                            "val_correct": val_final.astype(int).tolist(),
                            "test_acc_original": 100 * float(test_orig.mean()),
                            "test_acc_final": 100 * float(test_final.mean()), "test_n": int(len(test_orig)),
                            "mixers": [s.mixer_name for s in block_slots(final)]}
    from .report import write_ablate_report
    result["files"] = write_ablate_report(result, out)
    _write_json(out / "results.json", result)
    log(f"wrote {out / 'report.md'} and {out / 'results.json'}")
    return result


__all__ = ["AblateSettings", "ablate", "build_ablate_data", "correctness", "finetune", "load_subject",
           "parse_blocks", "validation_indices"]
