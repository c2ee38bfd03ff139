"""Analysis metrics (DeepViT similarity, ConViT nonlocality, LaViT monitors) and `mixerlab analyze`."""
from __future__ import annotations

import json
import math

import pytest
import torch

import mixerlab
from mixerlab.analysis import metrics as M
from mixerlab.analysis.analyze import analyze_model, collect, layer_label


def test_similarity_identical_maps_is_one():
    a = torch.rand(2, 3, 5, 5).softmax(-1)
    assert M.attention_similarity(a, a.clone()) == pytest.approx(1.0, abs=1e-6)
    hs = M.head_similarity(a)
    assert hs.shape == (3, 3)
    assert torch.allclose(hs.diagonal(), torch.ones(3), atol=1e-6)
    assert torch.allclose(hs, hs.T, atol=1e-6)


def test_similarity_hand_computed():
    # columns of A: (1, .5), (0, .5); of B: (0, .5), (1, .5); each cosine = .25 / (.5 * sqrt(1.25))
    a = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).view(1, 1, 2, 2)
    b = torch.tensor([[0.0, 1.0], [0.5, 0.5]]).view(1, 1, 2, 2)
    assert M.attention_similarity(a, b) == pytest.approx(1 / math.sqrt(5), abs=1e-6)
    # columns, not rows: the rows of A and B have cosines 0 and 1 (mean .5), a different number
    assert M.attention_similarity(a, b) != pytest.approx(0.5)
    with pytest.raises(ValueError):
        M.attention_similarity(a, torch.rand(1, 1, 3, 3))


def test_nonlocality_one_hot_on_self_is_zero():
    eye = torch.eye(16).view(1, 1, 16, 16).repeat(2, 3, 1, 1)
    assert torch.allclose(M.nonlocality(eye, (4, 4)), torch.zeros(3), atol=1e-6)


def test_nonlocality_hand_computed_and_class_token_excluded():
    # 2x2 grid, uniform attention: from any patch the distances are 0, 1, 1, sqrt(2)
    expected = (2 + math.sqrt(2)) / 4
    uni = torch.full((1, 2, 4, 4), 0.25)
    assert torch.allclose(M.nonlocality(uni, (2, 2)), torch.full((2,), expected), atol=1e-6)
    # with a class token at index 0 taking half of every row's mass: excluded and renormalised
    a = torch.zeros(1, 1, 5, 5)
    a[..., 0] = 0.5
    a[..., 1:] = 0.125
    assert M.nonlocality(a, (2, 2), num_prefix=1).item() == pytest.approx(expected, abs=1e-6)
    # one query attending only to its neighbour at distance 1 (row 0 -> key 1), others to self
    b = torch.eye(4).view(1, 1, 4, 4).clone()
    b[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    assert M.nonlocality(b, (2, 2)).item() == pytest.approx(1 / 4, abs=1e-6)


def test_nonlocality_reduced_keys():
    # 4x4 queries, 2x2 reduced keys at cell centres (0.5, 0.5), ...: query (0,0) -> key 0 is sqrt(.5)
    a = torch.zeros(1, 1, 16, 4)
    a[..., 0] = 1.0
    d = M.patch_distances((4, 4), (2, 2))
    assert d[0, 0].item() == pytest.approx(math.sqrt(0.5))
    assert M.nonlocality(a, (4, 4)).item() == pytest.approx(d[:, 0].mean().item(), abs=1e-6)


def test_token_and_diagonality_metrics():
    x = torch.randn(2, 6, 8)
    assert M.token_similarity(x, x) == pytest.approx(1.0, abs=1e-6)
    assert M.intra_token_similarity(torch.ones(1, 4, 3)) == pytest.approx(1.0, abs=1e-6)
    t = M.diagonality_terms(torch.eye(5).view(1, 1, 5, 5))
    # identity: fully dominant, so the (bounded, clipped) diagonal term is 0, not a reward
    assert t["asymmetry"] == 0 and t["diag_mass"] == pytest.approx(1.0) and t["dp_diag"] == pytest.approx(0.0)
    perm = torch.eye(5)[[1, 2, 3, 4, 0]].view(1, 1, 5, 5)  # every token attends only to another: worst
    assert M.diagonality_terms(perm)["dp_diag"] == pytest.approx(1.0)


def test_layer_labels():
    assert layer_label("blocks.3.token_mixer") == "b3"
    assert layer_label("stages.2.blocks.1.token_mixer") == "s2.b1"


def test_convit_capture_uses_real_block_inputs():
    model = mixerlab.create_model("convit_micro")
    raw = collect(model, torch.randn(2, 3, 32, 32), batch_size=2)
    meta = raw["meta"]
    # GPSA blocks see the 64 patch tokens only; the MHSA block after cls_token_at sees 65.
    assert [meta[n]["tokens"] for n in raw["attention_layers"]] == [64, 64, 64, 64, 65]
    assert [meta[n]["num_prefix"] for n in raw["attention_layers"]] == [0, 0, 0, 0, 1]
    # the MHSA map is 65 x 65 yet comparable layers are only the equal-shaped GPSA ones
    assert ("blocks.3.token_mixer", "blocks.4.token_mixer") not in raw["pair"]


def test_analyze_records_and_lavit_dp_agree_with_model():
    model = mixerlab.create_model("lavit_micro")
    x = torch.randn(4, 3, 32, 32)
    rec, pics = analyze_model(model, x, batch_size=4)
    json.dumps(rec)
    # the model's own diagonality terms (computed when autograd is on) sum the LA layers' values
    model.eval()
    _, aux = model(x, return_aux=True)
    la = [v for v in rec["diagonality"].values() if v["mode"] == "la"]
    assert la and sum(v["asymmetry"] for v in la) == pytest.approx(aux["dp_sym"].item(), rel=1e-4, abs=5e-6)  # records are rounded to 6 decimals
    assert sum(v["dp_diag"] for v in la) == pytest.approx(aux["dp_diag"].item(), rel=1e-3, abs=5e-6)
    sim = rec["attention_similarity"]
    n = len(sim["layers"])
    assert len(sim["matrix"]) == n and all(sim["matrix"][i][i] == pytest.approx(1.0) for i in range(n))
    assert set(pics) == {layer["name"] for layer in rec["layers"]}


def test_gpsa_gates_recorded():
    model = mixerlab.create_model("convit_micro")
    rec, _ = analyze_model(model, torch.randn(2, 3, 32, 32), batch_size=2)
    assert list(rec["gpsa_gates"]) == ["b0", "b1", "b2", "b3"]
    g = rec["gpsa_gates"]["b0"]["gate"]
    assert len(g) == 4 and all(v == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-5) for v in g)


def test_analyze_cli_end_to_end(tmp_path):
    from mixerlab.cli.main import main
    out = tmp_path / "an"
    rc = main(["analyze", "deit_micro", "--data", "synthetic", "--num-images", "4", "--batch-size", "4",
               "--pictures", "2", "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "analysis.json").read_text())
    assert rec["model"] == "deit_micro" and len(rec["layers"]) == 5
    for f in ("attention_maps.png", "attention_similarity.png", "nonlocality.png", "feature_similarity.png"):
        assert (out / f).stat().st_size < 300_000
    assert "similar blocks" in (out / "summary.md").read_text()


def test_analyze_cli_never_overwrites_silently_and_defaults_to_the_run_folder(tmp_path, capsys, monkeypatch):
    from mixerlab.cli.main import main
    from mixerlab.engine import train
    from conftest_train import tiny_config
    out = tmp_path / "an"
    argv = ["analyze", "deit_micro", "--data", "synthetic", "--num-images", "2", "--batch-size", "2",
            "--pictures", "1", "--no-plots", "--out", str(out)]
    assert main(argv) == 0
    before = (out / "analysis.json").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2  # a second analysis into the same folder: refused, first one intact
    err = capsys.readouterr().err
    assert "already holds an analysis" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (out / "analysis.json").read_bytes() == before
    assert main(argv + ["--force"]) == 0
    run = tmp_path / "run"  # a run folder: the analysis goes under it by default
    train(tiny_config(), out_dir=run)
    monkeypatch.chdir(tmp_path)
    assert main(["analyze", str(run), "--num-images", "2", "--batch-size", "2", "--no-plots"]) == 0
    assert (run / "analysis" / "analysis.json").is_file() and not (tmp_path / "analysis").exists()


def test_analyze_cli_bad_input(tmp_path, capsys):
    from mixerlab.cli.main import main
    assert main(["analyze", "deit_mikro", "--out", str(tmp_path)]) == 2
    assert main(["analyze", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_corrupt_cached_analysis_is_named_and_recomputed(tmp_path):
    """A torn ``analysis-<n>.json`` ("Expecting value: line 2 column 1") is reported by name and
    treated as absent; a good one is returned as it is."""
    from mixerlab.analysis.report import read_cached_analysis

    model = mixerlab.create_model("lavit_micro")
    rec, _ = analyze_model(model, torch.randn(2, 3, 32, 32), batch_size=2)
    good = tmp_path / "analysis-2.json"
    good.write_text(json.dumps(rec))
    assert read_cached_analysis(good) == json.loads(json.dumps(rec))
    bad = tmp_path / "analysis-64.json"
    bad.write_text('{"model":\n')
    logs = []
    assert read_cached_analysis(bad, logs.append) is None
    assert len(logs) == 1 and str(bad) in logs[0] and "Expecting value" in logs[0]
    (tmp_path / "other.json").write_text("[1, 2]")
    assert read_cached_analysis(tmp_path / "other.json", logs.append) is None and "not an analysis" in logs[-1]


def test_analyze_refuses_another_commands_folder_and_a_timm_run_and_takes_a_run_as_weights(tmp_path, capsys):
    """Issue 31: analyze --out a run folder is refused (15); a timm:NAME run is refused in words
    (17); --weights RUN_FOLDER is accepted like the rest (19)."""
    from conftest_train import tiny_config
    from mixerlab.cli.main import main
    from mixerlab.engine import train
    run = tmp_path / "run"
    train(tiny_config(epochs=1), out_dir=run)
    small = ["--num-images", "2", "--batch-size", "2", "--no-plots"]
    before = sorted(p.name for p in run.iterdir())
    assert main(["analyze", str(run), *small, "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is a train folder" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before
    out = tmp_path / "w"
    assert main(["analyze", "deit_micro", "--weights", str(run)] + small + ["--out", str(out)]) == 0
    rec = json.loads((out / "analysis.json").read_text())
    assert rec["source"]["weights"].endswith("best.safetensors")
    timm_run = tmp_path / "timm"
    train(tiny_config(epochs=1, model="timm:resnet18", model_args={}, synthetic_size=32), out_dir=timm_run)
    capsys.readouterr()
    assert main(["analyze", str(timm_run), *small]) == 2
    err = capsys.readouterr().err
    assert "a timm model" in err and len(err.strip().splitlines()) == 1
