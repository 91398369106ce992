"""Knowledge distillation: teacher logits on disk, and the loss that learns from them.

`dsmn-host teacher-logits RUN_DIR [RUN_DIR ...] --data CACHE --out logits.npz` (dsmn_host.training.teachers,
which runs trained networks and so sits after dsmn_host.training.train) runs trained
teachers (any of our run directories) over every clip of the cache's training split, with the
augmentations off, and writes their ensemble-averaged scene logits. `train --teacher-logits`
then adds T^2 * KL(softmax(teacher / T) || softmax(student / T)) to the scene head's loss,
weighted against the label loss: scene loss = (1 - w) * label loss + w * distillation loss,
both summed over the batch like the recipe's cross-entropy. Mixup mixes the teacher's
distribution with the same weight and partner as the labels (dsmn_host.training.train).

The logits file (format `dsmn-teacher-logits/1`), an ordinary .npz (no pickles):
    format     ()     str    "dsmn-teacher-logits/1"
    filename   (N,)   str    clip file name as in TAU22's meta.csv ("audio/airport-....wav");
                             matched on the base name, so a file keyed by bare names works too
    logits     (N, C) float32 raw (pre-softmax) scene logits, one column per label
    labels     (C,)   str    the column's scene names; C = 10, any order, TAU22 names
    teachers   ()     str    JSON: where the logits came from (free-form)
Logits published by others (e.g. the CP-JKU DCASE teacher ensembles) become this format with
`dsmn-host convert-logits`, which reads an .npz or a torch .pt holding either a dict
{filename: logits} or arrays of names and logits, and maps label names onto ours.
"""

import json
from pathlib import Path

from dsmn_host.errors import DsmnError

FORMAT = "dsmn-teacher-logits/1"
_NAME_KEYS = ("filename", "filenames", "files", "file", "names", "clips")
_LOGIT_KEYS = ("logits", "teacher_logits", "outputs", "predictions")
_LABEL_KEYS = ("labels", "label_names", "classes", "class_names", "scenes")


def kd_loss(student_logits, teacher_probs, temperature):
    """T^2 * KL(teacher_T || student_T), summed over the batch (the recipe's losses are sums).

    `teacher_probs` is softmax(teacher / T) (mixed by mixup like the labels); the T^2 keeps the
    gradient's scale independent of T (Hinton et al. 2015)."""
    import torch

    log_student = torch.log_softmax(student_logits.float() / temperature, dim=1)
    p = teacher_probs.float()
    log_p = torch.log(p.clamp_min(1e-12))
    return temperature ** 2 * (p * (log_p - log_student)).sum()


def _canonical_label(name):
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def label_order(labels, source):
    """Column index of each of our SCENES in a file whose columns are `labels` (by name)."""
    from dsmn_host.data.tau import SCENES

    names = [_canonical_label(n) for n in labels]
    unknown = [n for n in names if n not in SCENES]
    if unknown:
        raise DsmnError(f"{source}: unknown scene label(s) {', '.join(unknown)} (expected {', '.join(SCENES)})")
    missing = [s for s in SCENES if s not in names]
    if missing or len(names) != len(set(names)):
        raise DsmnError(f"{source}: labels must name each of the 10 scenes once; missing {', '.join(missing) or '-'}"
                        f", given {len(names)}")
    return [names.index(s) for s in SCENES]


def _basename(name):
    return str(name).replace("\\", "/").rsplit("/", 1)[-1]


def read_logits(path):
    """(filenames, logits N×10 in SCENES order, info) of a logits file, checked."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise DsmnError(f"{path}: no such teacher-logits file")
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt = str(z["format"]) if "format" in z else None
            if fmt != FORMAT:
                raise DsmnError(f"{path}: not a {FORMAT} file (format {fmt!r}); convert it with "
                                f"`dsmn-host convert-logits`")
            names, logits, labels = z["filename"], z["logits"].astype(np.float32), z["labels"]
            info = json.loads(str(z["teachers"])) if "teachers" in z else {}
    except (OSError, ValueError, KeyError) as exc:
        raise DsmnError(f"{path}: unreadable teacher-logits file ({exc})") from None
    if logits.ndim != 2 or logits.shape[0] != len(names) or logits.shape[1] != len(labels):
        raise DsmnError(f"{path}: logits of shape {logits.shape} for {len(names)} clips and {len(labels)} labels")
    if not np.isfinite(logits).all():
        raise DsmnError(f"{path}: logits contain NaN or infinity")
    return [str(n) for n in names], logits[:, label_order(labels, path)], info


def write_logits(path, filenames, logits, teachers):
    """Write a logits file (columns in SCENES order) atomically."""
    import os

    import numpy as np

    from dsmn_host.data.tau import SCENES

    path = Path(path)
    if path.suffix != ".npz":
        raise DsmnError(f"--out {path}: teacher logits are written as .npz (name it {path.name}.npz)")
    if path.is_dir():
        raise DsmnError(f"--out {path}: is a directory")
    if not path.parent.is_dir():
        raise DsmnError(f"--out {path}: directory {path.parent} does not exist")
    logits = np.asarray(logits, dtype=np.float32)
    if len(set(_basename(f) for f in filenames)) != len(filenames):
        raise DsmnError(f"{path}: clip names repeat (names are matched on their base name)")
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, format=np.array(FORMAT), filename=np.array([str(f) for f in filenames]), logits=logits,
             labels=np.array(SCENES), teachers=np.array(json.dumps(teachers)))
    os.replace(tmp, path)
    return path


def teacher_targets(path, cache, rows, temperature):
    """softmax(logits / T) per cache row (N_cache × 10 float32; rows outside `rows` are NaN).

    Every clip in `rows` must have logits: a teacher that never saw a training clip would
    silently turn distillation off for it, so the missing ones are named."""
    import numpy as np

    names, logits, _ = read_logits(path)
    index = {_basename(n): i for i, n in enumerate(names)}
    wanted = [_basename(cache.filename[r]) for r in rows]
    missing = [w for w in wanted if w not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DsmnError(f"{path}: no teacher logits for {len(missing)} of the {len(wanted)} training clips: {shown}")
    z = logits[[index[w] for w in wanted]] / float(temperature)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    table = np.full((len(cache), logits.shape[1]), np.nan, dtype=np.float32)
    table[np.asarray(rows)] = z / z.sum(axis=1, keepdims=True)
    return table


def describe_logits(path):
    """What a run's config records about its teacher: path, content hash, clips, sources."""
    import hashlib

    path = Path(path)
    names, _, info = read_logits(path)
    return {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "clips": len(names), "teachers": info}


def _load_external(path):
    """(names, logits, labels or None) from an .npz or torch file of names → logits."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise DsmnError(f"{path}: no such file")
    if path.suffix == ".npz":
        try:
            z = dict(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise DsmnError(f"{path}: unreadable .npz ({exc})") from None
    else:
        import torch

        try:
            z = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many kinds for a corrupt or non-torch file
            raise DsmnError(f"{path}: not a readable torch file ({type(exc).__name__}: {exc})") from None
        if not isinstance(z, dict):
            raise DsmnError(f"{path}: expected a dict, found {type(z).__name__}")
    keys = {k.lower() if isinstance(k, str) else k: k for k in z}
    pick = lambda options: next((keys[k] for k in options if k in keys), None)  # noqa: E731
    name_key, logit_key, label_key = pick(_NAME_KEYS), pick(_LOGIT_KEYS), pick(_LABEL_KEYS)
    labels = None if label_key is None else [str(x) for x in np.asarray(z[label_key]).tolist()]
    if name_key is not None and logit_key is not None:
        names = [str(x) for x in np.asarray(z[name_key]).tolist()]
        logits = np.asarray(z[logit_key], dtype=np.float32)
    else:   # {filename: logits vector}
        items = [(k, v) for k, v in z.items() if k not in (label_key,)]
        if not items or not all(isinstance(k, str) for k, _ in items):
            raise DsmnError(f"{path}: found neither name/logit arrays (keys {', '.join(map(str, z))}) "
                            f"nor a dict of clip name -> logits")
        names = [k for k, _ in items]
        logits = np.stack([np.asarray(v, dtype=np.float32).reshape(-1) for _, v in items])
    if logits.ndim != 2 or len(names) != logits.shape[0]:
        raise DsmnError(f"{path}: {len(names)} names for logits of shape {logits.shape}")
    return names, logits, labels


def convert_logits(src, out, labels=None):
    """Rewrite externally published teacher logits as our format (labels mapped by name)."""
    names, logits, file_labels = _load_external(src)
    labels = labels or file_labels
    if labels is None:
        raise DsmnError(f"{src}: the file does not name its label order; pass --labels with the "
                        f"{logits.shape[1]} scene names in column order")
    if len(labels) != logits.shape[1]:
        raise DsmnError(f"{src}: {len(labels)} labels for {logits.shape[1]} logit columns")
    order = label_order(labels, src)
    write_logits(out, names, logits[:, order], {"converted_from": str(Path(src).resolve()),
                                                "source_labels": list(labels)})
    return {"out": str(out), "clips": len(names)}


def _cmd_convert_logits(args):
    labels = [s for s in args.labels.split(",") if s.strip()] if args.labels else None
    rep = convert_logits(args.input, args.out, labels)
    print(f"{rep['out']}: {rep['clips']} clips")


def register(subparsers):
    from dsmn_host.clihelp import style

    c = subparsers.add_parser(
        "convert-logits",
        help="convert published teacher logits (npz/pt of file name -> logits) to our format",
        description="Read an .npz or torch .pt holding either arrays of clip names and logits (keys like "
                    "filename/files/names and logits/outputs, optionally labels/classes) or a dict "
                    "{file name: logits}, reorder the columns to our scene order by label name, and write "
                    f"a {FORMAT} .npz for `train --teacher-logits`.",
        **style("dsmn-host convert-logits ensemble_logits.pt --labels "
                "airport,shopping_mall,metro_station,street_pedestrian,public_square,street_traffic,tram,bus,"
                "metro,park --out teachers.npz"),
    )
    c.add_argument("input", help=".npz or .pt file of teacher logits")
    c.add_argument("--out", required=True, help="output .npz")
    c.add_argument("--labels", help="comma-separated scene names of the logit columns, in order "
                                    "(default: the file's own labels/classes entry)")
    c.set_defaults(func=_cmd_convert_logits)
