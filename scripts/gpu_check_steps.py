"""Steps of ``scripts/gpu_check.sh`` that no mixerlab command covers.

* ``ddp``: under ``torchrun``, join a process group (NCCL on CUDA, gloo on the CPU), check an
  all-reduce, then train a micro model wrapped in ``DistributedDataParallel`` for a few steps
  (the gradient all-reduce runs even with one process) and check that the weights agree on every
  rank. ``mixerlab train`` itself skips the process group when ``WORLD_SIZE`` is 1, so a 1-GPU
  ``torchrun`` training does not touch NCCL; this step does.
* ``compile``: ``torch.compile`` a micro model (``--backend``; inductor by default) and compare one
  training step with eager mode: the loss (aux terms included) and the gradients, then time
  further compiled steps.

Each prints one JSON line with what it measured and exits 1 when a check fails.

Usage: torchrun --standalone --nproc_per_node 1 scripts/gpu_check_steps.py ddp --device cuda
       python scripts/gpu_check_steps.py compile --model deit_micro --device cuda
"""
from __future__ import annotations

import argparse
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


def compile_step(args) -> int:
    device = torch.device(args.device)
    torch.manual_seed(0)
    eager = mixerlab.create_model(args.model).to(device).train()
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, backend=args.backend)
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
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times, losses = [], []
    for _ in range(args.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_of(compiled, x, y)
        loss.backward()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t)
        losses.append(loss.item())
    finite = all(torch.isfinite(torch.tensor(losses)))
    print(json.dumps(dict(step="compile", model=args.model, backend=args.backend, device=str(device),
                          first_step_s=round(first_s, 2), step_ms=round(1e3 * sorted(times)[len(times) // 2], 2),
                          loss_eager=loss_e.item(), loss_compiled=loss_c.item(), loss_close=loss_close,
                          worst_grad_rel_diff=worst, grads_close=grads_close, finite=finite)))
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
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"{args.cmd}: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    return ddp(args) if args.cmd == "ddp" else compile_step(args)


if __name__ == "__main__":
    raise SystemExit(main())
