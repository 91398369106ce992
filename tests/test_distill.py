"""Knowledge distillation: the loss, teacher logits keyed by clip name, the converter."""

import json

import numpy as np
import pytest
import torch

from dsmn_host.training.distill import FORMAT, convert_logits, kd_loss, read_logits, teacher_targets, write_logits
from dsmn_host.errors import DsmnError
from dsmn_host.training.teachers import teacher_logits
from dsmn_host.data.tau import SCENES
from dsmn_host.training.train import soft_cross_entropy_sum, train

SHORT = {"epochs": 1, "batch_size": 8, "optimizer": "adam", "lr": 3e-3, "mixup_alpha": 0.2}


@pytest.fixture(scope="module")
def teacher_run(feature_cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(feature_cache_dir, out, "model1", SHORT, seed=1, threads=1, progress=False)
    return out


@pytest.fixture(scope="module")
def logits_file(teacher_run, feature_cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("logits") / "teachers.npz"
    teacher_logits([teacher_run, teacher_run], feature_cache_dir, out, threads=1)
    return out


def test_kd_loss_is_temperature_scaled_kl():
    torch.manual_seed(0)
    s, t = torch.randn(6, 10), torch.randn(6, 10)
    temp = 2.0
    p = torch.softmax(t / temp, 1)
    ref = temp ** 2 * torch.nn.functional.kl_div(torch.log_softmax(s / temp, 1), p, reduction="sum")
    torch.testing.assert_close(kd_loss(s, p, temp), ref)
    assert float(kd_loss(t, p, temp)) == pytest.approx(0.0, abs=1e-5)     # student = teacher: no loss


def test_teacher_logits_file(logits_file, teacher_run, feature_cache_dir):
    from dsmn_host.data.features import logmel_to_input, open_features
    from dsmn_host.training.models import build_model

    with np.load(logits_file) as z:
        assert str(z["format"]) == FORMAT and list(z["labels"]) == list(SCENES)
    names, logits, info = read_logits(logits_file)
    cache = open_features(feature_cache_dir)
    rows = np.sort(cache.indices("train"))
    assert names == [str(cache.filename[r]) for r in rows]
    assert len(info["runs"]) == 2
    # no augmentation, eval mode: exactly the teacher's forward pass (the mean of two equal runs)
    net = build_model("model1")
    net.load_state_dict(torch.load(teacher_run / "best.pt", weights_only=False)["model"])
    with torch.no_grad():
        ref = net.eval()(logmel_to_input(torch.from_numpy(np.asarray(cache.logmel[rows[:5]]))))[:, :10]
    np.testing.assert_allclose(logits[:5], ref.numpy(), rtol=1e-5, atol=1e-5)


def test_teacher_logits_refuse_clips_they_do_not_have(teacher_run, feature_cache_dir, tmp_path):
    from dsmn_host.data.features import open_features

    only_eval = tmp_path / "eval_only.npz"
    teacher_logits([teacher_run], feature_cache_dir, only_eval, split="evaluate", threads=1)
    cache = open_features(feature_cache_dir)
    first = sorted(str(cache.filename[r]).rsplit("/", 1)[-1] for r in cache.indices("train"))[0]
    with pytest.raises(DsmnError, match=f"no teacher logits for .* training clips: .*{first}"):
        teacher_targets(only_eval, cache, np.sort(cache.indices("train")), 2.0)
    with pytest.raises(DsmnError, match="no teacher logits for"):
        train(feature_cache_dir, tmp_path / "student", "model1", {**SHORT, "teacher_logits": str(only_eval)},
              threads=1, progress=False)
    assert not (tmp_path / "student").exists()      # refused before anything was written


def test_kd_weight_zero_is_the_label_only_run(logits_file, feature_cache_dir, tmp_path):
    """With weight 0 the distillation term vanishes exactly: same weights as no teacher at all
    (mixup on, so teacher targets ride through mixup without disturbing the label path)."""
    train(feature_cache_dir, tmp_path / "plain", "model1", SHORT, seed=4, threads=1, progress=False)
    train(feature_cache_dir, tmp_path / "kd0", "model1",
          {**SHORT, "teacher_logits": str(logits_file), "kd_weight": 0.0}, seed=4, threads=1, progress=False)
    train(feature_cache_dir, tmp_path / "kd", "model1",
          {**SHORT, "teacher_logits": str(logits_file), "kd_weight": 0.5}, seed=4, threads=1, progress=False)
    a, b, c = (torch.load(tmp_path / n / "last.pt", weights_only=False)["model"] for n in ("plain", "kd0", "kd"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)         # and the weight does something
    config = json.loads((tmp_path / "kd" / "config.json").read_text())
    assert config["teacher"]["clips"] == len(read_logits(logits_file)[0]) and len(config["teacher"]["sha256"]) == 64


def test_mixup_mixes_teacher_targets_like_labels():
    """train.py sends teacher probabilities through mixup beside the one-hot labels, so a mixed
    clip's teacher target is the same convex combination as its label."""
    from dsmn_host.data.augment import mixup

    x = torch.randn(8, 4, 3)
    y = torch.nn.functional.one_hot(torch.arange(8), 10).float()
    p = torch.softmax(torch.randn(8, 10), 1)
    torch.manual_seed(5)
    _, ym, _ = mixup(x, torch.cat([y, p], 1), y[:, :3], alpha=0.4)
    torch.manual_seed(5)
    lam = torch.distributions.Beta(0.4, 0.4).sample()
    perm = torch.randperm(8)
    torch.testing.assert_close(ym[:, :10], lam * y + (1 - lam) * y[perm])
    torch.testing.assert_close(ym[:, 10:], lam * p + (1 - lam) * p[perm])


def test_convert_external_logits_maps_labels_by_name(tmp_path, logits_file):
    names, logits, _ = read_logits(logits_file)
    order = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5]
    theirs = [SCENES[i].replace("_", "-").upper() for i in order]          # another spelling and order
    bare = [n.rsplit("/", 1)[-1] for n in names]                           # keyed by base name
    torch.save({"files": bare, "outputs": torch.from_numpy(logits[:, order]), "classes": theirs},
               tmp_path / "published.pt")
    convert_logits(tmp_path / "published.pt", tmp_path / "ours.npz")
    n2, l2, _ = read_logits(tmp_path / "ours.npz")
    assert n2 == bare
    np.testing.assert_array_equal(l2, logits)
    # a dict of file name -> logits, label order given on the command line
    np.savez(tmp_path / "dict.npz", **{b: logits[i, order] for i, b in enumerate(bare[:3])})
    with pytest.raises(DsmnError, match="does not name its label order"):
        convert_logits(tmp_path / "dict.npz", tmp_path / "d.npz")
    convert_logits(tmp_path / "dict.npz", tmp_path / "d.npz", labels=theirs)
    np.testing.assert_array_equal(read_logits(tmp_path / "d.npz")[1], logits[:3])
    with pytest.raises(DsmnError, match="unknown scene label.*beach"):
        convert_logits(tmp_path / "dict.npz", tmp_path / "x.npz", labels=["beach"] + theirs[1:])
    with pytest.raises(DsmnError, match="not a dsmn-teacher-logits/1 file"):
        read_logits(tmp_path / "dict.npz")


def test_logits_cli_errors(tmp_path, capsys):
    from dsmn_host.cli import main

    assert main(["teacher-logits", str(tmp_path / "nope"), "--data", str(tmp_path), "--out",
                 str(tmp_path / "t.npz")]) == 2
    assert main(["convert-logits", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "o.npz")]) == 2
    write_logits(tmp_path / "ok.npz", ["audio/a.wav"], np.zeros((1, 10)), {})
    with pytest.raises(DsmnError, match=r"written as \.npz"):
        write_logits(tmp_path / "bad", ["a"], np.zeros((1, 10)), {})
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("dsmn-host ") for line in err), err
