"""`dsmn-host teacher-logits`: run trained teachers over a cache and write their logits.

It runs networks with the training stage's loaders, so it imports dsmn_host.training.train; the logits
format and the distillation loss that train itself uses live in dsmn_host.training.distill, a leaf.
"""

from pathlib import Path

from dsmn_host.training.distill import write_logits
from dsmn_host.errors import DsmnError


def teacher_logits(run_dirs, data, out, split="train", device="auto", threads=None, batch_size=256):
    """Ensemble-averaged scene logits of the runs' best.pt over a split (no augmentation)."""
    import numpy as np
    import torch

    from dsmn_host.data.features import logmel_to_input, open_features
    from dsmn_host.training.models import build_model
    from dsmn_host.training.distributed import pick_device
    from dsmn_host.training.train import load_batch, set_threads

    if not run_dirs:
        raise DsmnError("teacher-logits needs at least one RUN_DIR")
    out = Path(out)
    if out.suffix != ".npz":   # before any teacher runs
        raise DsmnError(f"--out {out}: teacher logits are written as .npz (name it {out.name}.npz)")
    if not out.parent.is_dir():
        raise DsmnError(f"--out {out}: directory {out.parent} does not exist")
    set_threads(threads)
    dev = pick_device(device)
    cache = open_features(data)
    rows = np.sort(cache.indices(split))
    if len(rows) == 0:
        raise DsmnError(f"{cache.path}: split '{split}' is empty")
    models, sources = [], []
    for run in run_dirs:
        best = Path(run) / "best.pt"
        if not best.is_file():
            raise DsmnError(f"{run}: not a trained run (no best.pt)")
        state = torch.load(best, map_location="cpu", weights_only=False)
        net = build_model(state["model_name"])
        net.load_state_dict(state["model"])
        models.append(net.to(dev).eval())
        sources.append({"run": str(Path(run).resolve()), "model": state["model_name"], "epoch": state["epoch"],
                        "val_acc": state.get("val_acc")})
    total = np.zeros((len(rows), 10), dtype=np.float64)
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            _, logmel, _, _ = load_batch(cache, rows[start:start + batch_size], dev)
            x = logmel_to_input(logmel)
            for net in models:
                total[start:start + len(x)] += net(x)[:, :10].double().cpu().numpy()
    logits = (total / len(models)).astype(np.float32)
    scene = np.asarray(cache.scene_idx)[rows]
    acc = float((logits.argmax(1) == scene).mean())
    info = {"ensemble": "mean of logits", "split": split, "cache": str(Path(cache.path).resolve()),
            "runs": sources, "ensemble_acc_on_split": acc}
    write_logits(out, [str(cache.filename[r]) for r in rows], logits, info)
    return {"out": str(out), "clips": int(len(rows)), "teachers": len(models), "ensemble_acc": acc}



def _cmd_teacher_logits(args):
    rep = teacher_logits(args.run_dirs, args.data, args.out, split=args.split, device=args.device,
                         threads=args.threads)
    print(f"{rep['out']}: logits of {rep['teachers']} teacher(s) for {rep['clips']} clips "
          f"(ensemble accuracy on them {rep['ensemble_acc']:.3f})")



def register(subparsers):
    from dsmn_host.clihelp import style

    p = subparsers.add_parser(
        "teacher-logits",
        help="ensemble-averaged logits of trained teacher runs, for `train --teacher-logits`",
        description="Run the best.pt of each RUN_DIR (any `dsmn-host train` run, e.g. model2 and model4) over "
                    "every clip of a split of the feature cache, augmentations off, and write the mean of "
                    "their scene logits keyed by clip file name (format: dsmn_host.training.distill).",
        **style("dsmn-host teacher-logits runs/model2 runs/model4 --data tau22.features --out teachers.npz"),
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="teacher run directories")
    p.add_argument("--data", required=True, help="feature cache (or TAU22 directory) the student trains on")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--split", default="train", help="split whose clips get logits (default train)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: up to 8)")
    p.set_defaults(func=_cmd_teacher_logits)

