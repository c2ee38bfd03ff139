"""mixerlab.dense: backbones (stage maps + per-level GroupNorm, ViTDet pyramid), torchvision
RetinaNet / Mask R-CNN, Semantic FPN; LaViT at input sizes other than its build size."""
import ast
import pathlib

import pytest
import torch
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import mixerlab
import mixerlab.dense as dense
from mixerlab.mixers import LessAttention
from mixerlab.mixers.base import TokenContext
from mixerlab.mixers.less_attention import resample_grid_operator, resample_grid_vector


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small maps and many small ops: one thread avoids oversubscription on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# -- parameter counts against the PoolFormer paper (arXiv 2111.11418, Tables 4-6) --------------------
PAPER = [("retinanet", "poolformer_s12", 21.7), ("retinanet", "poolformer_s24", 31.1),
         ("retinanet", "poolformer_s36", 40.6), ("semantic_fpn", "poolformer_s12", 15.7)]
PAPER_MASK_RCNN = [("poolformer_s12", 31.6), ("poolformer_s24", 41.0), ("poolformer_s36", 50.5)]


def _meta(kind, backbone, **kw):
    with torch.device("meta"):
        if kind == "semantic_fpn":
            return dense.create_segmenter(kind, backbone=backbone, num_classes=150, **kw)
        return dense.create_detector(kind, backbone=backbone, num_classes=80, **kw)


@pytest.mark.parametrize("kind,backbone,paper", PAPER)
def test_param_counts_equal_the_paper(kind, backbone, paper):
    assert round(n_params(_meta(kind, backbone)) / 1e6, 1) == paper


@pytest.mark.parametrize("backbone,paper", PAPER_MASK_RCNN)
def test_mask_rcnn_param_counts_within_3_percent(backbone, paper):
    assert abs(n_params(_meta("mask_rcnn", backbone)) / 1e6 - paper) / paper < 0.03


def test_counting_convention_backbone_neck_head():
    """The backbone is the classifier without its head and final norm plus a GroupNorm (2 C
    parameters) per taken level; the neck is torchvision's FPN (+ P6/P7 from C5)."""
    with torch.device("meta"):
        cls = mixerlab.create_model("poolformer_s12")
        det = dense.create_detector("retinanet", backbone="poolformer_s12")
        seg = dense.create_segmenter("semantic_fpn", backbone="poolformer_s12")
        fpn3 = FeaturePyramidNetwork([128, 320, 512], 256, LastLevelP6P7(512, 256))
        fpn4 = FeaturePyramidNetwork([64, 128, 320, 512], 256)
    body = n_params(cls) - n_params(cls.head) - n_params(cls.norm)
    assert n_params(det.backbone.body) == body + 2 * (128 + 320 + 512)  # RetinaNet: stages 2-4 normed
    assert n_params(seg.backbone) == body + 2 * (64 + 128 + 320 + 512)
    assert n_params(det.backbone.fpn) == n_params(fpn3)
    assert n_params(seg.neck) == n_params(fpn4)
    # mmdet RetinaHead: 2 x 4 conv3x3(256) + cls conv3x3(256 -> 9 x 80) + reg conv3x3(256 -> 9 x 4)
    conv = 9 * 256 * 256 + 256
    assert n_params(det.head) == 8 * conv + (9 * 256 * 720 + 720) + (9 * 256 * 36 + 36)
    # mmseg FPNHead: 4 conv3x3 256->128 + 3 conv3x3 128->128 (no bias), 7 norms, 1x1 classifier
    assert n_params(seg.decode_head) == 4 * 9 * 256 * 128 + 3 * 9 * 128 * 128 + 7 * 256 + 128 * 150 + 150


# -- detector / segmenter on one small model of every family -------------------------------------------
SMALL = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 96), num_classes=10)
ISO_SMALL = dict(depth=2, dim=64, num_heads=2, num_classes=10)  # patch 16: pyramid strides 4-32
FAMILIES = [("poolformer_micro", {}), ("identityformer_micro", {}), ("poolformerv2_micro", {}),
            ("identityformer_s12", SMALL), ("convformer_s18", SMALL), ("caformer_s18", SMALL),
            ("lavit_micro", {}), ("deit_tiny", ISO_SMALL)]
TINY_HEADS = dict(fpn_channels=16, min_size=32, max_size=64)
MRCNN_FAST = dict(box_batch_size_per_image=32, rpn_batch_size_per_image=32, box_detections_per_img=5,
                  rpn_pre_nms_top_n_train=100, rpn_post_nms_top_n_train=50,
                  rpn_pre_nms_top_n_test=100, rpn_post_nms_top_n_test=50)


def _targets(imgs, masks=False):
    out = [dict(boxes=torch.tensor([[4.0, 4.0, 30.0, 20.0]]), labels=torch.tensor([1])),
           dict(boxes=torch.tensor([[6.0, 4.0, 20.0, 30.0]]), labels=torch.tensor([2]))]
    if masks:
        for t, im in zip(out, imgs):
            t["masks"] = torch.zeros(1, *im.shape[-2:], dtype=torch.uint8)
            t["masks"][0, 8:24, 8:24] = 1
    return out


def _backbone_sizes(model):
    sizes = []
    model.backbone.body.register_forward_pre_hook(lambda m, a: sizes.append(tuple(a[0].shape[-2:])))
    return sizes


def _check_detector(det, masks=False):
    imgs = [torch.rand(3, 32, 40), torch.rand(3, 40, 32)]
    det.train()
    losses = det(imgs, _targets(imgs, masks))
    assert losses and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in det.backbone.body.body.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the loss reaches the backbone
    det.eval()
    sizes = _backbone_sizes(det)
    with torch.no_grad():
        for im in (torch.rand(3, 32, 32), torch.rand(3, 32, 64)):
            (out,) = det([im])
            assert out["boxes"].shape[-1] == 4 and torch.isfinite(out["boxes"]).all()
            if masks:
                assert out["masks"].shape[-2:] == im.shape[-2:]
    assert sizes == [(32, 32), (32, 64)]  # two input sizes reached the backbone


@pytest.mark.parametrize("name,kw", FAMILIES)
def test_retinanet_and_semantic_fpn_train_and_two_sizes(name, kw):
    det = dense.create_detector("retinanet", backbone=name, num_classes=3, backbone_kwargs=kw, **TINY_HEADS)
    _check_detector(det)
    seg = dense.create_segmenter("semantic_fpn", backbone=name, num_classes=5, backbone_kwargs=kw,
                                 neck_channels=16, head_channels=16)
    seg.train()
    loss = seg(torch.rand(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32)))["loss_seg"]
    assert torch.isfinite(loss)
    loss.backward()
    seg.eval()
    with torch.no_grad():
        for size in ((32, 32), (64, 32)):
            y = seg(torch.rand(1, 3, *size))
            assert y.shape == (1, 5, *size) and torch.isfinite(y).all()


@pytest.mark.parametrize("name,kw", [("poolformer_micro", {}), ("lavit_micro", {}), ("deit_tiny", ISO_SMALL)])
def test_mask_rcnn_train_and_two_sizes(name, kw):
    det = dense.create_detector("mask_rcnn", backbone=name, num_classes=3, backbone_kwargs=kw, **TINY_HEADS,
                                **MRCNN_FAST)
    _check_detector(det, masks=True)


# -- structure against mmdet / mmseg / torchvision ------------------------------------------------------
def test_retinanet_levels_anchors_and_p6_from_c5():
    # width of C5 = FPN width: torchvision's LastLevelP6P7 would take P5 here; mmdet's on_input takes C5
    det = dense.create_detector("retinanet", backbone="poolformer_micro", num_classes=3,
                                fpn_channels=176, min_size=64, max_size=64).eval()
    bb = det.backbone
    assert bb.body.out_indices == (1, 2, 3) and len(bb.body.norms) == 3  # stages 2-4 (FORK_LAST3)
    seen = {}
    bb.fpn.extra_blocks.p6.register_forward_pre_hook(lambda m, a: seen.setdefault("p6_in", a[0]))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        feats = bb(x)
        c5 = bb.body(x)["2"]
    assert list(feats) == ["0", "1", "2", "p6", "p7"]
    torch.testing.assert_close(seen["p6_in"], c5)
    # anchors: 4 * stride * 2^(i/3), ratios 0.5 / 1 / 2 (mmdet RetinaNet 1x) on strides 8-128
    gen = dense.retinanet_anchors([8, 16, 32, 64, 128])
    assert gen.num_anchors_per_location() == [9] * 5
    for stride, cell in zip([8, 16, 32, 64, 128], gen.cell_anchors):
        w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        square = sorted(w[w == h].tolist())  # ratio 1: the three scales (torchvision rounds corners)
        expect = [4 * stride * 2 ** (i / 3) for i in range(3)]
        assert len(square) == 3 and all(abs(a - e) <= 1 for a, e in zip(square, expect)), (square, expect)
        assert sorted(set(torch.round(h / w * 2).tolist())) == [1.0, 2.0, 4.0]


def test_semantic_fpn_head_output_at_stride_4():
    with torch.device("meta"):
        seg = dense.create_segmenter("semantic_fpn", backbone="poolformer_s12")
    convs = [[type(m).__name__ for m in h] for h in seg.decode_head.scale_heads]
    assert [c.count("Conv2d") for c in convs] == [1, 1, 2, 3]  # max(1, log2(stride / 4))
    assert [c.count("Upsample") for c in convs] == [0, 1, 2, 3]
    seg = dense.create_segmenter("semantic_fpn", backbone="poolformer_micro", neck_channels=16,
                                 head_channels=16).eval()
    out = {}
    seg.decode_head.register_forward_hook(lambda m, a, y: out.setdefault("y", y))
    with torch.no_grad():
        seg(torch.rand(1, 3, 64, 96))
    assert out["y"].shape[-2:] == (64 // seg.output_stride, 96 // seg.output_stride)
    assert seg.output_stride == mixerlab.create_model("poolformer_micro").feature_info[0]["reduction"]


def test_isotropic_simple_pyramid_strides():
    bb = dense.dense_backbone("deit_micro").eval()  # patch 4: strides 1, 2, 4, 8
    with torch.no_grad():
        maps = bb(torch.rand(1, 3, 64, 32))
    assert [tuple(m.shape[1:]) for m in maps.values()] == [
        (32, 64, 32), (64, 32, 16), (128, 16, 8), (128, 8, 4)]
    assert bb.strides == [1, 2, 4, 8]


# -- hierarchical stage maps (fork_feat) ------------------------------------------------------------
def test_backbone_maps_are_forward_intermediates_through_a_groupnorm():
    torch.manual_seed(0)
    ref = mixerlab.create_model("poolformer_micro").eval()
    torch.manual_seed(0)
    bb = dense.dense_backbone("poolformer_micro").eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        want = ref.forward_intermediates(x, intermediates_only=True)
        got = bb(x)
    for (k, g), w, norm in zip(got.items(), want, bb.norms):
        torch.testing.assert_close(g, torch.nn.functional.group_norm(w, 1, norm.weight, norm.bias))
    assert bb.body.num_classes == 0 and isinstance(bb.body.norm, torch.nn.Identity)


def test_timm_features_only_lavit_at_other_sizes():
    import timm
    m = timm.create_model("mixerlab_lavit_micro", features_only=True).eval()
    with torch.no_grad():
        for size in ((32, 32), (64, 96)):
            feats = m(torch.randn(1, 3, *size))
            assert [f.shape[1] for f in feats] == m.feature_info.channels()
            assert [size[0] // f.shape[-2] for f in feats] == m.feature_info.reduction()


# -- LaViT at other input sizes -----------------------------------------------------------------------
# Fingerprint of lavit_micro at its 32 px build size (seed 0, transforms perturbed), computed with the
# code before less attention became size-flexible (when it refused every other size).
LAVIT_REF = {"logits": [0.31440895795822144, -0.03979555517435074, -0.17096242308616638,
                        0.14614664018154144, 0.037111300975084305],
             "feats": [(6.965411792858504, 16411.8367262396, [1.1335983276367188, 1.0106792449951172, -0.608479380607605]),
                       (17.828714170958847, 8254.12570980647, [-0.17069925367832184, 0.2122560739517212, 1.4980984926223755]),
                       (26.40499567752704, 3110.768732212523, [0.5063562393188477, 0.8285062313079834, 1.0328646898269653]),
                       (31.065207852050662, 1315.4232142803955, [0.8279476761817932, -0.028884124010801315, 0.11829271167516708])]}


def _perturbed_lavit():
    torch.manual_seed(0)
    m = mixerlab.create_model("lavit_micro").eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if any(k in n for k in ("theta", "psi", "residual")):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return m, torch.randn(2, 3, 32, 32, generator=g)


def test_lavit_build_size_equals_the_fixed_size_model():
    m, x = _perturbed_lavit()
    assert not m.fixed_input_size
    with torch.no_grad():
        logits = m(x)
        feats = m.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(logits[0, :5], torch.tensor(LAVIT_REF["logits"]), rtol=1e-4, atol=1e-5)
    for f, (s, ss, first) in zip(feats, LAVIT_REF["feats"]):
        assert f.double().sum().item() == pytest.approx(s, rel=1e-4, abs=1e-3)
        assert f.double().square().sum().item() == pytest.approx(ss, rel=1e-4)
        torch.testing.assert_close(f.flatten()[:3], torch.tensor(first), rtol=1e-4, atol=1e-5)
    # the dense backbone's maps (before their GroupNorm) are these maps
    bb = dense.DenseBackbone(m, level_norm=False).eval()
    with torch.no_grad():
        for got, want in zip(bb(x).values(), feats):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_lavit_runs_at_other_sizes_fused_and_explicit_agree(size):
    m, _ = _perturbed_lavit()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        feats = m.forward_intermediates(x, intermediates_only=True)
        with mixerlab.explicit_attention(m):
            ref = m.forward_intermediates(x, intermediates_only=True)
    red = [f["reduction"] for f in m.feature_info]
    assert [tuple(f.shape[-2:]) for f in feats] == [(size[0] // r, size[1] // r) for r in red]
    for a, b in zip(feats, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    m.train()
    logits, aux = m(x, return_aux=True)  # diagonality terms on the other grid's square maps
    assert set(aux) == {"dp_sym", "dp_diag"} and all(torch.isfinite(v) for v in aux.values())
    (logits.sum() + sum(aux.values())).backward()
    assert m.stages[3].blocks[0].token_mixer.theta.weight.grad is not None


def test_lavit_identity_transforms_reuse_the_map_at_another_size():
    """Untrained (identity) Psi / Theta resample to the identity: off the build grid an LA layer
    still attends with exactly the previous layer's map."""
    va = LessAttention(16, num_heads=2, num_tokens=16, grid=(4, 4), sr_ratio=2, mode="va").eval()
    for psi in ("dense", "kron"):
        la = LessAttention(16, num_heads=2, num_tokens=16, grid=(4, 4), sr_ratio=2, mode="la", psi=psi).eval()
        la.init_weights()  # identity Psi / Theta, zero biases (a model's init walk calls it)
        assert la.transform_init == "identity"
        grid = (8, 6)
        x = torch.randn(2, 48, 16)
        ctx = TokenContext()
        ctx.grid = grid
        with torch.no_grad(), mixerlab.explicit_attention(torch.nn.ModuleList([va, la])):
            va(x, ctx)
            prev = ctx.state["less_attention.carry"]
            out = la(x, ctx)
            v = la._values(x, la.on_grid(grid))
            want = (prev.softmax(-1) @ v).transpose(1, 2).reshape(2, 48, 16)
        torch.testing.assert_close(out, want)
        torch.testing.assert_close(ctx.state["less_attention.carry"], prev)


def test_resample_grid_operator():
    w = torch.randn(12, 12)
    assert resample_grid_operator(w, (3, 4), (3, 4)) is w  # the build grid: untouched
    torch.testing.assert_close(resample_grid_operator(torch.eye(12), (3, 4), (6, 8)), torch.eye(48))
    # self weight 1.5 on top of a constant kernel 0.5: the self weight stays, the kernel is spread
    # over 4x the tokens at a quarter of the weight, so the row sums (9.5) are kept
    k = torch.full((16, 16), 0.5).fill_diagonal_(2.0)
    r = resample_grid_operator(k, (4, 4), (8, 8))
    torch.testing.assert_close(r, torch.full((64, 64), 0.125) + 1.5 * torch.eye(64))
    torch.testing.assert_close(r.sum(1), k.sum(1).mean().expand(64))
    b = torch.arange(4.0)
    torch.testing.assert_close(resample_grid_vector(b, (2, 2), (2, 2)), b)


def test_lavit_refuses_a_grid_its_reduction_ratio_cannot_divide():
    m = mixerlab.create_model("lavit_micro").eval()
    with pytest.raises(ValueError, match="reduction ratio 4 does not divide the 6x6"):
        m(torch.randn(1, 3, 12, 12))
    with pytest.raises(ValueError, match="token grid is not 1/2 of the previous stage.s 3x3; use an input size"):
        m(torch.randn(1, 3, 24, 24))


# -- errors -----------------------------------------------------------------------------------------
def test_errors_are_one_line_value_errors():
    cases = [(lambda: dense.create_detector("yolo"), r"unknown detector 'yolo'; allowed: \['mask_rcnn', 'retinanet'\]"),
             (lambda: dense.create_segmenter("upernet"), r"unknown segmenter 'upernet'; allowed: \['semantic_fpn'\]"),
             (lambda: dense.create_detector("retinanet", backbone="poolformer_s99"),
              r"unknown backbone 'poolformer_s99'; allowed: a mixerlab zoo name"),
             (lambda: dense.create_detector("retinanet", backbone="randformer_s12"),
              r"accepts only its build size .*; allowed: a backbone that runs at any size")]
    seg = dense.create_segmenter("semantic_fpn", backbone="poolformer_micro", neck_channels=16,
                                 head_channels=16)
    cases.append((lambda: seg(torch.rand(1, 3, 48, 64)), r"input size 48x64 is not divisible by 32; allowed"))
    for fn, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            fn()
        assert "\n" not in str(e.value)


def test_dense_imports_only_lower_layers():
    root = pathlib.Path(dense.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:
                top = (node.module or "").split(".")[0]
                # layers 0-7 of docs/ARCHITECTURE.md (the engine: open_model, checkpoints, the run lock)
                assert top in {"models", "zoo", "layers", "mixers", "weights", "convert", "factory", "data",
                               "engine", "version", "registry"}, f"{path.name} imports ..{node.module}"
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.startswith(("mixerlab.cli", "mixerlab.compare")) for n in names)
