"""Analytic MACs/FLOPs against the counter, and `mixerlab bench` end to end."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import mixerlab
from mixerlab.bench import count_macs
from mixerlab.bench.flops import counted_macs, mixer_cost, model_breakdown
from mixerlab.mixers import get_mixer
from mixerlab.mixers.base import TokenContext
from mixerlab.models.config import BlockConfig, HierarchicalConfig, IsotropicConfig, StageConfig

# Every mixer kind appears in one of these micro models (SR attention: lavit_micro stage 1).
MICROS = ["deit_micro", "convit_micro", "deepvit_micro", "ffonly_micro", "lavit_micro", "poolformer_micro",
          "identityformer_micro"]


def _random_mixing_model():
    st = lambda d, m: StageConfig(dim=d, mixers=(m, m))  # noqa: E731
    return mixerlab.build_model(HierarchicalConfig(
        stages=(st(16, ("identity", {})), st(24, ("random", {}))), img_size=32, num_classes=10,
        stem=(3, 2, 1)))


@pytest.mark.parametrize("name", MICROS)
def test_analytic_mixer_macs_equal_counter(name):
    model = mixerlab.create_model(name)
    b = model_breakdown(model)
    assert b["layers"]
    for layer in b["layers"]:
        assert layer["macs"] == layer["counted_macs"], layer
    assert b["macs"] == count_macs(model)


def test_random_mixing_and_identity_costs():
    model = _random_mixing_model()
    b = model_breakdown(model)
    kinds = {l["mixer"] for l in b["layers"]}
    assert kinds == {"identity", "random"}
    for layer in b["layers"]:
        assert layer["macs"] == layer["counted_macs"]
        if layer["mixer"] == "identity":
            assert layer["macs"] == 0


def test_mixer_formulas_match_counter_in_isolation():
    """Single mixers on a 6x6 grid with a class token where allowed (the counter at batch 1)."""
    dim, grid = 24, (6, 6)
    cases = [("attention", dict(num_heads=3), 1), ("attention", dict(num_heads=3, sr_ratio=2), 0),
             ("gpsa", dict(num_heads=4), 0), ("reattention", dict(num_heads=3), 1),
             ("token_ff", dict(num_tokens=37), 1), ("random", dict(num_tokens=36), 1),
             ("identity", {}, 1)]
    for name, kw, prefix in cases:
        m = get_mixer(name)(dim, **kw).eval()
        n = grid[0] * grid[1] + prefix
        x = torch.randn(1, n, dim)
        from torch.utils.flop_counter import FlopCounterMode
        from mixerlab import explicit_attention
        with explicit_attention(m), FlopCounterMode(display=False) as c, torch.no_grad():
            m(x, TokenContext(grid=grid, num_prefix_tokens=prefix))
        cost = mixer_cost(m, tokens=n, dim=dim, grid=grid, num_prefix=prefix)
        assert cost.macs * 2 == c.get_total_flops(), name


def test_pooling_counts_additions_not_macs():
    m = get_mixer("pooling")(32, pool_size=3)
    cost = mixer_cost(m, tokens=64, dim=32, grid=(8, 8))
    assert cost.macs == 0 and cost.extra_flops == 9 * 64 * 32 and cost.flops == 9 * 64 * 32
    b = model_breakdown(mixerlab.create_model("poolformer_micro"))
    assert b["flops"] == 2 * b["macs"] + b["mixer_extra_flops"] > 2 * b["macs"]


def test_counter_sees_attention_on_explicit_path():
    model = mixerlab.create_model("deit_micro")
    total, per = counted_macs(model, (3, 32, 32))
    assert per["blocks.0.token_mixer"] > 0 and total == count_macs(model)
    # deit_tiny at 224: 1.254 GMACs with the attention matmuls (timm's table: 1.26)
    with torch.device("meta"):
        tiny = mixerlab.create_model("deit_tiny")
    assert model_breakdown(tiny)["macs"] / 1e9 == pytest.approx(1.254, abs=0.002)


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_bench_cli_end_to_end(tmp_path, capsys, restore_threads):
    from mixerlab.cli.main import main
    out = tmp_path / "b.csv"
    rc = main(["bench", "deit_micro", "--batch-size", "1", "2", "--mode", "infer", "train", "--reps", "1",
               "--warmup", "0", "--min-time", "0", "--threads", "1", "--out", str(out)])
    assert rc == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 4
    assert {(r["mode"], r["batch_size"]) for r in rows} == {("infer", "1"), ("infer", "2"), ("train", "1"), ("train", "2")}
    assert all(float(r["img_per_s"]) > 0 and r["mem_kind"] for r in rows)
    assert "deit_micro" in capsys.readouterr().out


def test_bench_vs_timm_json(tmp_path, restore_threads):
    from mixerlab.cli.main import main
    out = tmp_path / "b.json"
    rc = main(["bench", "deit_tiny", "--img-size", "32", "--vs-timm", "--reps", "1", "--warmup", "0",
               "--min-time", "0", "--threads", "1", "--out", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    impls = [r["impl"] for r in data["rows"]]
    assert impls == ["mixerlab", "timm"]
    ml = data["rows"][0]
    assert ml["timm_model"] == "deit_tiny_patch16_224" and ml["ratio_throughput"] > 0
    assert ml["params_m"] == pytest.approx(data["rows"][1]["params_m"], rel=1e-3)
    assert data["environment"]["torch"] == torch.__version__


def test_bench_bad_input(tmp_path):
    from mixerlab.cli.main import main
    assert main(["bench", "deit_mikro"]) == 2
    assert main(["bench", "deit_micro", "--flops-only", "--out", str(tmp_path / "x.txt")]) == 2


def test_bench_dtype_autocasts_forward(tmp_path, restore_threads):
    """--dtype bfloat16 runs the forward under autocast (Linear outputs bf16, weights stay fp32)."""
    import mixerlab
    from mixerlab.bench.speed import Case, Runner
    from mixerlab.cli.main import main
    m = mixerlab.create_model("deit_micro")
    seen = []
    m.head.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    for mode in ("infer", "train"):
        run = Runner(m, Case(mode=mode, batch_size=2, dtype="bfloat16"), 3, m.img_size, m.num_classes)
        run.step()
    assert seen == [torch.bfloat16, torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in m.parameters())
    with pytest.raises(ValueError, match="dtype 'int8'; allowed"):
        Runner(m, Case(dtype="int8"), 3, m.img_size, m.num_classes)
    out = tmp_path / "b.json"
    assert main(["bench", "deit_micro", "--dtype", "bfloat16", "--reps", "1", "--warmup", "0",
                 "--min-time", "0", "--threads", "1", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["dtype"] == "bfloat16"
