"""`dsmn-host qat RUN_DIR`: quantization-aware fine-tuning that models the int8 TFLite graph.

What the int8 model will do, and how it is simulated here:
- the network is first put in the form the int8 graph computes (`fold_batchnorm`: BN folded,
  per-channel scalars folded into the depthwise convs; `equalize`: channel ranges balanced by
  exact rescaling), so the weights that get quantized are the ones the converter sees;
- weights: per-output-channel symmetric int8 in [-127, 127] (TFLite's scheme), re-derived from
  the current weights at every step;
- activations: per-tensor asymmetric int8 at every tensor the TFLite graph materialises (the
  `QPoint`s of dsmn_host.training.models), ranges = min/max over the converter's calibration inputs
  (inputs clipped as the converter's are), refreshed after every epoch; the sigmoid gate uses
  TFLite's fixed LOGISTIC output quantization (scale 1/256, zero point −128);
- rounding uses the straight-through estimator (gradients pass inside the range, stop outside).

A killed QAT continues with `--resume`: after every epoch `qat_last.pt` holds the fine-tuned
network (weights and activation ranges), Adam's state, the best state so far, the history and
the settings; each epoch's random draws are seeded from (seed, epoch), as in `train`, so a
resumed QAT equals an uninterrupted one. `qat_last.pt` is removed once `qat.pt` and
`qat_metrics.json` are written, so a finished QAT is never redone by `--resume`.

The checkpoint `qat.pt` stores plain float weights of the folded network (they quantize to
exactly the int8 values QAT saw) and the activation ranges, so the export stage builds an
ordinary float graph. This module is the training loop; the network form lives in `deploy_form`,
the fake quantizers and their ranges in `fakequant`, reading the checkpoints back in
`checkpoints`: later stages import those, never this training module.
"""

import copy
import json
import os
from pathlib import Path

from dsmn_host.data.calib import DEFAULT_CALIB
from dsmn_host.training.checkpoints import DEPLOY_FORM
from dsmn_host.errors import DsmnError

QAT_DEFAULTS = {"epochs": 10, "lr": 1e-4, "min_lr": 1e-6, "calibration_inputs": DEFAULT_CALIB}
LAST = "qat_last.pt"


def _ranges_state(qmodel):
    """The activation ranges as tensors: FakeQuantAct keeps them out of the state dict (so the
    folded float state dict loads into the plain model), and they are part of the QAT state."""
    from dsmn_host.training.fakequant import act_quantizers

    return {name: (q.lo.detach().cpu().clone(), q.hi.detach().cpu().clone())
            for name, q in act_quantizers(qmodel).items()}


def _load_qstate(qmodel, model_state, ranges):
    from dsmn_host.training.fakequant import act_quantizers

    qmodel.load_state_dict(model_state)
    for name, q in act_quantizers(qmodel).items():
        q.lo.copy_(ranges[name][0]), q.hi.copy_(ranges[name][1])


def _resume_settings(run_dir, last, given):
    """The saved settings, refusing (one line) any option given now that differs from them."""
    saved = last["settings"]
    differ = [f"--{k.replace('_', '-')} {v} (the QAT in {run_dir} uses {saved[k]})"
              for k, v in given.items() if v is not None and v != saved.get(k)]
    if differ:
        raise DsmnError(f"{run_dir}: --resume continues the saved QAT settings; drop or fix " + "; ".join(differ))
    return saved


def run_qat(run_dir, epochs=None, lr=None, batch_size=None, calibration_inputs=None, seed=None,
            device="auto", threads=None, progress=True, resume=False, stop_after=None, calib=None):
    """Fine-tune best.pt with fake quantization; writes qat.pt and qat_metrics.json.

    `resume` continues from qat_last.pt (options left None take the saved values; others must
    equal them). `stop_after` ends this call after that many epochs, as if killed (tests and
    time-boxed jobs, followed by resume=True). Under torchrun every process loads, rank 0 writes.

    Activation ranges are not learned by a moving average over augmented batches: they are the
    min/max over the same calibration inputs `dsmn-host convert` hands the converter, recomputed
    after every epoch and frozen while training. onnx2tf recalibrates and cannot take QAT's
    ranges, so this is how the ranges QAT trains against are the ones the int8 model gets.

    `calib` (a feature cache or data directory; default the run's own) is where those inputs come
    from, its training split: pass the same to `dsmn-host convert --calib`. A training split of
    few recording locations gives ranges that clips from other locations overrun; a set of the
    same kind with more distinct recordings calibrates better (docs/quantization.md, "Calibration
    data").
    """
    import math

    import torch

    from dsmn_host.data.calib import calibration_inputs as read_calibration_inputs
    from dsmn_host.training.deploy_form import equalize, fold_batchnorm
    from dsmn_host.training.fakequant import act_quantizers, prepare_qat, recalibrate, strip_qat
    from dsmn_host.data.features import open_features
    from dsmn_host.data.int8io import nhwc_to_features
    from dsmn_host.training.models import build_model
    from dsmn_host.training.distributed import pick_device
    from dsmn_host.training.train import _save, evaluate, set_threads, train_one_epoch

    run_dir = Path(run_dir)
    config_path, best_path = run_dir / "config.json", run_dir / "best.pt"
    if not config_path.is_file() or not best_path.is_file():
        raise DsmnError(f"{run_dir}: not a finished training run (needs config.json and best.pt)")
    if calib and not Path(calib).exists():   # before minutes of evaluation, not after
        raise DsmnError(f"{calib}: no such calibration data (--calib)")
    config = json.loads(config_path.read_text())
    recipe = dict(config["recipe"])
    last_path = run_dir / LAST
    given = {"epochs": epochs, "lr": lr, "calibration_inputs": calibration_inputs,
             "batch_size": batch_size or None, "seed": seed, "calib": str(calib) if calib else None}
    last = None
    if resume:
        if not last_path.is_file():
            if (run_dir / "qat.pt").is_file() and (run_dir / "qat_metrics.json").is_file():
                raise DsmnError(f"{run_dir}: QAT already finished (qat.pt, qat_metrics.json); nothing to resume")
            raise DsmnError(f"{run_dir}: nothing to resume (no {LAST}: QAT was not started or was killed "
                            f"in its first epoch; run it without --resume)")
        import torch

        last = torch.load(last_path, map_location="cpu", weights_only=False)
        settings = _resume_settings(run_dir, last, given)
    else:
        if last_path.is_file():
            raise DsmnError(f"{run_dir}: holds an unfinished QAT ({LAST}); pass --resume to continue it "
                            f"or delete {last_path} to start over")
        settings = {**QAT_DEFAULTS, "batch_size": recipe["batch_size"], "seed": 0}
        settings.update({k: v for k, v in given.items() if v is not None})
    for key in ("epochs", "batch_size", "calibration_inputs"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise DsmnError(f"--{key.replace('_', '-')} {settings[key]}: must be at least 1")
    recipe["batch_size"], seed = settings["batch_size"], settings["seed"]
    set_threads(threads)
    pick_device(device)
    from dsmn_host.training.distributed import Distributed, prepare_for_ranks  # torchrun: ranks share, rank 0 writes
    ctx = Distributed.setup(device)
    dev = ctx.device(device)

    # ---- data and the float model
    source = config.get("cache") or config["data"]
    cache = open_features(source)
    train_rows, val_rows = cache.indices(recipe["train_split"]), cache.indices(recipe["val_split"])
    model = build_model(config["model"])
    state = torch.load(best_path, map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    model.to(dev).eval()
    # (resumed: the start metrics come from qat_last.pt; evaluating three networks again on
    # TAU22's validation split would cost minutes and give the same numbers)
    float_metrics = last["start"]["float"] if last else evaluate(model, cache, val_rows, dev)

    # ---- the int8 form: BN and channel scalars folded, channels equalized (same outputs)
    calib_nhwc, clip = read_calibration_inputs(settings.get("calib") or source, n=settings["calibration_inputs"],
                                               with_clip=True)
    calib = torch.from_numpy(nhwc_to_features(calib_nhwc)).to(dev)   # N, 2, mel, time
    folded = fold_batchnorm(model).to(dev).eval()
    gains = equalize(folded, calib)
    folded_metrics = last["start"]["float_bn_folded"] if last else evaluate(folded, cache, val_rows, dev)
    qmodel = prepare_for_ranks(prepare_qat(copy.deepcopy(folded)).to(dev), ctx)
    recalibrate(qmodel, calib)   # also sets the quantizers' modes (ranges frozen, quantizing)
    ptq_metrics = last["start"]["post_training_quant"] if last else evaluate(qmodel, cache, val_rows, dev)
    start = {"float": float_metrics, "float_bn_folded": folded_metrics, "post_training_quant": ptq_metrics}

    # ---- fine-tune with the paper's augmentations (late-phase mixup: half the batch)
    optimizer = torch.optim.Adam([p for p in qmodel.parameters() if p.requires_grad], lr=settings["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    history = []
    # kept like training's best.pt: the state with the lowest validation loss, starting from the
    # calibrated network itself (epoch -1), so fine-tuning can only be kept where it helped
    best = {"epoch": -1, "loss": ptq_metrics["loss"], "model": copy.deepcopy(qmodel)}
    start_epoch = 0
    if last is not None:   # every rank loads; the RNG needs no state: each epoch seeds it
        _load_qstate(qmodel, last["model"], last["act_ranges"])
        optimizer.load_state_dict(last["optimizer"])
        _load_qstate(best["model"], last["best"]["model"], last["best"]["act_ranges"])
        best.update(epoch=last["best"]["epoch"], loss=last["best"]["loss"])
        history, start_epoch = list(last["history"]), last["epoch"] + 1
    done_here = 0
    for epoch in range(start_epoch, settings["epochs"]):
        torch.manual_seed(seed * 1_000_003 + 7919 + epoch)
        frac = epoch / max(1, settings["epochs"] - 1)
        lr_now = settings["min_lr"] + 0.5 * (settings["lr"] - settings["min_lr"]) * (1 + math.cos(math.pi * frac))
        for g in optimizer.param_groups:
            g["lr"] = lr_now
        fit = train_one_epoch(qmodel, optimizer, scaler, cache, train_rows, recipe, dev, 0.5,
                              desc=f"qat {epoch + 1}/{settings['epochs']}", progress=progress,
                              ctx=ctx, seed=seed, epoch=7919 + epoch)
        recalibrate(qmodel, calib)
        val = evaluate(qmodel, cache, val_rows, dev)
        history.append({"epoch": epoch, "lr": lr_now, **fit, "val_loss": val["loss"], "val_acc": val["acc"]})
        if val["loss"] < best["loss"]:
            best = {"epoch": epoch, "loss": val["loss"], "model": copy.deepcopy(qmodel)}
        if ctx.main:   # the checkpoint before the epoch's line: a line never claims an unsaved epoch
            _save({"settings": settings, "epoch": epoch, "history": history, "start": start,
                   "model": qmodel.state_dict(), "act_ranges": _ranges_state(qmodel),
                   "optimizer": optimizer.state_dict(),
                   "best": {"epoch": best["epoch"], "loss": best["loss"], "model": best["model"].state_dict(),
                            "act_ranges": _ranges_state(best["model"])}}, last_path)
        if progress and ctx.main:
            print(f"qat {epoch + 1}/{settings['epochs']} train loss {fit['train_loss']:.4f} | "
                  f"val loss {val['loss']:.4f} acc {val['acc']:.3f}", flush=True)
        done_here += 1
        if stop_after is not None and done_here >= stop_after and epoch + 1 < settings["epochs"]:
            ctx.barrier()   # the other ranks wait for rank 0's checkpoint before the job ends
            ctx.close()
            return {"stopped_after_epoch": epoch, "processes": ctx.world}

    qmodel = best["model"]
    qat_metrics = evaluate(qmodel, cache, val_rows, dev)
    ranges = {name: q.range() for name, q in act_quantizers(qmodel).items()}
    plain = strip_qat(qmodel).cpu()
    if not ctx.main:
        ctx.close()
        return {"qat": qat_metrics, "processes": ctx.world}
    _save({"model_name": config["model"], "folded": True, "form": DEPLOY_FORM, "model": plain.state_dict(),
           "act_ranges": ranges, "weight_quant": "int8 symmetric per output channel [-127, 127]",
           "act_quant": "int8 asymmetric per tensor, min/max over the calibration inputs",
           "input_clip": clip, "calibration_data": settings.get("calib") or source,
           "equalization_gains": gains, "kept_epoch": best["epoch"],
           "val_loss": qat_metrics["loss"],
           "val_acc": qat_metrics["acc"]}, run_dir / "qat.pt")
    report = {"model": config["model"], "settings": settings, "input_clip": clip,
              "calibration_data": settings.get("calib") or source, "equalization_gains": gains,
              "float": float_metrics, "float_bn_folded": folded_metrics, "post_training_quant": ptq_metrics,
              "qat": qat_metrics, "kept_epoch": best["epoch"], "history": history, "processes": ctx.world}
    tmp = run_dir / "qat_metrics.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, run_dir / "qat_metrics.json")
    last_path.unlink(missing_ok=True)   # finished: --resume now says so instead of redoing it
    ctx.close()
    return report


def _run(args):
    rep = run_qat(args.run_dir, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  calibration_inputs=args.calibration_inputs, seed=args.seed, device=args.device,
                  threads=args.threads, progress=not args.no_progress, resume=args.resume,
                  stop_after=args.stop_after, calib=args.calib)
    if "stopped_after_epoch" in rep:
        return 0
    if "float" not in rep:   # a torchrun rank other than 0: rank 0 reports
        return 0
    print(f"{args.run_dir}: float accuracy {rep['float']['acc']:.3f} (log loss {rep['float']['loss']:.4f}); "
          f"int8 before QAT {rep['post_training_quant']['acc']:.3f}; "
          f"after QAT {rep['qat']['acc']:.3f} (log loss {rep['qat']['loss']:.4f}); "
          + (f"kept epoch {rep['kept_epoch'] + 1}" if rep["kept_epoch"] >= 0
             else "kept the calibrated network: fine-tuning did not lower the validation loss"))
    return 0


def register(subparsers):
    from dsmn_host.clihelp import style
    from dsmn_host.training.train import positive_int

    p = subparsers.add_parser(
        "qat",
        help="quantization-aware fine-tuning of a trained run (adds qat.pt, qat_metrics.json)",
        description="Put best.pt of RUN_DIR in the form the int8 graph computes (BatchNorm and channel "
                    "scalars folded, each Sparable's two kernels as one cross-shaped kernel, channels equalized, pools as "
                    "convs; same outputs), simulate int8 "
                    "(per-channel symmetric weights, per-tensor asymmetric activations with the converter's "
                    "calibration ranges), fine-tune, keep the state with the lowest validation loss, and "
                    "report float vs quantized accuracy.",
        **style("dsmn-host qat runs/m1", "dsmn-host qat runs/m1 --epochs 5 --threads 2",
                "dsmn-host qat runs/m1 --resume          # continue a killed QAT from qat_last.pt",
                "torchrun --nproc_per_node 4 -m dsmn_host qat runs/m1 [--resume]"),
    )
    p.add_argument("run_dir", help="a run directory written by `dsmn-host train`")
    p.add_argument("--epochs", type=int, help=f"fine-tuning epochs (default {QAT_DEFAULTS['epochs']})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate, cosine to 1e-6 (default {QAT_DEFAULTS['lr']})")
    p.add_argument("--batch-size", type=int, help="default: the training run's")
    p.add_argument("--calibration-inputs", type=int,
                   help="training inputs whose min/max set the activation ranges; use the same number as "
                        f"`dsmn-host convert --n-calib` (default {QAT_DEFAULTS['calibration_inputs']})")
    p.add_argument("--calib", help="feature cache or data directory whose training split gives the calibration "
                        "inputs (default: the run's data); pass the same to `dsmn-host convert --calib`")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--resume", action="store_true",
                   help=f"continue the killed QAT in RUN_DIR from {LAST} (written after every epoch); "
                        "options left out take the saved values, options given must equal them")
    p.add_argument("--stop-after", type=positive_int, help="stop after this many epochs of this invocation")
    p.set_defaults(func=_run)
