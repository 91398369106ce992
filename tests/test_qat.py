"""BatchNorm folding, the fake quantizers, and a real QAT pass over the shared trained run."""

import json

import numpy as np
import pytest
import torch

from dsmn_host.training.checkpoints import export_ready_model, load_qat_model
from dsmn_host.training.deploy_form import equalize, fold_batchnorm
from dsmn_host.training.fakequant import FakeQuantAct, FakeQuantWeight, act_quantizers, prepare_qat
from dsmn_host.data.features import logmel_to_input, open_features
from dsmn_host.training.models import QPoint, build_model


def _randomise_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
    return model


@pytest.mark.parametrize("name", ["model1", "model3"])
def test_fold_batchnorm_preserves_outputs(name):
    torch.manual_seed(0)
    net = _randomise_bn(build_model(name)).eval()
    folded = fold_batchnorm(net).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(4, 2, 256, 44)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-4)
    # the folded skeleton of a fresh model accepts the folded state dict
    fold_batchnorm(build_model(name)).load_state_dict(folded.state_dict())
    # per-channel scalar convs (sep1, sep2) are folded away with their quantization point;
    # sep3's channel conv mixes two channels per output and stays
    for block in folded.blocks:
        for sep in (block.sep1, block.sep2):
            assert isinstance(sep.ch_conv, torch.nn.Identity) and not isinstance(sep.q_ch, QPoint)
        assert isinstance(block.sep3.ch_conv, torch.nn.Conv2d) and isinstance(block.sep3.q_ch, QPoint)


def test_sparable_kernels_become_one_cross_kernel_whose_corners_stay_zero():
    """Each Sparable computes its two partial convs as one 3x3 dilation-2 kernel; only the sum
    has a quantization point, and QAT's updates never give the corners a weight."""
    torch.manual_seed(0)
    folded = fold_batchnorm(_randomise_bn(build_model("model1")).eval())
    seps = [sep for b in folded.blocks for sep in (b.sep1, b.sep2, b.sep3)]
    for sep in seps:
        assert sep.time_conv is None and sep.mel_conv is None and sep.q_time is None and sep.q_mel is None
        assert sep.cross.kernel_size == (3, 3) and sep.cross.dilation == (2, 2) and sep.cross.padding == (2, 2)
    names = set(act_quantizers(prepare_qat(fold_batchnorm(build_model("model1")))))
    assert not any("q_time" in n or "q_mel" in n for n in names)
    q = prepare_qat(folded).train()
    opt = torch.optim.Adam(q.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        q(torch.randn(2, 2, 256, 44)).square().mean().backward()
        opt.step()
    corners = [(0, 0), (0, 2), (2, 0), (2, 2)]
    for sep in seps:
        for w in (sep.cross.weight, sep.cross.parametrizations.weight.original):
            assert all(float(w[:, 0, i, j].abs().max()) == 0.0 for i, j in corners)
        assert float(sep.cross.parametrizations.weight.original[:, 0, 1, :].abs().sum()) > 0


@pytest.mark.parametrize("name", ["model1", "model3"])
def test_equalize_is_exact_and_evens_out_channel_ranges(name):
    """Cross-layer equalization changes no output and shrinks the per-tensor/per-channel
    range ratio where it acts (here: the stem output, made badly imbalanced on purpose)."""
    torch.manual_seed(0)
    net = _randomise_bn(build_model(name)).eval()
    with torch.no_grad():
        net.stem.weight[:8].mul_(0.01)
        net.stem.bias[:8].mul_(0.01)
    folded = fold_batchnorm(net).eval()
    x = torch.randn(16, 2, 256, 44)

    def imbalance(model):
        with torch.no_grad():
            y = model.stem(x.transpose(2, 3)).abs().amax(dim=(0, 2, 3))
        return float(y.max() / y.min())

    before = imbalance(folded)
    with torch.no_grad():
        ref = folded(x)
        gains = equalize(folded, x)
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    assert gains["stem"] > 1 and set(gains) >= {"blocks.0.sep1", "blocks.0.sep2"}
    assert imbalance(folded) < before / 5, (before, imbalance(folded))


def test_weight_quantizer_is_per_channel_symmetric_int8():
    w = torch.randn(6, 4, 3, 1) * torch.arange(1, 7).float()[:, None, None, None]
    q = FakeQuantWeight()(w)
    for c in range(6):
        scale = w[c].abs().max() / 127
        levels = q[c] / scale
        torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)
        assert levels.abs().max() <= 127 + 1e-4
        assert torch.isclose(q[c].abs().max(), w[c].abs().max(), rtol=1e-5)
    assert (q - w).abs().max() > 0


def test_activation_quantizer_asymmetric_grid_with_exact_zero():
    fq = FakeQuantAct()
    fq.train()
    x = torch.linspace(-0.5, 3.0, 1000)
    fq(x)  # observe: the range is this batch's min/max
    fq.observe, fq.quantize = False, True
    y = fq(x)
    scale = 3.5 / 255
    assert len(torch.unique(y)) <= 256
    assert fq(torch.zeros(3)).abs().max() == 0
    assert (y - x).abs().max() <= scale / 2 + 1e-6
    # gradients pass inside the range and stop outside it (straight-through estimator)
    z = torch.tensor([1.0, 10.0], requires_grad=True)
    fq(z).sum().backward()
    assert z.grad.tolist() == [1.0, 0.0]


def test_prepare_replaces_every_qpoint():
    net = prepare_qat(fold_batchnorm(build_model("model2")))
    assert not any(isinstance(m, QPoint) for m in net.modules())
    names = set(act_quantizers(net))
    assert "q_input" in names and "blocks.0.att.q_gate" in names


def test_qat_run_and_export_ready_model(trained_run_dir, learnable_cache_dir, calibration_cache_dir):
    report = json.loads((trained_run_dir / "qat_metrics.json").read_text())
    for key in ("float", "post_training_quant", "qat"):
        assert 0.0 <= report[key]["acc"] <= 1.0 and np.isfinite(report[key]["loss"])
    # the kept state is the best by validation loss, the calibrated network included (epoch -1)
    assert -1 <= report["kept_epoch"] < len(report["history"])
    assert report["qat"]["loss"] <= report["post_training_quant"]["loss"] + 1e-6
    assert report["qat"]["loss"] <= min(h["val_loss"] for h in report["history"]) + 1e-6
    # folding BN changes nothing measurable
    assert abs(report["float_bn_folded"]["loss"] - report["float"]["loss"]) < 1e-4

    model, info = export_ready_model(trained_run_dir)
    assert info["qat"] is True and info["model"] == "model1"
    assert not model.training
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all("parametrizations" not in k for k in model.state_dict())
    qmodel, qinfo = load_qat_model(trained_run_dir)
    assert set(qinfo["act_ranges"]) == set(act_quantizers(qmodel))
    lo, hi = qinfo["act_ranges"]["q_input"]
    assert lo < 0 < hi  # the normalised input spans both signs
    # QAT's ranges are the converter's: min/max over the same (clipped) calibration inputs
    from dsmn_host.data.calib import calibration_inputs

    assert report["calibration_data"] == str(calibration_cache_dir) == report["settings"]["calib"]
    calib, clip = calibration_inputs(calibration_cache_dir, with_clip=True)
    assert [lo, hi] == pytest.approx(clip, rel=1e-6) and calib.min() == clip[0] and calib.max() == clip[1]

    # real validation inputs: the quantizers' ranges were observed on inputs like these
    cache = open_features(learnable_cache_dir, build=False)
    idx = cache.indices("fold1_evaluate")[:5]
    x = torch.from_numpy(logmel_to_input(np.asarray(cache.logmel[idx])))
    with torch.no_grad():
        float_out = model(x.transpose(2, 3).contiguous())   # time × mel layout
        fake_out = qmodel(x)                                 # feature layout
    assert float_out.shape == (5, 13)
    # quantization is really on (the outputs move) ...
    assert (fake_out - float_out).abs().max() > 0
    # ... and QAT keeps the accuracy: at most 6 of the 60 validation clips lost against float
    assert report["qat"]["acc"] >= report["float"]["acc"] - 0.10, report


def test_qat_resume_equals_uninterrupted(trained_run_dir, qat_starts):
    """A 2-epoch QAT stopped after epoch 1 (as if killed) and resumed from qat_last.pt ends with
    the same qat.pt and report as the uninterrupted 2-epoch QAT; --resume refuses changed
    settings, a missing checkpoint and a finished QAT, and a fresh run refuses to overwrite an
    unfinished one."""
    from dsmn_host.errors import DsmnError
    from dsmn_host.training.qat import run_qat

    runs = qat_starts(trained_run_dir, "whole", "resumed")
    args = {"epochs": 2, "calibration_inputs": 16, "seed": 1, "threads": 1, "progress": False}
    with pytest.raises(DsmnError, match="nothing to resume"):
        run_qat(runs["resumed"], resume=True, threads=1, progress=False)
    run_qat(runs["whole"], **args)
    run_qat(runs["resumed"], **args, stop_after=1)
    assert {p.name for p in runs["resumed"].iterdir()} == {"config.json", "best.pt", "qat_last.pt"}
    assert torch.load(runs["resumed"] / "qat_last.pt", weights_only=False)["epoch"] == 0
    with pytest.raises(DsmnError, match="unfinished QAT"):
        run_qat(runs["resumed"], **args)
    with pytest.raises(DsmnError, match=r"--epochs 3 \(the QAT in .* uses 2\)"):
        run_qat(runs["resumed"], epochs=3, resume=True, threads=1, progress=False)
    run_qat(runs["resumed"], resume=True, threads=1, progress=False)   # settings from qat_last.pt
    assert {p.name for p in runs["resumed"].iterdir()} == {"config.json", "best.pt", "qat.pt", "qat_metrics.json"}
    with pytest.raises(DsmnError, match="already finished"):
        run_qat(runs["resumed"], resume=True, threads=1, progress=False)

    ra = json.loads((runs["whole"] / "qat_metrics.json").read_text())
    rb = json.loads((runs["resumed"] / "qat_metrics.json").read_text())
    assert len(rb["history"]) == 2
    # one process, same seeds per epoch: the metrics are equal, not merely close
    for key in ("settings", "float", "float_bn_folded", "post_training_quant", "qat", "kept_epoch"):
        assert rb[key] == ra[key], key
    for ha, hb in zip(ra["history"], rb["history"]):
        for key in ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"):
            assert hb[key] == ha[key], key
    a = torch.load(runs["whole"] / "qat.pt", weights_only=False)
    b = torch.load(runs["resumed"] / "qat.pt", weights_only=False)
    assert b["act_ranges"] == a["act_ranges"] and b["kept_epoch"] == a["kept_epoch"] >= 0
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-6, atol=1e-7, msg=key)


def test_qat_names_missing_calibration_data(trained_run_dir, qat_starts, tmp_path):
    """--calib pointing nowhere is refused by name before any evaluation, and writes nothing."""
    from dsmn_host.errors import DsmnError
    from dsmn_host.training.qat import run_qat

    run = qat_starts(trained_run_dir, "r")["r"]
    with pytest.raises(DsmnError, match="missing.features: no such calibration data"):
        run_qat(run, calib=tmp_path / "missing.features", threads=1, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "config.json"]
