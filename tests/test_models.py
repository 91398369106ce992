"""Model shapes and the DCASE complexity numbers the paper publishes."""

import json
import subprocess
import sys

import pytest
import torch

from dsmn_host.training.complexity import MODEL_NAMES, complexity_report, count_complexity
from dsmn_host.errors import DsmnError
from dsmn_host.training.models import VARIANTS, build_model

# (params, MACs) under the NeSsi/torchinfo convention; model1..3 are the published figures.
EXPECTED = {
    "model1": (45_164, 8_645_641),
    "model2": (56_172, 16_746_033),
    "model3": (56_556, 25_441_889),
    "model4": (140_748, 20_920_441),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_params_and_macs(name):
    params, macs = count_complexity(build_model(name))
    assert (params, macs) == EXPECTED[name]


def test_published_rounding():
    assert round(EXPECTED["model1"][1] / 1e6, 3) == 8.646
    assert round(EXPECTED["model2"][1] / 1e6, 3) == 16.746
    assert round(EXPECTED["model3"][1] / 1e6, 3) == 25.442
    assert round(EXPECTED["model4"][1] / 1e6, 2) == 20.92


def test_model_names_mirror():
    assert tuple(sorted(VARIANTS)) == MODEL_NAMES


def test_unknown_model_is_user_error():
    with pytest.raises(DsmnError, match="model9"):
        build_model("model9")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_forward_layouts_agree(name):
    torch.manual_seed(0)
    net = build_model(name).eval()
    x = torch.randn(3, 2, 256, 44)
    with torch.no_grad():
        a = net(x)
        b = net.forward_tm(x.transpose(2, 3).contiguous())
    assert a.shape == (3, 13)
    torch.testing.assert_close(a, b)


def test_every_module_is_used():
    """A module forward() never calls would inflate the parameter count (the released code had one)."""
    net = build_model("model2").eval()
    called = set()
    hooks = [m.register_forward_hook(lambda m, i, o: called.add(id(m))) for m in net.modules()]
    net(torch.zeros(1, 2, 256, 44))
    for h in hooks:
        h.remove()
    unused = [n for n, m in net.named_modules()
              if n and id(m) not in called and not isinstance(m, torch.nn.ModuleList)]
    assert unused == []


def test_no_expand_as_in_eca_graph():
    net = build_model("model1").eval()
    gm = torch.fx.symbolic_trace(net)
    targets = [getattr(n.target, "__name__", str(n.target)) for n in gm.graph.nodes]
    assert "expand_as" not in targets
    assert targets.count("mul") == 5  # one broadcasting ECA gate per block


def test_limits_flags():
    assert complexity_report("model1")["within_dcase2023_limits"]
    rep4 = complexity_report("model4")
    assert rep4["macs_ok"] and not rep4["params_ok"]


def test_cli_json():
    out = subprocess.run([sys.executable, "-m", "dsmn_host", "complexity", "--model", "model1", "--json"],
                         capture_output=True, text=True, check=True).stdout
    rep = json.loads(out)
    assert rep["params"] == 45_164 and rep["macs"] == 8_645_641 and rep["param_bytes_int8"] == 45_164


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_zoo_config_matches_code(name):
    from pathlib import Path

    cfg = json.loads((Path(__file__).parents[1] / "models" / f"{name}.json").read_text())
    kinds, channels = VARIANTS[name]
    assert (cfg["params"], cfg["macs"]) == EXPECTED[name]
    assert [b["out_channels"] for b in cfg["blocks"]] == list(channels)
    assert [b["kind"] == "Spatblock_spilt" for b in cfg["blocks"]] == [k == "split" for k in kinds]
