"""Warm-up + cosine schedule (a pure function), the no-weight-decay rule, EMA, BN calibration."""
import math

import pytest
import torch
from torch import nn

import mixerlab
from mixerlab.engine.bn import calibrate_batchnorm
from mixerlab.engine.loop import make_ema
from mixerlab.engine.optim import lr_at, no_decay_names, param_groups


def test_lr_schedule_shape():
    kw = dict(base_lr=1e-3, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at(0, **kw) == pytest.approx(1e-6)
    assert lr_at(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert lr_at(10, **kw) == pytest.approx(1e-3)  # peak right after warm-up
    assert lr_at(55, **kw) == pytest.approx((1e-3 + 1e-5) / 2)  # cosine midpoint
    assert lr_at(100, **kw) == pytest.approx(1e-5) and lr_at(1000, **kw) == pytest.approx(1e-5)
    after = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(after, after[1:]))  # non-increasing after warm-up
    warm = [lr_at(s, **kw) for s in range(0, 11)]
    assert all(a < b for a, b in zip(warm, warm[1:]))


def test_lr_schedule_without_warmup():
    assert lr_at(0, base_lr=2.0, total_steps=4) == 2.0
    assert lr_at(2, base_lr=2.0, total_steps=4) == pytest.approx(1.0 + math.cos(math.pi / 2))


@pytest.mark.parametrize("total,warmup", [(100, 10), (57, 0), (30, 29)])
def test_lr_schedule_equals_timms_cosine_scheduler_per_step(total, warmup):
    """``lr_at`` is timm's ``CosineLRScheduler`` (warm-up prefix, per-step updates) as a pure
    function of the step: kept so that a resume needs no scheduler state."""
    from timm.scheduler import CosineLRScheduler
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2e-3)
    ref = CosineLRScheduler(opt, t_initial=max(total - warmup, 1), lr_min=1e-5, warmup_t=warmup,
                            warmup_lr_init=1e-6, warmup_prefix=True, t_in_epochs=False)
    for step in range(total + 3):
        ref.step_update(step)
        ours = lr_at(step, base_lr=2e-3, total_steps=total, warmup_steps=warmup, warmup_lr=1e-6, min_lr=1e-5)
        assert ours == pytest.approx(opt.param_groups[0]["lr"], rel=1e-13, abs=1e-18), step


def test_param_groups_are_timms_no_decay_groups():
    from timm.optim import param_groups_weight_decay
    model = mixerlab.create_model("convit_micro")
    ours = param_groups(model, 0.05)
    ref = {g["weight_decay"]: g["params"] for g in
           param_groups_weight_decay(model, 0.05, no_weight_decay_list=model.no_weight_decay())}
    assert [id(p) for p in ours[0]["params"]] == [id(p) for p in ref[0.05]]
    assert [id(p) for p in ours[1]["params"]] == [id(p) for p in ref[0.0]]


def test_no_weight_decay_rule_on_deit():
    model = mixerlab.create_model("deit_micro", num_classes=10, in_chans=1, img_size=32)
    exempt = set(no_decay_names(model))
    assert {"pos_embed", "cls_token"} <= exempt
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.endswith(".bias"):
            assert name in exempt, name
        elif name not in model.no_weight_decay():
            assert name not in exempt, name
    groups = param_groups(model, 0.05)
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_no_weight_decay_prefix_match():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Linear(2, 2, bias=False)  # a 2-D weight named in no_weight_decay()
            self.fc = nn.Linear(2, 2)

        def no_weight_decay(self):
            return {"pos"}

    assert set(no_decay_names(M())) == {"pos.weight", "fc.bias"}


def test_ema_update_is_a_lerp():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = make_ema(model, decay=0.9)
    before = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * before + 0.1 * model[0].weight)
    assert torch.equal(ema.module[1].running_mean, model[1].running_mean)  # buffers copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_bn_calibration_matches_dataset_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4, momentum=0.1))
    model.eval()
    model[1].running_mean.fill_(123.0)  # stale statistics
    data = [(torch.randn(8, 1, 4, 4) * 3 + 2, torch.zeros(8)) for _ in range(5)]
    used = calibrate_batchnorm(model, data, device=torch.device("cpu"), max_batches=3)
    assert used == 3
    with torch.no_grad():
        feats = torch.cat([model[0](x) for x, _ in data[:3]])  # (24, 4, 4, 4)
    # cumulative average of the per-batch means = mean over the 3 equal batches
    assert torch.allclose(model[1].running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training  # momentum and mode restored
