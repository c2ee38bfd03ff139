"""Per-mixer invariants, each checked against an independent computation."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import mixerlab
from mixerlab.mixers import (GPSA, Attention, LessAttention, MixerCost, NoCostFormula, Pooling,
                             RandomMixing, ReAttention, TokenContext, TokenFF, TokenMixer,
                             attention_maps, get_mixer, list_mixers)
from mixerlab.mixers.gpsa import relative_positions
from mixerlab.mixers.less_attention import CARRY, CARRY_GRID, CARRY_KEY_GRID, AttentionResidual, choose_psi


def ctx(grid, prefix=0):
    return TokenContext(grid=grid, num_prefix_tokens=prefix)


def check_mixer_contract(name: str, *, dim: int = 16, grid: tuple[int, int] = (4, 4), batch: int = 2) -> int:
    """The contract every registered mixer keeps, on its declared small ``examples`` (run in order
    on one context, so a later one may read state an earlier one wrote). Per instance and per
    sequence it accepts (grid tokens only; plus one class token where the mixer takes prefix tokens
    and its token count is not fixed):

    * construction from ``dim``, the example's kwargs and ``num_tokens`` (``needs_num_tokens``);
    * ``describe()`` is a JSON-able dict, ``cost()`` non-negative ints;
    * fresh copy, eval, no autograd, every fast path off: ``cost().macs`` equals the MACs that
      ``FlopCounterMode`` counts (per image) where ``cost_counter_comparable``;
    * the fast paths give the same output as the reference paths;
    * training-mode forward keeps the (B, N, C) shape, backward reaches the input and every
      trainable parameter with finite gradients.

    Returns the number of (instance, sequence) cases checked.
    """
    cls = get_mixer(name)
    n_grid = grid[0] * grid[1]
    state: dict = {}  # cross-layer state the example chain passes on
    cases = 0
    assert cls.examples, f"{name}: declares no examples"
    for kw in cls.examples:
        kwargs = dict(kw)
        if cls.needs_num_tokens:
            kwargs.setdefault("num_tokens", n_grid)
        torch.manual_seed(0)
        mixer = cls(dim, **kwargs)
        mixer.init_weights()
        desc = mixer.describe()
        assert isinstance(desc, dict) and json.loads(json.dumps(desc)) == desc, (name, desc)
        prefixes = [0] + ([1] if mixer.supports_prefix_tokens and not mixer.fixed_num_tokens else [])
        next_state = state
        for p in prefixes:
            n = n_grid + p
            x = torch.randn(batch, n, dim)
            cost = mixer.cost(n, grid, dim=dim, batch=batch)
            assert isinstance(cost, MixerCost), (name, kw)
            for v in (cost.macs, cost.extra_flops):
                assert isinstance(v, int) and v >= 0, (name, kw, cost)
            counted = copy.deepcopy(mixer).eval()  # nothing cached yet
            c = TokenContext(grid=grid, num_prefix_tokens=p, state=dict(state))
            with mixerlab.fast_paths(counted, False), FlopCounterMode(display=False) as fc, \
                    torch.no_grad():
                ref = counted(x, c)
            if p == 0:
                next_state = c.state  # the reference path's (dense, detached) state
            if cls.cost_counter_comparable:
                assert cost.macs == fc.get_total_flops() // (2 * batch), (name, kw, p, cost)
            with torch.no_grad():
                fast = counted(x, TokenContext(grid=grid, num_prefix_tokens=p, state=dict(state)))
            torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5, msg=f"{name} {kw}: fast path")
            mixer.train()
            xg = x.clone().requires_grad_(True)
            y = mixer(xg, TokenContext(grid=grid, num_prefix_tokens=p, state=dict(state)))
            assert y.shape == x.shape, (name, kw, p)
            (y * torch.randn_like(y)).sum().backward()
            assert xg.grad is not None and torch.isfinite(xg.grad).all(), (name, kw, p)
            for pn, prm in mixer.named_parameters():
                if prm.requires_grad:
                    assert prm.grad is not None and torch.isfinite(prm.grad).all(), (name, kw, pn)
            mixer.zero_grad(set_to_none=True)
            cases += 1
        state = next_state
    return cases


@pytest.mark.parametrize("name", list_mixers())
def test_mixer_contract(name):
    assert check_mixer_contract(name) >= 1


def test_contract_catches_a_wrong_cost(monkeypatch):
    """The contract's cost check can fail: one MAC off is caught."""
    cls = get_mixer("attention")
    orig = cls.cost
    monkeypatch.setattr(cls, "cost", lambda self, *a, **k: orig(self, *a, **k) + MixerCost(1))
    with pytest.raises(AssertionError):
        check_mixer_contract("attention")


def test_mixer_describe_facts():
    assert Attention(12, num_heads=3).describe() == {"heads": 3}
    assert Attention(12, num_heads=3, sr_ratio=2).describe() == {"heads": 3, "sr_ratio": 2}
    assert LessAttention(8, num_heads=2, num_tokens=4, mode="la").describe() == {"heads": 2, "mode": "la"}
    assert LessAttention(8, num_heads=2, num_tokens=4, mode="va", attn_residual=True, prev_heads=1,
                         prev_grid=(4, 4), prev_sr_ratio=1).describe() == \
        {"heads": 2, "mode": "va", "attn_residual": True}
    assert LessAttention(8, num_heads=2, num_tokens=64, mode="la", sr_ratio=4, psi="kron").describe() == \
        {"heads": 2, "mode": "la", "sr_ratio": 4, "psi": "kron"}
    assert Pooling(8, pool_size=5).describe() == {"pool_size": 5}
    assert TokenFF(8, num_tokens=5).describe() == {"num_tokens": 5, "hidden": 20}
    assert get_mixer("identity")(8).describe() == {}


def test_base_mixer_without_cost_formula_raises():
    class NoFormula(TokenMixer):
        def forward(self, x, ctx):
            return x
    with pytest.raises(NoCostFormula, match="no analytic cost formula"):
        NoFormula().cost(4, (2, 2), dim=8)
    assert NoFormula().describe() == {} and NoFormula().analysis_summary() == {}


def test_all_mixers_registered():
    assert set(list_mixers()) == {"attention", "gpsa", "reattention", "less_attention", "pooling",
                                  "identity", "random", "token_ff", "mean_attention", "sepconv"}


def test_pooling_constant_input_is_zero():
    x = torch.full((2, 5 * 7, 8), 3.25)
    out = Pooling(8, pool_size=3)(x, ctx((5, 7)))
    assert torch.equal(out, torch.zeros_like(out))


def test_pooling_matches_avgpool_minus_identity_and_leaves_prefix():
    x = torch.randn(2, 1 + 4 * 6, 5)
    out = Pooling(5)(x, ctx((4, 6), prefix=1))
    m = x[:, 1:].transpose(1, 2).reshape(2, 5, 4, 6)
    ref = F.avg_pool2d(m, 3, 1, 1, count_include_pad=False) - m
    torch.testing.assert_close(out[:, 1:], ref.flatten(2).transpose(1, 2))
    assert torch.equal(out[:, :1], torch.zeros(2, 1, 5))


def test_attention_explicit_matches_manual():
    torch.manual_seed(0)
    a = Attention(12, num_heads=3).eval()
    x = torch.randn(2, 10, 12)
    q, k, v = a.qkv(x).reshape(2, 10, 3, 3, 4).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    ref = a.proj((attn @ v).transpose(1, 2).reshape(2, 10, 12))
    with mixerlab.fast_paths(a, False):
        torch.testing.assert_close(a(x, ctx((3, 3), prefix=1)), ref)
    assert a.fused_attn
    torch.testing.assert_close(a(x, ctx((3, 3), prefix=1)), ref, rtol=1e-5, atol=1e-6)


def test_gpsa_positional_gate_equals_positional_attention():
    torch.manual_seed(0)
    g = GPSA(16, num_heads=4).eval()
    g.init_weights()
    g.gating_param.data.fill_(60.0)  # sigmoid = 1 in fp32: fully positional
    x = torch.randn(2, 9, 16)
    grid = (3, 3)
    rel = relative_positions(grid)
    pos = torch.softmax((rel @ g.pos_proj.weight.T + g.pos_proj.bias).permute(2, 0, 1), dim=-1)
    v = g.v(x).reshape(2, 9, 4, 4).transpose(1, 2)
    ref = g.proj((pos @ v).transpose(1, 2).reshape(2, 9, 16))
    with attention_maps(g) as rec:
        out = g(x, ctx(grid))
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(rec.maps[""], pos.expand(2, -1, -1, -1))
    assert g.fused_attn  # restored by attention_maps
    torch.testing.assert_close(g(x, ctx(grid)), ref, rtol=1e-5, atol=1e-6)


def test_gpsa_local_init_matches_timm():
    """Independent reference: timm's ConViT local init (pos_proj rows, identity v, gates 1)."""
    timm = pytest.importorskip("timm")
    t = timm.create_model("convit_small", pretrained=False)
    m = mixerlab.create_model("convit_small")
    ta, ma = t.blocks[0].attn, m.blocks[0].token_mixer
    k = int(math.sqrt(ma.num_heads)) ** 2  # heads beyond k^2 keep random weights
    torch.testing.assert_close(ma.pos_proj.weight[:k], ta.pos_proj.weight[:k])
    assert torch.equal(ma.v.weight, torch.eye(ma.v.weight.shape[0]))
    assert torch.equal(ma.gating_param, ta.gating_param)
    # Initial positional attention of a centred head: weight ~ 1/pi on the centre (the scores are
    # -|delta|^2 at alpha = 1, and sum over the grid of exp(-|delta|^2) ~ (sqrt(pi))^2)
    grid = (14, 14)
    pos = ma.positional_attention(grid, "cpu", torch.float32)
    centre = 7 * 14 + 7
    assert abs(pos[4, centre, centre].item() - 0.318) < 0.002  # ConViT-S head 4 is centred


def test_reattention_identity_mixing_equals_attention():
    torch.manual_seed(0)
    r = ReAttention(24, num_heads=4).eval()
    with torch.no_grad():
        r.head_mix.weight.copy_(torch.eye(4).view(4, 4, 1, 1))
        r.head_mix.bias.zero_()
        r.head_norm.running_var.fill_(1.0 - r.head_norm.eps)  # BN at exact identity in eval
    a = Attention(24, num_heads=4).eval()
    a.qkv.load_state_dict(r.qkv.state_dict())
    a.proj.load_state_dict(r.proj.state_dict())
    x = torch.randn(2, 7, 24)
    torch.testing.assert_close(r(x, ctx((2, 3), 1)), a(x, ctx((2, 3), 1)), rtol=1e-5, atol=1e-6)


def test_reattention_mixes_heads_like_a_1x1_conv():
    torch.manual_seed(0)
    r = ReAttention(24, num_heads=4).train()
    attn = torch.rand(3, 4, 5, 5)
    ref = r.head_norm(r.head_mix(attn))  # the official code's Conv2d + BatchNorm2d
    r.head_norm.reset_running_stats()
    torch.testing.assert_close(r.mix_heads(attn), ref)


def _va_la(la_source="logits"):
    torch.manual_seed(0)
    va = LessAttention(16, num_heads=2, num_tokens=9, mode="va", la_source=la_source).eval()
    la = LessAttention(16, num_heads=2, num_tokens=9, mode="la", la_source=la_source).eval()
    torch.nn.init.trunc_normal_(va.proj.weight, std=0.02)
    for m in (va, la):
        m.init_weights()
    return va, la


def test_less_attention_identity_transforms_reproduce_previous_map():
    va, la = _va_la()
    x = torch.randn(2, 9, 16)
    c = ctx((3, 3))
    with attention_maps(torch.nn.ModuleList([va, la])) as rec:
        va(x, c)
        la(x, c)
    torch.testing.assert_close(rec.maps["1"], rec.maps["0"])


def test_less_attention_transform_is_psi_a_theta_t():
    va, la = _va_la()
    with torch.no_grad():
        for lin in (la.psi, la.theta):
            lin.weight.normal_()
            lin.bias.normal_()
    m = torch.randn(2, 2, 9, 9)
    ones = torch.ones(9, 1)
    ref = (la.psi.weight @ m @ la.theta.weight.T + (la.psi.weight @ ones) @ la.theta.bias[None]
           + la.psi.bias[:, None] @ ones.T)
    torch.testing.assert_close(la.transform(m), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_explicit_map_and_ref(la, m), ref, rtol=1e-4, atol=1e-4)


def test_less_attention_dp_terms_hand_computed():
    la = LessAttention(8, num_heads=1, num_tokens=2, mode="la")
    m = torch.tensor([[[[0.0, math.log(3.0)], [0.0, 0.0]]]])  # softmax rows: [.25, .75], [.5, .5]
    sym, diag = la.dp_terms(m)
    # |P - P^T|: off-diagonals |.75 - .5| twice over 4 entries -> 0.125
    assert abs(sym.item() - 0.125) < 1e-6
    # mean_i sum_{j != i} max(0, P_ij - P_ii) = (max(0, .75 - .25) + max(0, .5 - .5)) / 2 = 0.25
    assert abs(diag.item() - 0.25) < 1e-6
    # a diagonally dominant map costs nothing (the term is bounded below by 0, never rewarded)
    dominant = torch.tensor([[[[math.log(3.0), 0.0], [0.0, 0.0]]]])
    assert la.dp_terms(dominant)[1].item() == 0.0
    la.dp_mode = "literal"
    sym_l, diag_l = la.dp_terms(m)
    assert abs(sym_l.item() - 2 * math.log(3.0)) < 1e-6  # raw logits: |M_01 - M_10| twice
    # sum_i ((N - 1) M_ii - sum_{j != i} M_ij) = (0 - log 3) + (0 - 0)
    assert abs(diag_l.item() + math.log(3.0)) < 1e-6


def test_attention_residual_averages_2x2_blocks_and_mixes_heads():
    res = AttentionResidual(2, 3, q_factor=2, k_factor=2)
    with torch.no_grad():
        res.head_mix.normal_()
    prev = torch.randn(1, 2, 16, 16)  # 4x4 query grid and 4x4 key grid, 2 heads
    out = res(prev, (2, 2), (2, 2))
    m = prev.reshape(1, 2, 4, 4, 4, 4)  # (b, head, qy, qx, ky, kx)
    blocks = m.reshape(1, 2, 2, 2, 2, 2, 2, 2, 2, 2).mean(dim=(3, 5, 7, 9)).reshape(1, 2, 4, 4)
    ref = torch.einsum("oh,bhqk->boqk", res.head_mix, blocks)
    torch.testing.assert_close(out, ref)
    assert out.shape == (1, 3, 4, 4)
    # the key grid unchanged (g = 1): only the query axis is filtered; inherited maps start as
    # the head average
    inh = AttentionResidual(2, 3, q_factor=2, k_factor=1, init="mean")
    prev = torch.randn(1, 2, 16, 5)
    ref = prev.reshape(1, 2, 2, 2, 2, 2, 5).mean(dim=(3, 5)).reshape(1, 2, 4, 5).mean(1, keepdim=True)
    torch.testing.assert_close(inh(prev, (2, 2), (1, 5)), ref.expand(1, 3, 4, 5))


def _explicit_map_and_ref(la, m):
    """Psi M Theta^T + (Psi 1) b_Theta^T + b_Psi 1^T with the N x N Psi written out."""
    wp = la.psi_matrix()
    bp = la.psi.bias if la.psi_kind == "dense" else la.psi_bias
    ones = torch.ones(m.shape[-1], 1)
    return wp @ m @ la.theta.weight.T + (wp @ torch.ones(wp.shape[0], 1)) @ la.theta.bias[None] + bp[:, None] @ ones.T


@pytest.mark.parametrize("psi", ["dense", "kron"])
def test_less_attention_reduced_keys_transform_matches_n_by_n_reference(psi):
    """Keys on the R x R-reduced grid (N x N_k maps), Psi dense or Kronecker over a non-square grid:
    the layer's transform equals the written-out N x N Psi times M times Theta^T (fp32, 1e-5)."""
    torch.manual_seed(0)
    la = LessAttention(16, num_heads=2, num_tokens=24, grid=(4, 6), sr_ratio=2, mode="la", psi=psi,
                       transform_init="trunc_normal")
    la.init_weights()
    with torch.no_grad():
        for p_ in la.parameters():
            p_.add_(torch.randn_like(p_) * 0.3)
    m = torch.randn(3, 2, 24, 6)
    torch.testing.assert_close(la.transform(m), _explicit_map_and_ref(la, m), rtol=1e-5, atol=1e-5)
    if psi == "kron":
        assert la.psi_h.shape == (4, 4) and la.psi_w.shape == (6, 6)
        torch.testing.assert_close(la.psi_matrix()[7, 13], la.psi_h[1, 2] * la.psi_w[1, 1])


def test_less_attention_psi_choice_follows_the_cost_model():
    # dense while H N^2 N_k <= N_k C^2 (H N^2 <= C^2): LaViT-T's stages at 224 px (keys 7 x 7)
    assert choose_psi(3136, 49, 48, 1) == "kron" and choose_psi(784, 49, 96, 2) == "kron"
    assert choose_psi(196, 49, 240, 4) == "kron"  # 4 * 196^2 = 153664 > 240^2 = 57600
    assert choose_psi(49, 49, 384, 6) == "dense"  # 6 * 49^2 = 14406 <= 384^2
    assert choose_psi(16, 4, 16, 1) == "dense" and choose_psi(16, 4, 16, 2) == "kron"  # 256 <= 16^2 < 512
    la = LessAttention(16, num_heads=2, num_tokens=64, mode="la", sr_ratio=2)
    assert la.psi_kind == "kron"  # 2 * 64^2 > 16^2
    # and the kinds cost what cost() says: dense N^2 N_k, Kronecker N N_k (h + w) per head
    d = LessAttention(16, num_heads=2, num_tokens=64, mode="la", sr_ratio=2, psi="dense")
    c = dict(dim=16)
    assert d.cost(64, (8, 8), **c).macs - la.cost(64, (8, 8), **c).macs == 2 * (64 * 64 * 16 - 64 * 16 * 16)


@pytest.mark.parametrize("kw", [dict(mode="va", sr_ratio=2), dict(mode="la", sr_ratio=2, psi="kron"),
                                dict(mode="la", sr_ratio=2, psi="dense", out_proj=True),
                                dict(mode="la", sr_ratio=1, psi="dense"),
                                dict(mode="va", sr_ratio=2, attn_residual=True, prev_heads=3,
                                     prev_grid=(8, 12), prev_sr_ratio=2),
                                dict(mode="la", sr_ratio=2, psi="kron", inherit=True, prev_heads=3,
                                     prev_grid=(8, 12), prev_sr_ratio=4)])
def test_less_attention_cost_equals_counter_on_explicit_path(kw):
    """Every layer kind's analytic MACs equal FlopCounterMode on the explicit path (the residual /
    inherited map from a previous stage with other heads, query grid and key grid included)."""
    la = LessAttention(24, num_heads=2, num_tokens=24, grid=(4, 6), **kw)
    la.init_weights()
    b = 2
    state = {}
    if "prev_heads" in kw:
        pg, psr = kw["prev_grid"], kw["prev_sr_ratio"]
        state = {CARRY: torch.randn(b, 3, pg[0] * pg[1], (pg[0] // psr) * (pg[1] // psr)),
                 CARRY_GRID: pg, CARRY_KEY_GRID: (pg[0] // psr, pg[1] // psr)}
    elif kw["mode"] == "la":
        state = {CARRY: torch.randn(b, 2, 24, la.num_keys), CARRY_GRID: (4, 6), CARRY_KEY_GRID: la.key_grid}
    c = TokenContext(grid=(4, 6), state=state)
    x = torch.randn(b, 24, 24)
    with mixerlab.fast_paths(la, False), FlopCounterMode(display=False) as fc, torch.no_grad():
        la.eval()(x, c)
    assert fc.get_total_flops() // (2 * b) == la.cost(24, (4, 6), dim=24).macs


def test_less_attention_dp_loss_on_block_averaged_square_map():
    """With reduced keys the diagonality terms read the R x R query-block average of softmax(M):
    square (N_k x N_k) and still row-stochastic."""
    la = LessAttention(8, num_heads=1, num_tokens=16, grid=(4, 4), sr_ratio=2, mode="la")
    m = torch.randn(2, 1, 16, 4)
    p = m.softmax(-1).reshape(2, 1, 2, 2, 2, 2, 4).mean(dim=(3, 5)).reshape(2, 1, 4, 4)
    torch.testing.assert_close(la.square_map(m.softmax(-1)), p)
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 1, 4))
    sym, diag = la.dp_terms(m)
    torch.testing.assert_close(sym, (p - p.transpose(-2, -1)).abs().mean())
    ref = (p - p.diagonal(dim1=-2, dim2=-1)[..., None]).clamp_min(0).sum(-1).mean()
    torch.testing.assert_close(diag, ref)
    # sign: a map concentrated on the diagonal costs nothing, one concentrated off it costs
    own_key = torch.tensor([(i // 2) * 2 + j // 2 for i in range(4) for j in range(4)])
    eye = F.one_hot(own_key, 4).float()  # each query's own key cell
    good = la.dp_terms((eye * 10)[None, None])[1]
    bad = la.dp_terms((-eye * 10)[None, None])[1]
    assert good == 0 < bad


def test_less_attention_needs_a_source():
    la = LessAttention(8, num_heads=2, num_tokens=4, mode="la")
    with pytest.raises(ValueError, match="preceding 'va'"):
        la(torch.randn(1, 4, 8), ctx((2, 2)))


def test_random_mixing_is_row_stochastic_and_frozen():
    r = RandomMixing(4, num_tokens=6)
    assert not list(r.parameters())
    torch.testing.assert_close(r.random_matrix.sum(-1), torch.ones(6))
    x = torch.randn(2, 6, 4)
    torch.testing.assert_close(r(x, ctx((2, 3))), r.random_matrix @ x)


def test_token_ff_mixes_tokens_only():
    torch.manual_seed(0)
    t = TokenFF(5, num_tokens=7)
    x = torch.randn(2, 7, 5)
    out = t(x, ctx((2, 3), 1))
    ref = t.mlp.fc2(F.gelu(t.mlp.fc1(x.transpose(1, 2)))).transpose(1, 2)
    torch.testing.assert_close(out, ref)
    norm = t.build_norm(5, None)
    assert norm.weight.shape == (7,)  # FF-only's LayerNorm over the token axis
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 5), atol=1e-5, rtol=0)


def test_attention_maps_records_each_layer():
    m = mixerlab.create_model("convit_micro").eval()
    x = torch.randn(2, 3, 32, 32)
    with attention_maps(m) as rec:
        y = m(x)
    assert list(rec.maps) == [f"blocks.{i}.token_mixer" for i in range(5)]
    assert rec.maps["blocks.0.token_mixer"].shape == (2, 4, 64, 64)  # GPSA: patch tokens only
    assert rec.maps["blocks.4.token_mixer"].shape == (2, 4, 65, 65)  # MHSA: class token joined
    for a in rec.maps.values():
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))
    torch.testing.assert_close(y, m(x), rtol=1e-5, atol=1e-5)  # fused path gives the same
    assert all(mod.fused_attn for mod in m.modules() if hasattr(mod, "fused_attn"))  # restored
    assert all(mod.onednn_linear for mod in m.modules() if hasattr(mod, "onednn_linear"))
    with attention_maps(m, layers=["blocks.1.token_mixer"]) as rec:
        m(x)
    assert list(rec.maps) == ["blocks.1.token_mixer"]
    with pytest.raises(ValueError, match="not attention layers"):
        with attention_maps(m, layers=["blocks.1.mlp"]):
            pass


def test_attention_maps_deepvit_and_lavit():
    d = mixerlab.create_model("deepvit_micro").eval()
    with attention_maps(d) as rec:
        d(torch.randn(2, 3, 32, 32))
    assert len(rec) == 10
    a = rec.maps["blocks.0.token_mixer"]
    assert not torch.allclose(a.sum(-1), torch.ones(a.shape[:-1]))  # re-attention: not stochastic
    lv = mixerlab.create_model("lavit_micro").eval()
    with attention_maps(lv) as rec:
        lv(torch.randn(2, 3, 32, 32))
    kinds = [type(mod).__name__ for n, mod in lv.named_modules() if n in rec.maps]
    assert kinds.count("LessAttention") == 7 and kinds.count("Attention") == 0
    assert rec.maps["stages.0.blocks.0.token_mixer"].shape == (2, 1, 256, 16)  # keys on the 4x4 grid
    # With identity transforms at init, each LA layer starts as a copy of its stage's VA map
    # (stage 3's VA also receives the zero-scaled residual, which changes nothing at init).
    torch.testing.assert_close(rec.maps["stages.1.blocks.1.token_mixer"],
                               rec.maps["stages.1.blocks.0.token_mixer"])


def test_model_returns_aux_losses_from_lavit():
    m = mixerlab.create_model("lavit_micro")
    x = torch.randn(2, 3, 32, 32)
    logits, aux = m(x, return_aux=True)
    assert set(aux) == {"dp_sym", "dp_diag"} and all(v.requires_grad for v in aux.values())
    torch.testing.assert_close(logits, m(x))  # same logits with or without the terms
    assert not hasattr(m, "_aux")  # returned, not stored
    assert mixerlab.create_model("deit_micro")(x, return_aux=True)[1] == {}


def test_get_mixer_unknown_name():
    with pytest.raises(ValueError, match="unknown token mixer 'poolin'.*did you mean pooling"):
        get_mixer("poolin")


def test_misspelt_mixer_keyword_raises():
    with pytest.raises(TypeError, match="num_head"):
        Attention(8, num_head=2)


@pytest.mark.parametrize("n", [49, 13, 1, 64])
def test_groupnorm1_equals_torch_groupnorm(n):
    """GroupNorm1 on (B, N, C) tokens equals nn.GroupNorm(1, C) on the (B, C, N) map, for grids
    with and without a 2-D factorisation (prime N takes the layer_norm path)."""
    from mixerlab.layers import GroupNorm1
    torch.manual_seed(0)
    g = GroupNorm1(8)
    with torch.no_grad():
        g.weight.normal_()
        g.bias.normal_()
    ref = torch.nn.GroupNorm(1, 8)
    ref.load_state_dict(g.state_dict())
    x = torch.randn(3, n, 8, requires_grad=True)
    y = g(x)
    torch.testing.assert_close(y, ref(x.transpose(1, 2)).transpose(1, 2), rtol=1e-5, atol=1e-5)
    assert y.is_contiguous()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_gpsa_positional_summary_at_local_init():
    """Local init puts head h1 + 3*h2 of a 9-head GPSA at offset (h2 - 1, h1 - 1) with strength
    alpha: the summary must recover |offset| and alpha."""
    g = GPSA(36, num_heads=9, locality_strength=2.0)
    g.init_weights()
    s = g.positional_summary()
    expected = torch.tensor([math.hypot(h2 - 1, h1 - 1) for h2 in range(3) for h1 in range(3)])
    order = [h1 + 3 * h2 for h2 in range(3) for h1 in range(3)]
    torch.testing.assert_close(s["centre_distance"][order], expected)
    torch.testing.assert_close(s["locality_strength"], torch.full((9,), 2.0))
    torch.testing.assert_close(s["gate"], torch.full((9,), torch.sigmoid(torch.tensor(1.0)).item()))


def test_sepconv_matches_explicit_convolutions():
    """SepConv = pwconv2(dwconv(StarReLU(pwconv1(x)))) written with F.conv2d on the (B, C, H, W)
    map (the pointwise layers as 1x1 convs, as timm stores them)."""
    import torch.nn.functional as F
    from mixerlab.mixers import SepConv
    torch.manual_seed(0)
    m = SepConv(6, bias=True)
    with torch.no_grad():
        m.act1.scale.fill_(0.7)
        m.act1.bias.fill_(-0.3)
    grid = (5, 4)
    x = torch.randn(2, 20, 6)
    xm = x.reshape(2, 5, 4, 6).permute(0, 3, 1, 2)
    h = F.conv2d(xm, m.pwconv1.weight[:, :, None, None], m.pwconv1.bias)
    h = 0.7 * F.relu(h) ** 2 - 0.3
    h = F.conv2d(h, m.dwconv.weight, m.dwconv.bias, padding=3, groups=12)
    ref = F.conv2d(h, m.pwconv2.weight[:, :, None, None], m.pwconv2.bias)
    out = m(x, ctx(grid))
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1).reshape(2, 20, 6), rtol=1e-5, atol=1e-5)
    assert m.describe() == {"kernel_size": 7, "hidden": 12}
    assert SepConv(6).pwconv1.bias is None and SepConv(6).dwconv.bias is None
    with pytest.raises(ValueError, match="odd"):
        SepConv(6, kernel_size=4)


def test_sepconv_cost_is_two_pointwise_and_one_depthwise():
    from mixerlab.mixers import SepConv
    c = SepConv(64).cost(56 * 56, (56, 56), dim=64)
    n = 56 * 56
    assert c.macs == n * 64 * 128 * 2 + n * 128 * 49


def test_starrelu_and_squared_relu():
    from mixerlab.layers import SquaredReLU, StarReLU
    x = torch.linspace(-2, 2, 9)
    a = StarReLU()
    assert [p.shape for p in a.parameters()] == [(1,), (1,)]
    with torch.no_grad():
        a.scale.fill_(0.8944)
        a.bias.fill_(-0.4472)
    torch.testing.assert_close(a(x), 0.8944 * x.clamp(min=0) ** 2 - 0.4472)
    torch.testing.assert_close(SquaredReLU()(x), x.clamp(min=0) ** 2)


def test_random_mixing_v2_is_a_frozen_parameter():
    r = RandomMixing(4, num_tokens=6, as_parameter=True)
    (p,) = list(r.parameters())
    assert p is r.random_matrix and not p.requires_grad and p.shape == (6, 6)
    assert "random_matrix" in r.state_dict()
    torch.testing.assert_close(p.sum(-1), torch.ones(6))
    x = torch.randn(2, 6, 4, requires_grad=True)
    r(x, ctx((2, 3))).sum().backward()
    assert p.grad is None and x.grad is not None
    assert r.describe() == {"num_tokens": 6, "frozen_parameter": True}


def test_bias_free_norms():
    from mixerlab.layers import get_norm_layer
    for name in ("groupnorm1_nobias", "layernorm_nobias"):
        n = get_norm_layer(name)(8)
        assert n.bias is None and n.eps == 1e-6 and [p.shape for p in n.parameters()] == [(8,)]
    x = torch.randn(2, 12, 8)
    g = get_norm_layer("groupnorm1_nobias")(8)
    with torch.no_grad():
        g.weight.copy_(torch.linspace(0.5, 1.5, 8))
    ref = torch.nn.functional.group_norm(x.reshape(2, 3, 4, 8).permute(0, 3, 1, 2), 1, g.weight, None, 1e-6)
    torch.testing.assert_close(g(x), ref.permute(0, 2, 3, 1).reshape(2, 12, 8))
