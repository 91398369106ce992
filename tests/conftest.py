"""Shared session fixtures: one small synthetic TAU22-layout set and its feature cache, made
once per test session, for every stage's tests."""

import pytest

SYNTH_CLIPS_PER_CLASS = 9
SYNTH_SEED = 1234


@pytest.fixture(scope="session")
def synth_data_dir(tmp_path_factory):
    """90 clips (9 per scene) in the TAU22 layout; train and evaluate splits, devices a..s6."""
    from dsmn_host.data.synth import write_synthetic_set

    out = tmp_path_factory.mktemp("synth") / "tau22-synth"
    write_synthetic_set(out, clips_per_class=SYNTH_CLIPS_PER_CLASS, seed=SYNTH_SEED)
    return out


@pytest.fixture(scope="session")
def feature_cache_dir(synth_data_dir, tmp_path_factory):
    """The feature cache of `synth_data_dir` (open it with dsmn_host.data.features.open_features)."""
    from dsmn_host.data.features import build_cache

    out = tmp_path_factory.mktemp("features") / "tau22-synth.features"
    build_cache(synth_data_dir, out, workers=1, progress=False)
    return out


# --- export / int8 conversion (issue 4): ONE onnx2tf conversion per session, shared with the
# runtime-codegen and firmware tests.

def _run_dir_for_export(request, tmp_path_factory, feature_cache_dir):
    """The shared trained run if the training fixture exists, else a short float run of our own."""
    try:
        return request.getfixturevalue("trained_run_dir")
    except pytest.FixtureLookupError:
        from dsmn_host.training.train import train

        out = tmp_path_factory.mktemp("export-run") / "run"
        train(feature_cache_dir, out, "model1", {"epochs": 6, "warmup_epochs": 1}, seed=0, progress=False)
        return out


@pytest.fixture(scope="session")
def export_run_dir(request, tmp_path_factory, feature_cache_dir):
    return _run_dir_for_export(request, tmp_path_factory, feature_cache_dir)


@pytest.fixture(scope="session")
def export_data_dir(export_run_dir):
    """The feature cache the exported run was trained and validated on: what export records and
    verify runs on. Conversion calibrates where the run's QAT calibrated (`_calibration_data`):
    other inputs would give the int8 model ranges QAT never saw."""
    import json

    config = json.loads((export_run_dir / "config.json").read_text())
    return config.get("cache") or config["data"]


def _calibration_data(run_dir, data):
    """What QAT of `run_dir` calibrated on (qat_metrics.json), so the converter gets the same inputs."""
    import json

    metrics = run_dir / "qat_metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text()).get("calibration_data") or data
    return data


@pytest.fixture(scope="session")
def exported_onnx(export_run_dir, export_data_dir, tmp_path_factory):
    """(path, report) of the float ONNX of the trained model1 run (time × mel input)."""
    from dsmn_host.deploy.export import export_run

    out = tmp_path_factory.mktemp("onnx") / "model1.onnx"
    report = export_run(export_run_dir, out, data=export_data_dir)
    return out, report


@pytest.fixture(scope="session")
def int8_conversion(exported_onnx, export_run_dir, export_data_dir, tmp_path_factory):
    """The one onnx2tf conversion of the session: (tflite path, convert report, onnx2tf work dir)."""
    from dsmn_host.deploy.convert import convert
    from dsmn_host.deploy.modelcard import write_card

    onnx_path, _ = exported_onnx
    out_dir = tmp_path_factory.mktemp("int8")
    work = out_dir / "onnx2tf-work"
    tflite = out_dir / "model1_int8.tflite"
    # calibrated where QAT calibrated (`calibration_cache_dir`), verified on the run's own data
    report = convert(onnx_path, _calibration_data(export_run_dir, export_data_dir), tflite, keep_work=work)
    write_card(tflite, onnx_path=onnx_path, conversion=report)
    return tflite, report, work


@pytest.fixture(scope="session")
def int8_tflite(int8_conversion):
    """Path of the int8 model1 .tflite (1×44×256×2 int8 in, 1×13 int8 out), card next to it."""
    return int8_conversion[0]


@pytest.fixture(scope="session")
def int8_model_card(int8_tflite):
    """The model card (dict) of `int8_tflite`, as read from its X.card.json."""
    from dsmn_host.deploy.modelcard import load_card

    return load_card(int8_tflite)


# --- models / training / QAT (issue 3): ONE short real training run per session, shared with
# the export, conversion and verification tests.

@pytest.fixture(scope="session")
def learnable_cache_dir(tmp_path_factory):
    """Feature cache of a small *easy* synthetic set (12 clips per scene: 60 train, 60 evaluate).

    The shared 9-per-class set has only 3 training clips per scene, too few for a held-out
    accuracy above chance after a short run; this one is just big enough."""
    from dsmn_host.data.features import build_cache
    from dsmn_host.data.synth import write_synthetic_set

    root = tmp_path_factory.mktemp("learnable")
    write_synthetic_set(root / "tau22-easy", clips_per_class=12, seed=7, difficulty="easy")
    build_cache(root / "tau22-easy", root / "tau22-easy.features", workers=1, progress=False)
    return root / "tau22-easy.features"


@pytest.fixture(scope="session")
def calibration_cache_dir(tmp_path_factory):
    """Calibration inputs for the shared trained run, QAT and conversion alike: the training split
    (310 clips, 30 locations, 110 distinct recordings) of another set of the same "easy" kind.

    The learnable set's training split is one recording location per scene (20 distinct
    recordings, each through ~3 devices). Min/max over it left the evaluate split's activations
    up to ~190 int8 steps past their ranges in many tensors (the three devices of one Vienna
    segment worst), so the int8 logits came out shrunk (slope 0.93, errors up to 22 output
    steps). This set has no clip of either split of the learnable set."""
    from dsmn_host.data.features import build_cache
    from dsmn_host.data.synth import write_synthetic_set

    root = tmp_path_factory.mktemp("calibration")
    write_synthetic_set(root / "tau22-easy-calib", clips_per_class=40, seed=11, difficulty="easy")
    build_cache(root / "tau22-easy-calib", root / "tau22-easy-calib.features", workers=1, progress=False)
    return root / "tau22-easy-calib.features"


TRAINED_RUN_RECIPE = {"epochs": 10, "batch_size": 8, "optimizer": "adam", "lr": 3e-3, "mixup_alpha": 0.0}


@pytest.fixture(scope="session")
def trained_run_dir(learnable_cache_dir, calibration_cache_dir, tmp_path_factory):
    """A model1 run directory: short float training (paper recipe, shortened: 10 epochs, Adam,
    no mixup) plus 2 epochs of QAT calibrated on `calibration_cache_dir`. Holds config.json, best.pt, last.pt, metrics.jsonl,
    curves.png, qat.pt, qat_metrics.json."""
    from dsmn_host.training.qat import run_qat
    from dsmn_host.training.train import train

    out = tmp_path_factory.mktemp("trained-run") / "model1"
    # one thread: on a shared or loaded machine two OpenMP threads are many times slower
    train(learnable_cache_dir, out, "model1", TRAINED_RUN_RECIPE, seed=0, threads=1, progress=False)
    run_qat(out, epochs=2, threads=1, progress=False, calib=calibration_cache_dir)
    return out


@pytest.fixture
def qat_starts(tmp_path):
    """Fresh run directories that each hold a copy of one finished training run's config.json
    and best.pt: QAT tests start several QATs (one process / torchrun, whole / resumed) from the
    same float weights, so that only what they compare differs."""
    import shutil

    def make(src, *names):
        runs = {}
        for name in names:
            runs[name] = tmp_path / name
            runs[name].mkdir()
            for f in ("config.json", "best.pt"):
                shutil.copy(src / f, runs[name] / f)
        return runs

    return make
