"""Steps of ``scripts/gpu_check.sh`` that no mixerlab command covers.

* ``ddp``: under ``torchrun``, join a process group (NCCL on CUDA, gloo on the CPU), check an
  all-reduce, then train a micro model wrapped in ``DistributedDataParallel`` for a few steps
  (the gradient all-reduce runs even with one process) and check that the weights agree on every
  rank. ``mixerlab train`` itself skips the process group when ``WORLD_SIZE`` is 1, so a 1-GPU
  ``torchrun`` training does not touch NCCL; this step does.
* ``compile``: ``torch.compile`` a model (``--backend``, inductor by default; ``--mode``, e.g.
  ``max-autotune`` or ``reduce-overhead`` for CUDA graphs) and compare one fp32 training step with
  eager mode: the loss (aux terms included) and the gradients. Then time training steps (AdamW,
  under ``--dtype`` autocast), compiled and eager alternately, and report images/s of both and,
  with ``--matmul-rate``, the compiled path's training FLOP/s (6 x the counted forward MACs per
  image) as a share of a measured dense matmul rate in ``--dtype`` (8192^3 on CUDA).

Each prints one JSON line with what it measured and exits 1 when a check fails.

Usage: torchrun --standalone --nproc_per_node 1 scripts/gpu_check_steps.py ddp --device cuda
       python scripts/gpu_check_steps.py compile --model deit_micro --device cuda
       python scripts/gpu_check_steps.py compile --model deit_small --batch 256 --dtype bfloat16 \
           --mode max-autotune-no-cudagraphs --steps 20 --matmul-rate --device cuda
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

import mixerlab


def batch(model, device, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.in_chans, *model.img_size, generator=g)
    y = torch.randint(0, model.num_classes, (n,), generator=g)
    return x.to(device), y.to(device)


def loss_of(fwd, x, y):
    logits, aux = fwd(x, return_aux=True)
    loss = F.cross_entropy(logits.float(), y)
    for v in aux.values():
        loss = loss + 0.1 * v.float()
    return loss


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ddp(args) -> int:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if "RANK" not in os.environ:
        print("ddp: run under torchrun (torchrun --standalone --nproc_per_node 1 ...)", file=sys.stderr)
        return 2
    cuda = args.device == "cuda"
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    t = torch.full((8,), float(rank + 1), device=device)
    dist.all_reduce(t)
    ok = bool(torch.all(t == world * (world + 1) / 2))
    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway
    model = mixerlab.create_model(args.model).to(device).train()
    fwd = DistributedDataParallel(model, device_ids=[local] if cuda else None)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = batch(model, device, args.batch, seed=rank)
    losses = []
    for _ in range(args.steps):
        loss = loss_of(fwd, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    hi, lo = flat.clone(), flat.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    dist.all_reduce(lo, op=dist.ReduceOp.MIN)
    same = bool(torch.equal(hi, lo))
    finite = all(torch.isfinite(torch.tensor(losses)))
    if rank == 0:
        print(json.dumps(dict(step="ddp", backend=dist.get_backend(), world=world, model=args.model,
                              all_reduce_ok=ok, weights_equal_on_ranks=same, losses=losses,
                              device=torch.cuda.get_device_name(device) if cuda else "cpu")))
    dist.destroy_process_group()
    return 0 if (ok and same and finite) else 1


def autocast(device, dtype: str):
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


def matmul_tflops(device, dtype: str, n: int, reps: int = 10) -> float:
    """Dense n x n x n matmul rate in ``dtype`` (TFLOP/s, median of ``reps``)."""
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    a @ b
    times = []
    for _ in range(reps):
        sync(device)
        t = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n ** 3 / sorted(times)[len(times) // 2] / 1e12


def timed_steps(fwd, model, x, y, steps: int, dtype: str) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps):
        sync(x.device)
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(x.device, dtype):
            loss = loss_of(fwd, x, y)
        loss.backward()
        opt.step()
        sync(x.device)
        times.append(time.perf_counter() - t)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()}")
    return times


def compile_step(args) -> int:
    device = torch.device(args.device)
    torch.manual_seed(0)
    eager = mixerlab.create_model(args.model).to(device).train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend=args.backend, **({"mode": args.mode} if args.mode else {}))
    x, y = batch(eager, device, args.batch)
    t0 = time.perf_counter()
    loss_c = loss_of(compiled, x, y)
    loss_c.backward()
    sync(device)
    first_s = time.perf_counter() - t0
    loss_e = loss_of(eager, x, y)
    loss_e.backward()
    loss_close = bool(torch.allclose(loss_c, loss_e, rtol=args.rtol, atol=args.rtol))
    worst = 0.0
    for (n, pc), (_, pe) in zip(model.named_parameters(), eager.named_parameters()):
        if pe.grad is None:
            continue
        scale = pe.grad.abs().max().clamp_min(1e-6)
        worst = max(worst, ((pc.grad - pe.grad).abs().max() / scale).item())
    grads_close = worst <= args.grad_rtol
    # timing: compiled and eager alternately (same batch, same dtype), after one warm-up step each
    finite = True
    t_c, t_e = [], []
    try:
        for fwd, m in ((compiled, model), (eager, eager)):
            timed_steps(fwd, m, x, y, 1, args.dtype)
        for _ in range(args.steps):
            t_c += timed_steps(compiled, model, x, y, 1, args.dtype)
            t_e += timed_steps(eager, eager, x, y, 1, args.dtype)
    except FloatingPointError:
        finite = False
    out = dict(step="compile", model=args.model, backend=args.backend, mode=args.mode, device=str(device),
               dtype=args.dtype, batch=args.batch, first_step_s=round(first_s, 2),
               loss_eager=loss_e.item(), loss_compiled=loss_c.item(), loss_close=loss_close,
               worst_grad_rel_diff=worst, grads_close=grads_close, finite=finite)
    if finite and t_c:
        med_c, med_e = sorted(t_c)[len(t_c) // 2], sorted(t_e)[len(t_e) // 2]
        out.update(step_ms=round(1e3 * med_c, 2), eager_step_ms=round(1e3 * med_e, 2),
                   img_s=round(args.batch / med_c, 1), eager_img_s=round(args.batch / med_e, 1),
                   compiled_over_eager=round(med_e / med_c, 3))
        if args.matmul_rate:
            from mixerlab.bench.flops import counted_macs
            macs = counted_macs(mixerlab.create_model(args.model), (eager.in_chans, *eager.img_size))[0]
            rate = matmul_tflops(device, args.dtype if args.dtype != "float32" else "float32", args.matmul_n)
            achieved = 6 * macs * args.batch / med_c / 1e12
            out.update(gmacs=round(macs / 1e9, 4), train_tflops=round(achieved, 2), matmul_tflops=round(rate, 1),
                       share_of_matmul_rate=round(achieved / rate, 4))
    print(json.dumps(out))
    return 0 if (loss_close and grads_close and finite) else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("ddp", "compile"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
        p.add_argument("--model", default="deit_micro")
        p.add_argument("--batch", type=int, default=32)
        p.add_argument("--steps", type=int, default=5)
        if name == "compile":
            p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: no codegen)")
            p.add_argument("--rtol", type=float, default=1e-3, help="loss tolerance, compiled vs eager")
            p.add_argument("--grad-rtol", type=float, default=1e-2,
                           help="max |g_compiled - g_eager| / max |g_eager| per parameter")
            p.add_argument("--mode", default=None, help="torch.compile mode (e.g. max-autotune, reduce-overhead)")
            p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                           help="autocast dtype of the timed steps (the equality check is fp32)")
            p.add_argument("--matmul-rate", action="store_true",
                           help="also measure the dense matmul rate and report the share the training reaches")
            p.add_argument("--matmul-n", type=int, default=8192, help="matmul size for --matmul-rate")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{args.cmd}: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    return ddp(args) if args.cmd == "ddp" else compile_step(args)


if __name__ == "__main__":
    raise SystemExit(main())
