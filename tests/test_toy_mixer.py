"""A new mixer defined outside the package works everywhere with no other edit: model building,
the bench's analytic and counted MACs, the analysis, and the mixer contract."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import mixerlab
from mixerlab.analysis.analyze import analyze_model
from mixerlab.bench import count_macs
from mixerlab.bench.flops import mixer_cost, model_breakdown
from mixerlab.mixers import MixerCost, TokenContext, TokenMixer, list_mixers, register_mixer, unregister_mixer
from test_mixers import check_mixer_contract

NAME = "toy_token_mean"  # unique: no package mixer uses it


class TokenMean(TokenMixer):
    """Every token receives proj(mean of the tokens): y_i = W mean_j(x_j) + b."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: TokenContext) -> torch.Tensor:
        return self.proj(x.mean(dim=1, keepdim=True)).expand_as(x)

    def cost(self, num_tokens, grid, *, dim, batch=1) -> MixerCost:
        """proj on one mean token: C^2 MACs; the mean: N C additions (not seen by the counter)."""
        return MixerCost(dim * dim, num_tokens * dim)

    def describe(self) -> dict:
        return {"reduction": "mean"}


@pytest.fixture
def toy():
    register_mixer(NAME)(TokenMean)
    try:
        yield TokenMean
    finally:
        unregister_mixer(NAME)
    assert NAME not in list_mixers()


def toy_model():
    torch.manual_seed(0)
    return mixerlab.create_model("deit_micro", mixers=((NAME, {}),) * 5)


def test_toy_mixer_builds_and_runs_in_a_zoo_model(toy):
    assert NAME in list_mixers()
    m = toy_model()
    mixers = [mod for mod in m.modules() if isinstance(mod, TokenMixer)]
    assert len(mixers) == 5 and all(type(mod) is TokenMean for mod in mixers)
    x = torch.randn(2, 3, 32, 32)
    y = m(x)
    assert y.shape == (2, m.num_classes)
    # independent reference of the first block's mixer branch: every token gets W mean(norm1(x)) + b
    blk = m.blocks[0]
    seen = {}
    blk.register_forward_hook(lambda mod, args, out: seen.update(x=args[0]))
    m(x)
    xin = seen["x"]
    h = blk.norm1(xin)
    ref = h.mean(dim=1, keepdim=True) @ blk.token_mixer.proj.weight.T + blk.token_mixer.proj.bias
    out = blk.token_mixer(h, TokenContext(grid=(8, 8), num_prefix_tokens=1))
    torch.testing.assert_close(out, ref.expand_as(h))
    y.sum().backward()
    assert blk.token_mixer.proj.weight.grad is not None


def test_toy_mixer_in_flop_counting(toy):
    m = toy_model()
    b = model_breakdown(m)
    assert [l["mixer"] for l in b["layers"]] == [NAME] * 5
    dim = m.blocks[0].token_mixer.proj.in_features
    tokens = 8 * 8 + 1  # 32 px, patch 4, plus the class token
    for layer in b["layers"]:
        assert layer["tokens"] == tokens and layer["macs"] == dim * dim == layer["counted_macs"]
        assert layer["extra_flops"] == tokens * dim
    assert b["by_mixer"] == {NAME: dict(layers=5, macs=5 * dim * dim, flops=5 * (2 * dim * dim + tokens * dim))}
    assert b["macs"] == count_macs(m) and b["mixer_extra_flops"] == 5 * tokens * dim
    assert mixer_cost(m.blocks[0].token_mixer, tokens=tokens, dim=dim, grid=(8, 8), num_prefix=1) == \
        MixerCost(dim * dim, tokens * dim)


def test_toy_mixer_in_analysis(toy):
    m = toy_model().eval()
    x = torch.randn(4, 3, 32, 32)
    rec, pics = analyze_model(m, x, batch_size=2)
    json.dumps(rec)
    assert rec["layers"] == [] and pics == {}  # no attention maps
    assert rec["attention_similarity"]["similar_blocks"] == 0 and rec["gpsa_gates"] == {}
    assert rec["diagonality"] == {} and rec["nonlocality"] == {}
    fs = rec["feature_similarity"]
    assert fs["layers"] == [f"b{i}" for i in range(5)] and len(fs["intra_token"]) == 5
    assert all(fs["matrix"][i][i] == pytest.approx(1.0) for i in range(5))
    # independent reference: mean cosine of distinct grid tokens of the last block's output
    out = {}
    m.blocks[4].register_forward_hook(lambda mod, args, o: out.update(y=o))
    with torch.no_grad():
        m(x)
    t = out["y"][:, 1:]  # grid tokens (the class token dropped)
    cos = torch.nn.functional.cosine_similarity(t[:, :, None], t[:, None], dim=-1)  # (B, N, N)
    n = t.shape[1]
    ref = ((cos.sum(dim=(1, 2)) - cos.diagonal(dim1=1, dim2=2).sum(dim=1)) / (n * n - n)).mean()
    assert fs["intra_token"][-1] == pytest.approx(ref.item(), abs=1e-5)


def test_toy_mixer_keeps_the_contract(toy):
    assert check_mixer_contract(NAME) == 2  # grid tokens only, and with a class token


def test_toy_mixer_with_wrong_cost_breaks_the_bench_check(toy, monkeypatch):
    """The bench comparison can fail: a formula off by one MAC shows as analytic != counted."""
    monkeypatch.setattr(TokenMean, "cost", lambda self, n, g, *, dim, batch=1: MixerCost(dim * dim + 1))
    b = model_breakdown(toy_model())
    assert all(l["macs"] == l["counted_macs"] + 1 for l in b["layers"])
