"""The training recipe: schedule, PCGrad, augmentations, a real short run, exact resume."""

import json

import pytest
import torch

from dsmn_host.data.augment import device_response, mixup, spec_augment
from dsmn_host.errors import DsmnError
from dsmn_host.training.train import RECIPE, lr_at, pcgrad_backward, train


def test_schedule_paper_defaults():
    lrs = [lr_at(e, RECIPE) for e in range(RECIPE["epochs"])]
    assert lrs[0] == pytest.approx(5e-5)
    assert lrs[5] == pytest.approx(1e-3)
    assert max(lrs) == pytest.approx(1e-3)
    assert lrs[-1] == pytest.approx(1e-6)
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6]))       # warm-up rises
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))       # cosine falls


def test_schedule_short_run_reaches_peak():
    recipe = dict(RECIPE, epochs=3)
    lrs = [lr_at(e, recipe) for e in range(3)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-6)


def test_pcgrad_projects_only_conflicting_gradients():
    p = torch.nn.Parameter(torch.zeros(2))
    # gradients (1, 0) and (-1, 1): conflicting (dot = -1)
    pcgrad_backward([p @ torch.tensor([1.0, 0.0]), p @ torch.tensor([-1.0, 1.0])], [p])
    g1 = torch.tensor([1.0, 0.0]) - (-1.0 / 2) * torch.tensor([-1.0, 1.0])
    g2 = torch.tensor([-1.0, 1.0]) - (-1.0 / 1) * torch.tensor([1.0, 0.0])
    torch.testing.assert_close(p.grad, g1 + g2)
    # agreeing gradients are simply summed
    pcgrad_backward([p @ torch.tensor([1.0, 0.0]), p @ torch.tensor([1.0, 1.0])], [p])
    torch.testing.assert_close(p.grad, torch.tensor([2.0, 1.0]))


def test_mixup_whole_and_half_batch():
    torch.manual_seed(0)
    x = torch.arange(8.0)[:, None, None].expand(8, 4, 3).clone()
    y = torch.nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    yc = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    xm, ym, ycm = mixup(x, y, yc, alpha=0.2, fraction=0.5)
    assert torch.equal(xm[4:], x[4:]) and torch.equal(ym[4:], y[4:])
    torch.testing.assert_close(ym.sum(1), torch.ones(8))
    torch.testing.assert_close(ycm.sum(1), torch.ones(8))
    # a mixed clip is the same convex combination of clips as its label is of labels
    torch.testing.assert_close(xm[:4, 0, 0], ym[:4, :8] @ torch.arange(8.0))
    xa, _, _ = mixup(x, y, yc, alpha=0.2, fraction=1.0)
    assert not torch.equal(xa, x)


def test_device_response_shifts_reference_clips_by_a_table_row():
    table = torch.randn(5, 256)
    logmel = torch.randn(64, 256, 44)
    is_ref = torch.arange(64) % 2 == 0
    torch.manual_seed(3)
    out = device_response(logmel, is_ref, table, skip_one_in=0)
    shift = out - logmel
    assert torch.equal(shift[~is_ref], torch.zeros_like(shift[~is_ref]))
    for row in shift[is_ref]:
        assert torch.allclose(row, row[:, :1].expand_as(row), atol=1e-6)   # constant over time
        assert min((row[:, 0] - t).abs().max() for t in table) < 1e-5      # one of the table rows
    # skipped one time in 13 on average, per batch
    skipped = sum(torch.equal(device_response(logmel, is_ref, table, 13), logmel) for _ in range(260))
    assert 5 <= skipped <= 45


def test_spec_augment_stripes():
    torch.manual_seed(0)
    x = torch.ones(200, 2, 256, 44)
    out = spec_augment(x, time_stripes=2, time_width=2, freq_stripes=2, freq_width=2)
    zero_rows = (out[:, 0].sum(dim=2) == 0).sum(dim=1)   # fully zeroed mel bins per clip
    zero_cols = (out[:, 0].sum(dim=1) == 0).sum(dim=1)   # fully zeroed frames per clip
    assert zero_rows.max() <= 4 and zero_cols.max() <= 4 and zero_rows.max() > 0 and zero_cols.max() > 0
    assert torch.equal(out[:, 0], out[:, 1])            # same stripes on both channels


def test_training_learns_and_writes_run_dir(trained_run_dir):
    from dsmn_host.data.features import open_features
    from dsmn_host.training.models import build_model
    from dsmn_host.training.train import evaluate

    lines = [json.loads(s) for s in (trained_run_dir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((trained_run_dir / "config.json").read_text())
    assert len(lines) == config["recipe"]["epochs"]
    for name in ("best.pt", "last.pt", "curves.png"):
        assert (trained_run_dir / name).stat().st_size > 0
    last = lines[-1]
    assert set(last["val_per_class"]) and set(last["val_per_device"]) >= {"a"}
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    # held out: better than the uniform guess ln(10) = 2.303 on unseen recording locations
    best = min(lines, key=lambda l: l["val_loss"])
    assert best["val_loss"] < 2.2, [round(l["val_loss"], 3) for l in lines]
    # the kept checkpoint, in eval mode, classifies its training clips well above chance (0.1)
    ckpt = torch.load(trained_run_dir / "best.pt", weights_only=False)
    assert ckpt["epoch"] == best["epoch"]
    model = build_model("model1")
    model.load_state_dict(ckpt["model"])
    cache = open_features(config["cache"])
    train_acc = evaluate(model, cache, cache.indices("train"), torch.device("cpu"))["acc"]
    assert train_acc >= 0.3, train_acc


RESUME_RECIPE = {"epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def straight_run(feature_cache_dir, tmp_path_factory):
    """2 uninterrupted epochs, the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight") / "straight"
    train(feature_cache_dir, out, "model1", RESUME_RECIPE, seed=5, threads=1, progress=False)
    return out


def test_resume_equals_uninterrupted(feature_cache_dir, tmp_path, straight_run):
    recipe = RESUME_RECIPE
    (tmp_path / "straight").symlink_to(straight_run)
    train(feature_cache_dir, tmp_path / "killed", "model1", recipe, seed=5, threads=1, progress=False,
          stop_after=1)
    with pytest.raises(DsmnError, match="--resume"):
        train(feature_cache_dir, tmp_path / "killed", "model1", recipe, progress=False)
    train(None, tmp_path / "killed", resume=True, threads=1, progress=False)
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    strip = lambda p: [{k: v for k, v in json.loads(s).items() if not k.startswith("train_seconds")  # noqa: E731
                        and k != "train_clips_per_s"} for s in p.read_text().splitlines()]
    assert strip(tmp_path / "straight" / "metrics.jsonl") == strip(tmp_path / "killed" / "metrics.jsonl")


def test_resume_without_run_is_user_error(tmp_path):
    with pytest.raises(DsmnError, match="nothing to resume"):
        train(None, tmp_path / "empty", resume=True, progress=False)


# --- bad input and kills (issue 14): one-line errors, nothing written, no journal ahead of last.pt

def _cli(argv, capsys):
    from dsmn_host.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:      # argparse rejects the option itself
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_train_into_existing_run_refuses(feature_cache_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")         # a run killed in its first epoch counts too
    before = sorted(p.name for p in run.iterdir())
    code, err = _cli(["train", "--data", feature_cache_dir, "--out", run, "--epochs", "1"], capsys)
    assert code == 2 and len(err) == 1
    assert "already holds a run (config.json)" in err[0] and "--resume" in err[0]
    assert sorted(p.name for p in run.iterdir()) == before


def test_train_out_is_a_file(feature_cache_dir, tmp_path, capsys):
    f = tmp_path / "not-a-dir"
    f.write_text("x")
    code, err = _cli(["train", "--data", feature_cache_dir, "--out", f], capsys)
    assert code == 2 and len(err) == 1 and f"--out {f}: is a file" in err[0]
    code, err = _cli(["train", "--data", feature_cache_dir, "--out", f / "run"], capsys)
    assert code == 2 and len(err) == 1 and "is a file, not a directory" in err[0]
    assert f.read_text() == "x"


@pytest.mark.parametrize("option", ["--epochs", "--batch-size", "--threads"])
def test_train_zero_counts_are_refused(feature_cache_dir, tmp_path, capsys, option):
    code, err = _cli(["train", "--data", feature_cache_dir, "--out", tmp_path / "r", option, "0"], capsys)
    assert code == 2 and f"{option}: 0: must be at least 1" in err[-1]
    assert not (tmp_path / "r").exists()
    with pytest.raises(DsmnError, match="--epochs 0: must be at least 1"):
        train(feature_cache_dir, tmp_path / "r", recipe={"epochs": 0}, progress=False)


def test_train_has_no_worker_processes(feature_cache_dir, tmp_path, capsys):
    """train reads batches from the memory-mapped cache in the training process (features
    decoding is `dsmn-host features --workers`): an unknown option, said in one line of usage."""
    code, err = _cli(["train", "--data", feature_cache_dir, "--out", tmp_path / "r", "--workers", "0"], capsys)
    assert code == 2 and "unrecognized arguments: --workers 0" in err[-1]


def test_amp_and_compile_need_cuda(feature_cache_dir, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: --amp/--compile are allowed here")
    for kwargs in ({"amp": "bf16"}, {"compile": True}):
        with pytest.raises(DsmnError, match="CUDA options"):
            train(feature_cache_dir, tmp_path / "r", recipe={"epochs": 1}, device="cpu", progress=False, **kwargs)
    assert not (tmp_path / "r").exists()


def test_kill_between_checkpoint_and_journal_line(feature_cache_dir, tmp_path, straight_run):
    """last.pt is written before the epoch's metrics line; a kill between the two leaves a
    checkpoint one epoch ahead of the journal, and --resume restores the line from last.pt."""
    recipe = RESUME_RECIPE
    (tmp_path / "straight").symlink_to(straight_run)
    run = tmp_path / "killed"
    train(feature_cache_dir, run, "model1", recipe, seed=5, threads=1, progress=False, stop_after=1)
    (run / "metrics.jsonl").write_text("")        # the line that a kill would not have written
    assert torch.load(run / "last.pt", weights_only=False)["epoch"] == 0
    train(None, run, resume=True, threads=1, progress=False)
    strip = lambda p: [{k: v for k, v in json.loads(s).items() if not k.startswith("train_seconds")  # noqa: E731
                        and k != "train_clips_per_s"} for s in p.read_text().splitlines()]
    assert strip(tmp_path / "straight" / "metrics.jsonl") == strip(run / "metrics.jsonl")
