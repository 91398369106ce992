"""Distributed training under torchrun (2 CPU processes, gloo): one set of outputs, the same
first-epoch weights as one process on the same global batch, resume, PCGrad's order, and QAT."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dsmn_host.training.train import pcgrad_backward, train

# the full paper recipe (RAdam, mixup, device response, SpecAugment, PCGrad, dropout, BatchNorm)
# on the tiny set: global batch 8 = 2 processes x 4
RECIPE = {"epochs": 2, "batch_size": 8}
ARGS = ["--epochs", "2", "--batch-size", "8", "--seed", "3", "--threads", "1", "--no-progress"]
RUN_FILES = {"config.json", "best.pt", "last.pt", "metrics.jsonl", "curves.png"}
# Float sums in another order (per-rank partial sums, then all_reduce) make the runs differ by
# rounding, amplified where the loss barely depends on a weight: measured after one epoch, every
# tensor is within 11 % of its own update (mostly < 1 %) and the training loss within 2e-6
# relative, while BatchNorm on per-rank statistics (--no-sync-batchnorm) puts weights 280 % of
# their update apart, and a wrong batch, augmentation or dropout row changes the loss at 1e-3.
# Not compared: weights the loss is invariant to up to BatchNorm's eps, whose gradients are
# rounding noise in any two runs (biases feeding a BatchNorm; the per-channel scalars before a
# Sparable's depthwise convs and BatchNorm).
UPDATE_FRACTION = 0.25
INVARIANT = ("out_conv.bias", ".ch_conv.weight")


def torchrun(*args, timeout=300):
    """`torchrun --standalone --nproc_per_node 2 -m dsmn_host ARGS` (gloo on CPU, one thread each)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "host")] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dsmn_host", *map(str, args)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def initial_state(seed=3):
    from dsmn_host.training.models import build_model

    torch.manual_seed(seed)   # what train() does before building the network
    return build_model("model1").state_dict()


def assert_same_training(a, b, init):
    assert set(a) == set(b)
    for key in a:
        if not a[key].dtype.is_floating_point:
            assert torch.equal(a[key], b[key]), key
        elif not key.endswith(INVARIANT):   # weights and BatchNorm running statistics
            diff, update = float((a[key] - b[key]).norm()), float((a[key] - init[key]).norm())
            assert diff <= UPDATE_FRACTION * update + 1e-6, (key, diff, update)


@pytest.fixture(scope="module")
def single_first_epoch(feature_cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "single"
    train(feature_cache_dir, out, "model1", RECIPE, seed=3, threads=1, progress=False, stop_after=1)
    return out


@pytest.fixture(scope="module")
def ddp_first_epoch(feature_cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "ddp"
    proc = torchrun("train", "--data", feature_cache_dir, "--out", out, *ARGS, "--stop-after", "1")
    return out, proc


def test_torchrun_writes_one_set_of_outputs(ddp_first_epoch):
    out, proc = ddp_first_epoch
    assert {p.name for p in out.iterdir()} == RUN_FILES          # nothing half-written, no per-rank copies
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["processes"] == 2 and record["epoch"] == 0
    assert json.loads((out / "config.json").read_text())["processes"] == 2
    assert proc.stderr.count("Traceback") == 0


def test_first_epoch_equals_one_process_on_the_global_batch(ddp_first_epoch, single_first_epoch):
    out, _ = ddp_first_epoch
    a = torch.load(single_first_epoch / "last.pt", weights_only=False)
    b = torch.load(out / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 0
    assert_same_training(a["model"], b["model"], initial_state())   # weights and BatchNorm statistics
    ra = json.loads((single_first_epoch / "metrics.jsonl").read_text())
    rb = json.loads((out / "metrics.jsonl").read_text())
    assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=2e-5)
    assert rb["train_acc"] == ra["train_acc"]
    assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-4)


def test_resume_under_torchrun_continues_like_one_process(ddp_first_epoch, single_first_epoch, feature_cache_dir):
    out, _ = ddp_first_epoch
    train(None, single_first_epoch, resume=True, threads=1, progress=False)
    torchrun("train", "--out", out, "--resume", "--threads", "1", "--no-progress")
    a = torch.load(single_first_epoch / "last.pt", weights_only=False)
    b = torch.load(out / "last.pt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    assert_same_training(a["model"], b["model"], initial_state())
    assert [json.loads(s)["epoch"] for s in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_pcgrad_reduces_each_head_before_projecting():
    """Two 'ranks' each holding half of a batch: PCGrad of the head gradients summed over ranks is
    PCGrad of the whole batch; projecting per rank and then summing is not."""
    w = torch.nn.Parameter(torch.zeros(2))
    # per-clip gradients of the two heads: rank 0's conflict, rank 1's agree, the sums are orthogonal
    ga = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    gb = torch.tensor([[-1.0, 1.0], [1.0, 1.0]])

    def losses(rows):
        return [w @ ga[rows].sum(0), w @ gb[rows].sum(0)]

    pcgrad_backward(losses(slice(0, 2)), [w])
    whole = w.grad.clone()
    torch.testing.assert_close(whole, torch.tensor([2.0, 2.0]))
    halves = [slice(0, 1), slice(1, 2)]
    stacked = []
    for h in halves:   # each rank's unreduced task gradients
        pcgrad_backward(losses(h), [w], reduce=lambda t: stacked.append(t.clone()))
    other = {0: stacked[1], 1: stacked[0]}
    for r, h in enumerate(halves):   # the all_reduce: add the other rank's
        pcgrad_backward(losses(h), [w], reduce=lambda t, r=r: t.add_(other[r]))
        torch.testing.assert_close(w.grad, whole)
    per_rank = torch.zeros(2)
    for h in halves:
        pcgrad_backward(losses(h), [w])
        per_rank += w.grad
    torch.testing.assert_close(per_rank, torch.tensor([2.5, 2.5]))   # the other order: not the same step


def test_qat_under_torchrun_writes_once_and_equals_one_process(single_first_epoch, qat_starts):
    """`torchrun ... qat RUN_DIR`: one qat.pt and qat_metrics.json, and the one fine-tuning epoch of
    2 processes x 4 clips equals one process on the same global batch of 8. Both start from the
    same float run (copies of the one-process run's best.pt), so only the split differs."""
    from dsmn_host.training.qat import run_qat

    runs = qat_starts(single_first_epoch, "single", "ddp")
    qat_args = {"epochs": 1, "calibration_inputs": 16, "seed": 3}
    run_qat(runs["single"], **qat_args, threads=1, progress=False)
    proc = torchrun("qat", runs["ddp"], "--epochs", "1", "--calibration-inputs", "16", "--seed", "3",
                    "--threads", "1", "--no-progress")
    assert {p.name for p in runs["ddp"].iterdir()} == {"config.json", "best.pt", "qat.pt", "qat_metrics.json"}
    assert proc.stdout.count("after QAT") == 1                    # rank 0 reports, once
    ra = json.loads((runs["single"] / "qat_metrics.json").read_text())
    rb = json.loads((runs["ddp"] / "qat_metrics.json").read_text())
    assert (ra["processes"], rb["processes"]) == (1, 2)
    for key in ("float", "float_bn_folded", "post_training_quant"):   # same start, before any step
        assert rb[key] == ra[key], key
    (ha,), (hb,) = ra["history"], rb["history"]
    assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=2e-5)
    assert hb["train_acc"] == ha["train_acc"]
    assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-4)
    a = torch.load(runs["single"] / "qat.pt", weights_only=False)
    b = torch.load(runs["ddp"] / "qat.pt", weights_only=False)
    assert a["kept_epoch"] == b["kept_epoch"] == 0   # the fine-tuned weights are compared, not the start
    # (6 Adam steps at lr 1e-4 move weights ~6e-4; the tolerance is well below that)
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-5, msg=key)


def _global_bn_rank(rank, init_file, x, out):
    import torch.distributed as dist

    from dsmn_host.training.distributed import GlobalBatchNorm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    bn = GlobalBatchNorm(x.shape[1], momentum=1.0).train()
    y = bn(x[rank * 2:(rank + 1) * 2])
    out[rank] = {"mean": bn.running_mean.clone(), "var": bn.running_var.clone(), "dtype": str(y.dtype)}
    dist.destroy_process_group()


def test_global_batchnorm_statistics_in_float32_for_half_activations(tmp_path):
    """Under --amp, BatchNorm receives bf16/fp16 activations: the global statistics are still
    accumulated in float32 (a bf16 mean near 10 has a step of 0.06), and the output keeps the
    input's dtype, as cuDNN's BatchNorm does."""
    import torch.multiprocessing as mp

    torch.manual_seed(0)
    x = (10 + torch.randn(4, 3, 8, 16)).to(torch.bfloat16)
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_global_bn_rank, args=(str(tmp_path / "rdzv"), x, out), nprocs=2)
        out = dict(out)
    ref = x.double()
    mean, var = ref.mean((0, 2, 3)), ref.var((0, 2, 3), unbiased=True)
    for rank in (0, 1):
        torch.testing.assert_close(out[rank]["mean"].double(), mean, rtol=1e-6, atol=0)
        torch.testing.assert_close(out[rank]["var"].double(), var, rtol=1e-5, atol=0)
        assert out[rank]["dtype"] == "torch.bfloat16"


def test_qat_resume_under_torchrun_continues_like_one_process(single_first_epoch, qat_starts):
    """A 2-epoch QAT under torchrun stopped after epoch 1, then resumed under torchrun: every
    rank loads qat_last.pt, rank 0 alone writes, and the result equals the uninterrupted
    2-epoch QAT of one process on the same global batch (one-process resume is exact:
    tests/test_qat.py)."""
    from dsmn_host.training.qat import run_qat

    runs = qat_starts(single_first_epoch, "single", "ddp")
    run_qat(runs["single"], epochs=2, calibration_inputs=16, seed=3, threads=1, progress=False)
    torchrun("qat", runs["ddp"], "--epochs", "2", "--calibration-inputs", "16", "--seed", "3",
             "--threads", "1", "--no-progress", "--stop-after", "1")
    assert {p.name for p in runs["ddp"].iterdir()} == {"config.json", "best.pt", "qat_last.pt"}
    proc = torchrun("qat", runs["ddp"], "--resume", "--threads", "1", "--no-progress")
    assert {p.name for p in runs["ddp"].iterdir()} == {"config.json", "best.pt", "qat.pt", "qat_metrics.json"}
    assert proc.stdout.count("after QAT") == 1
    ra = json.loads((runs["single"] / "qat_metrics.json").read_text())
    rb = json.loads((runs["ddp"] / "qat_metrics.json").read_text())
    assert rb["processes"] == 2 and rb["settings"] == ra["settings"]
    assert [h["epoch"] for h in rb["history"]] == [0, 1]
    for ha, hb in zip(ra["history"], rb["history"]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=2e-5)
        assert hb["train_acc"] == ha["train_acc"]
        assert hb["val_loss"] == pytest.approx(ha["val_loss"], rel=1e-4)
    a = torch.load(runs["single"] / "qat.pt", weights_only=False)
    b = torch.load(runs["ddp"] / "qat.pt", weights_only=False)
    assert a["kept_epoch"] == b["kept_epoch"] >= 0   # fine-tuned weights are compared, not the start
    for key in a["model"]:
        torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-4, atol=1e-5, msg=key)
