"""Reading training and QAT checkpoints back: the one place later stages load weights from.

`export` and `verify` need the networks QAT left behind; they import this module, not the
training modules (`train`, `qat`), so dependencies point down the pipeline. `DEPLOY_FORM`
versions the network form qat.pt stores (see `deploy_form`): a checkpoint of another form is
refused by name rather than loaded into the wrong skeleton.
"""

from pathlib import Path

from dsmn_host.errors import DsmnError

DEPLOY_FORM = 4  # 1: BN folded; 2: + channel scalars folded, equalized; 3: + pools as depthwise convs;
#                 4: + each Sparable's two depthwise kernels as one cross-shaped kernel


def load_float_model(run_dir, model_name=None):
    """(module in eval mode, state) from RUN_DIR/best.pt: the float network training kept."""
    from dsmn_host.training.models import build_model

    best = Path(run_dir) / "best.pt"
    if not best.is_file():
        raise DsmnError(f"{run_dir}: no best.pt (run `dsmn-host train` first)")
    state = _torch_load(best)
    net = build_model(state.get("model_name") or model_name)
    net.load_state_dict(state["model"])
    return net.eval(), state


def export_ready_model(run_dir):
    """(module, info): the QAT-trained, BN-folded float network in eval mode whose forward takes
    N×2×44×256 (time × mel), for ONNX export. Falls back to best.pt (folded) if QAT has not run,
    with info["qat"] = False."""
    from dsmn_host.training.deploy_form import fold_batchnorm
    from dsmn_host.training.models import TimeMelWrapper, build_model

    run_dir = Path(run_dir)
    qat_path, best_path = run_dir / "qat.pt", run_dir / "best.pt"
    if qat_path.is_file():
        state = load_qat_state(qat_path)
        net = fold_batchnorm(build_model(state["model_name"]))
        net.load_state_dict(state["model"])
        info = {"model": state["model_name"], "qat": True, "checkpoint": str(qat_path),
                "act_ranges": state.get("act_ranges", {}), "val_acc": state.get("val_acc")}
    elif best_path.is_file():
        net, state = load_float_model(run_dir)
        net = fold_batchnorm(net)
        info = {"model": state["model_name"], "qat": False, "checkpoint": str(best_path),
                "act_ranges": {}, "val_acc": state.get("val_acc")}
    else:
        raise DsmnError(f"{run_dir}: no qat.pt or best.pt (run `dsmn-host train` and `dsmn-host qat` first)")
    return TimeMelWrapper(net).eval(), info


def load_qat_state(path):
    """The qat.pt dict, refused if it holds another network form than this version builds."""
    state = _torch_load(path)
    if state.get("form", 1) != DEPLOY_FORM:
        raise DsmnError(f"{path}: written by an older dsmn-host (network form {state.get('form', 1)}, "
                        f"this one reads form {DEPLOY_FORM}); rerun `dsmn-host qat {path.parent}`")
    return state


def load_qat_model(run_dir):
    """(module, info): the fake-quantized network as QAT left it (eval mode, ranges frozen),
    taking N×2×256×44 like the float model; the reference for what the int8 model should do."""
    from dsmn_host.training.deploy_form import fold_batchnorm
    from dsmn_host.training.fakequant import act_quantizers, prepare_qat, set_mode
    from dsmn_host.training.models import build_model

    qat_path = Path(run_dir) / "qat.pt"
    if not qat_path.is_file():
        raise DsmnError(f"{run_dir}: no qat.pt (run `dsmn-host qat {run_dir}` first)")
    state = load_qat_state(qat_path)
    net = fold_batchnorm(build_model(state["model_name"]))
    net.load_state_dict(state["model"])
    qnet = prepare_qat(net)
    for name, q in act_quantizers(qnet).items():
        if not q.fixed:
            lo, hi = state["act_ranges"][name]
            q.lo.fill_(lo), q.hi.fill_(hi)
    set_mode(qnet, observe=False, quantize=True)
    return qnet.eval(), {"model": state["model_name"], "act_ranges": state["act_ranges"]}


def _torch_load(path):
    import pickle
    import zipfile

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise DsmnError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise DsmnError(f"{path}: not a dsmn-host checkpoint (no model weights)")
    return state
