"""The vmapped ensemble (``mixerlab.engine.ensemble``) against the runs it stands for: each member
trained alone by a plain loop (the training loop's optimiser, schedule and objective), and, end to
end, ``mixerlab.train`` itself with the device data path."""
import copy
import dataclasses
import json

import pytest
import torch

import mixerlab
from conftest_train import tiny_config
from mixerlab.data import build_data
from mixerlab.data.device import DeviceData, DeviceTrainBatches
from mixerlab.engine import train
from mixerlab.engine.ensemble import Ensemble, EnsembleError, NonFiniteMemberError
from mixerlab.engine.evaluate import evaluate_model
from mixerlab.engine.optim import build_optimizer, lr_at
from mixerlab.engine.task import ClassificationTask

# every *_micro family, shrunk so that a CPU step takes milliseconds (Fashion-MNIST's 28 px;
# LaViT keeps 32 px, where its stages' grids halve)
HIER = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 48))
SMALL = {
    "deit_micro": (28, dict(patch_size=7, dim=32, num_heads=2, depth=2)),
    "ffonly_micro": (28, dict(patch_size=7, dim=32, depth=2)),
    "convit_micro": (28, dict(patch_size=7, num_heads=4, head_dim=8, depth=2, local_layers=1)),
    "deepvit_micro": (28, dict(patch_size=7, dim=32, num_heads=4, depth=2)),
    "poolformer_micro": (28, HIER),
    "identityformer_micro": (28, HIER),
    "poolformerv2_micro": (28, HIER),
    "lavit_micro": (32, dict(dims=(16, 32, 64, 96), num_heads=(1, 1, 2, 3))),
}
SCHED = dict(total_steps=12, warmup_steps=2, warmup_lr=1e-6, min_lr=1e-5)
AUX = {"dp_sym": 1.0, "dp_diag": 1.0}


@pytest.fixture(autouse=True)
def _one_thread():
    """Kernels of a few thousand elements: one thread (two fight over a shared 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build(name, seed, **extra):
    size, args = SMALL[name]
    torch.manual_seed(seed)
    return mixerlab.create_model(name, num_classes=10, in_chans=1, img_size=size, **{**args, **extra})


def batches(name, steps, members, *, shared=False, batch=16):
    size = SMALL[name][0]
    g = torch.Generator().manual_seed(123)
    lead = () if shared else (members,)
    return [(torch.randn(*lead, batch, 1, size, size, generator=g), torch.randint(0, 10, (*lead, batch), generator=g))
            for _ in range(steps)]


def alone(model, lr, data, member, *, shared=False):
    """The reference: one model, the loop's optimiser / schedule / objective, step by step."""
    task = ClassificationTask(mixup=None, label_smoothing=0.1, aux_weights=AUX)
    opt = build_optimizer(model, lr=lr, weight_decay=0.05)
    model.train()
    losses = []
    for step, (x, y) in enumerate(data):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, base_lr=lr, **SCHED)
        out = task(model, x if shared else x[member], y if shared else y[member])
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(out["loss"].item())
    return losses


@pytest.mark.parametrize("name", ["deit_micro", "poolformer_micro", "lavit_micro", "deepvit_micro"])
def test_members_match_runs_alone(name):
    """3 members, different inits and LRs, own batches: 5 steps each equal to the run alone (loss
    within 1e-5), and the trained members predict what the runs alone predict."""
    lrs = [1e-3, 2e-3, 3e-3]
    models = [build(name, s) for s in range(3)]
    refs = [copy.deepcopy(m) for m in models]
    data = batches(name, 5, 3)
    ens = Ensemble(models, lrs=lrs, weight_decay=0.05, label_smoothing=0.1, aux_weights=AUX, **SCHED)
    assert ens.exact
    got = [ens.train_step(x, y) for x, y in data]
    if name == "lavit_micro":
        assert set(got[0]) == {"loss", "ce", "dp_sym", "dp_diag"}  # the auxiliary terms, per member
    x_eval = batches(name, 1, 3, shared=True)[0][0]
    pred = ens.predict(x_eval)
    for i in range(3):
        ref = alone(refs[i], lrs[i], data, i)
        assert [r["loss"][i].item() for r in got] == pytest.approx(ref, abs=1e-5, rel=0)
        if name == "deepvit_micro":
            # not its eval output: the bias before each re-attention BatchNorm has a gradient of
            # zero up to rounding (train-mode BN removes it), which AdamW scales up to LR-sized
            # steps of either sign, and the running mean keeps those: ~1e-3 apart in eval mode
            continue
        refs[i].eval()
        with torch.no_grad():
            torch.testing.assert_close(pred[i], refs[i](x_eval), atol=2e-4, rtol=0)
    # the members really differ (inits, LRs): the comparison above is per member
    assert (pred[0] - pred[1]).abs().max() > 1e-2


def test_shared_batch_and_member_modules_are_views():
    """One batch for every member (an LR sweep from one init): member i is the run with LR i; the
    member modules show the ensemble's current weights and BatchNorm statistics."""
    name, lrs = "deepvit_micro", [5e-4, 2e-3]
    init = build(name, 0)
    ens = Ensemble([copy.deepcopy(init) for _ in lrs], lrs=lrs, aux_weights=AUX, **SCHED)
    data = batches(name, 4, 2, shared=True)
    got = [ens.train_step(x, y)["loss"] for x, y in data]
    x_eval = data[0][0]
    for i, lr in enumerate(lrs):
        ref = copy.deepcopy(init)
        assert [g[i].item() for g in got] == pytest.approx(alone(ref, lr, data, i, shared=True), abs=1e-5, rel=0)
        member = ens.members[i].eval()
        with torch.no_grad():
            torch.testing.assert_close(member(x_eval), ens.predict(x_eval)[i], atol=1e-5, rtol=0)
        bn_ref = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        bn_got = [m for m in member.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert bn_got and len(bn_got) == len(bn_ref)
        for a, b in zip(bn_got, bn_ref):
            assert a.num_batches_tracked.item() == b.num_batches_tracked.item() == 4
            torch.testing.assert_close(a.running_var, b.running_var, atol=1e-5, rtol=1e-4)
    assert not torch.equal(got[-1][0], got[-1][1])  # the LRs made two different runs
    sd = ens.member_state_dict(0)
    w = next(iter(ens.params))
    assert torch.equal(sd[w], ens.params[w][0].detach()) and sd[w].data_ptr() != ens.params[w].data_ptr()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_micro_family_trains_as_an_ensemble(name):
    """Every ``*_micro`` family: two members, two steps, the losses of the runs alone."""
    assert set(SMALL) == set(mixerlab.list_models("*_micro")), "a new *_micro family: add it to SMALL"
    models = [build(name, s) for s in (0, 1)]
    refs = [copy.deepcopy(m) for m in models]
    data = batches(name, 2, 2, batch=8)
    ens = Ensemble(models, lrs=[1e-3, 3e-3], aux_weights=AUX, **SCHED)
    got = [ens.train_step(x, y)["loss"] for x, y in data]
    for i, lr in enumerate([1e-3, 3e-3]):
        assert [g[i].item() for g in got] == pytest.approx(alone(refs[i], lr, data, i), abs=1e-5, rel=0)


def test_stochastic_members_draw_their_own_masks():
    """Drop path on: the members run under vmap(randomness='different'); two members with the same
    init and the same batch get different masks, so different losses (not the run alone's)."""
    init = build("deit_micro", 0, drop_path_rate=0.5)
    ens = Ensemble([copy.deepcopy(init), copy.deepcopy(init)], lrs=1e-3, **SCHED)
    assert not ens.exact and ens.randomness == "different"
    x, y = batches("deit_micro", 1, 2, shared=True)[0]
    loss = ens.train_step(x, y)["loss"]
    assert torch.isfinite(loss).all() and loss[0] != loss[1]
    plain = Ensemble([build("deit_micro", 0), build("deit_micro", 0)], lrs=1e-3, **SCHED)
    loss = plain.train_step(x, y)["loss"]
    assert plain.exact and loss[0] == loss[1]  # without drop path the two members are one run twice


def test_non_finite_loss_stops_before_any_step():
    ens = Ensemble([build("poolformer_micro", s) for s in (0, 1)], lrs=1e-3, **SCHED)
    before = {k: v.detach().clone() for k, v in ens.params.items()}
    x, y = batches("poolformer_micro", 1, 2)[0]
    x[1, 0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteMemberError, match=r"member\(s\) \[1\]") as e:
        ens.train_step(x, y)
    assert e.value.members == [1] and ens.step == 0
    assert all(torch.equal(before[k], v) for k, v in ens.params.items())


def test_refusals():
    with pytest.raises(EnsembleError, match="share one architecture"):
        Ensemble([build("deit_micro", 0), build("deit_micro", 0, depth=3)], lrs=1e-3, **SCHED)
    with pytest.raises(EnsembleError, match="member 1 is a"):
        Ensemble([build("deit_micro", 0), build("poolformer_micro", 0)], lrs=1e-3, **SCHED)
    with pytest.raises(EnsembleError, match="2 learning rates for 3 members"):
        Ensemble([build("deit_micro", s) for s in range(3)], lrs=[1e-3, 2e-3], **SCHED)
    ens = Ensemble([build("deit_micro", s) for s in range(2)], lrs=1e-3, **SCHED)
    x, y = batches("deit_micro", 1, 3)[0]
    with pytest.raises(ValueError, match="the ensemble has 2"):
        ens.train_step(x, y)
    with pytest.raises(ValueError, match="expected x"):
        ens.train_step(x[0], y)
    cfg = tiny_config(mixup=0.8, ema_decay=0.99)
    with pytest.raises(EnsembleError, match="mixup/cutmix, ema_decay"):
        Ensemble.from_config(cfg, seeds=[0, 1], num_classes=4, in_chans=3, steps_per_epoch=4)


def test_from_config_and_device_batches_equal_train(tmp_path):
    """End to end: ``mixerlab.train`` run once per seed (DataLoader, its own init) against one
    ensemble of those seeds fed by the device data path: the same epoch-mean training loss (so the
    same init, batches, augmentation, schedule and steps) and the same validation result."""
    seeds = [0, 3]
    cfg = tiny_config(synthetic_size=96, synthetic_chans=1, epochs=1, batch_size=16, warmup_epochs=0.5,
                      train_crop="pad-crop", crop_padding=2, hflip=0.5, val_images=16, deterministic=False)
    records = []
    for s in seeds:
        out = tmp_path / f"seed{s}"
        train(dataclasses.replace(cfg, seed=s), out_dir=out)
        records.append(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1]))
    bundle = build_data(cfg)
    train_batches = DeviceTrainBatches(DeviceData.from_dataset(bundle.train), batch_size=16, seeds=seeds)
    ens = Ensemble.from_config(cfg, seeds=seeds, num_classes=bundle.num_classes, in_chans=bundle.in_chans,
                               steps_per_epoch=len(train_batches))
    train_batches.set_epoch(0)
    losses = torch.stack([ens.train_step(x, y)["loss"] for x, y in train_batches])  # (steps, members)
    assert len(losses) == records[0]["step"] == 5  # 80 training images (16 held out), batches of 16
    val = DeviceData.from_dataset(bundle.val)
    for i, rec in enumerate(records):
        assert losses[:, i].mean().item() == pytest.approx(rec["train_loss"], abs=1e-5, rel=0)
        res = evaluate_model(ens.members[i], val.eval_batches(64), device=torch.device("cpu"), num_classes=bundle.num_classes)
        assert res["loss"] == pytest.approx(rec["val_loss"], abs=1e-4, rel=0)
        assert res["top1"] == pytest.approx(rec["val_top1"], abs=1e-9)
    assert records[0]["train_loss"] != pytest.approx(records[1]["train_loss"], abs=1e-4)  # two different runs
