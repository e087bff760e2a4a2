"""python -m kinpose_jax.compare_torch end to end (in-process, main(argv)) on a tiny synthetic
Human3.6M set, with randomly initialised seed networks from the independent torch reference
(tests/torch_pose_reference.py) saved in the original's checkpoint format; and the package's torch
reference network (kinpose_jax.torch_reference) against that independent one."""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

torch = pytest.importorskip("torch")

from kinpose_jax import compare_torch, convert_torch, torch_reference  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import torch_pose_reference as ref  # noqa: E402
from tests.tiny_problem import model_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Largest allowed distance between the JAX and PyTorch predictions of one joint, camera mm.
#: Measured maxima (float32, ResNet-10, 64 px, 16 samples): integral 1.6e-3 mm, direct 1.4e-3 mm,
#: kinematic 1.3e-3 mm; float32 spacing at a 5 m camera depth is 4.9e-4 mm.
TOL_MM = 1e-2


TINY_CONFIG = """
from configs import synthetic


def get_config():
    c = synthetic.get_config()
    c.data.synthetic_train_folders = 2
    c.data.synthetic_frames_per_folder = 4
    c.data.synthetic_image_size = 160
    return c
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[str, str]:
    """(config file, data root): configs/synthetic.py with a tiny synthetic set (64 evaluation
    frames of 160 px), generated and converted once."""
    from kinpose_jax.data import setup

    config_path = tmp_path_factory.mktemp("configs") / "tiny_synthetic.py"
    config_path.write_text(TINY_CONFIG)
    root = str(tmp_path_factory.mktemp("synthetic"))
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)  # the tiny config imports the `configs` package
    config = compare_torch.load_config(str(config_path))
    config.data.root = root
    config.progress_bar = False
    setup.ensure_dataset(config, train=False, process_index=0, log=lambda *a: None)
    return str(config_path), root


def seed_network(head: str, seed: int = 0):
    torch.manual_seed(seed)
    net = ref.randomize(ref.build(10, head, depth_bins=8, filters=32, num_layers=3), seed=seed)
    if head == "seed_kinematic":  # a realistic scale output (~1/2000 normalized per mm) in the last row
        with torch.no_grad():
            net.head.fc.weight[-1].mul_(1 / 4000.0)
            net.head.fc.bias[-1] = 1 / 2000.0
    return net


def run_compare(tmp_path, data, checkpoint, *extra) -> dict:
    out = str(tmp_path / "result.json")
    argv = ["--torch-checkpoint", checkpoint, "--config", data[0], "--data", data[1], "--patch-size", "64",
            "--batch-size", str(8 // jax.device_count()), "--max-batches", "2", "--json", out, *extra]
    assert compare_torch.main(argv) == 0
    with open(out) as f:
        return json.load(f)


@pytest.mark.parametrize("head,flip", [("seed_integral", False), ("direct", True), ("seed_kinematic", False)])
def test_pytorch_and_jax_predictions_agree_on_the_same_batches(tmp_path, data, capsys, head, flip):
    path = str(tmp_path / "seed.pth.tar")
    torch.save({"epoch": 1, "network": {"module." + k: v for k, v in seed_network(head).state_dict().items()}}, path)
    result = run_compare(tmp_path, data, path, "--flip-test" if flip else "--no-flip-test")
    text = capsys.readouterr().out
    assert result["model"]["head"] == head.removeprefix("seed_") and result["model"]["backbone"] == "resnet10"
    assert result["num_samples"] == 16  # 2 batches of 8 frames
    diff = result["joint_difference_mm"]
    assert diff["max"] < TOL_MM and 0 <= diff["mean"] <= diff["max"]
    print(f"{head}: max {diff['max']:.2e} mm, mean {diff['mean']:.2e} mm")
    table = result["tables"]["overall"]
    torch_t, jax_t = table["pytorch"], table["jax"]
    assert torch_t["mpjpe"] > 10.0  # a random network: the comparison is not of two zeros
    for name in ("mpjpe", "pa_mpjpe", "seed_aligned", "17j", "x", "y", "z"):
        assert abs(jax_t[name] - torch_t[name]) < TOL_MM, name
    actions = [name for name in result["tables"] if name.startswith("action ")]
    assert actions and sum(result["tables"][a]["jax"]["num_samples"] for a in actions) == 16
    for a in actions:  # per-action Protocol #1 / #2, side by side
        for name in ("mpjpe", "pa_mpjpe"):
            assert abs(result["tables"][a]["jax"][name] - result["tables"][a]["pytorch"][name]) < TOL_MM
    assert set(result["images_per_s"]) == {"pytorch", "jax"} and min(result["images_per_s"].values()) > 0
    assert "max" in text and "JAX - PyTorch" in text and "images/s" in text


def test_a_conversion_off_by_a_known_offset_is_reported(tmp_path, data, monkeypatch):
    """The reported difference is the real one: a JAX model whose first output is shifted by 1e-3
    normalized units (2 mm in x at the patch's scale) differs by about 2 mm on that joint only."""
    convert = convert_torch.convert_state_dict

    def shifted(*args, **kwargs):
        variables, report = convert(*args, **kwargs)
        variables["params"]["head"]["fc"]["bias"][0] += 1e-3  # joint 0 (pelvis), x
        return variables, report

    monkeypatch.setattr(convert_torch, "convert_state_dict", shifted)
    path = str(tmp_path / "seed.pth.tar")
    torch_reference.save_seed_checkpoint(seed_network("direct"), path)
    diff = run_compare(tmp_path, data, path)["joint_difference_mm"]
    assert 1.0 < diff["max"] < 4.0  # 2 mm at 2000 mm per unit, times depth / (focal * box scale) per sample
    assert diff["mean"] == pytest.approx(diff["max"] / 18, rel=0.3)  # one joint of 18


def test_help_explains_the_arguments(capsys):
    with pytest.raises(SystemExit) as stop:
        compare_torch.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for arg in ("--torch-checkpoint", "--config", "--data", "--max-batches", "--flip-test", "--json"):
        assert arg in text


def test_a_torchvision_backbone_is_refused(tmp_path):
    sd = {k: v.numpy() for k, v in ref.TorchResNet(18).state_dict().items()}
    with pytest.raises(ValueError, match="nothing to compare"):
        compare_torch.seed_model_config(sd, {})


CONFIGS = {
    "seed_integral": dict(head="integral", depth_bins=8, deconv_filters=32, num_deconv_layers=3),
    "integral": dict(head="integral", depth_bins=8, deconv_filters=32, num_deconv_layers=3),
    "direct": dict(head="direct"),
    "seed_kinematic": dict(head="kinematic"),
}


@pytest.mark.parametrize("head", sorted(CONFIGS))
def test_package_reference_network_matches_the_independent_one(head):
    """kinpose_jax.torch_reference loads the original's keys (and this repository's final_layer naming)
    and computes what tests/torch_pose_reference.py computes."""
    net = seed_network(head, seed=2)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    ours = torch_reference.load_network(sd, model_config(backbone="resnet10", **CONFIGS[head]))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = net(x)["joints"].numpy()
    assert want.std() > 0.02
    np.testing.assert_allclose(torch_reference.predict(ours, x.numpy().transpose(0, 2, 3, 1)), want, atol=1e-5)


def test_reference_checkpoint_writer_produces_a_strictly_convertible_seed_checkpoint(tmp_path):
    path = str(tmp_path / "kin.pth.tar")
    assert torch_reference.main([path, "--backbone", "resnet18", "--head", "kinematic"]) == 0
    raw = torch.load(path, weights_only=True)
    keys = set(raw["network"])
    assert all(k.startswith("module.") for k in keys) and "module.head.kin_layer.reorder_idx" in keys
    _, report = convert_torch.convert_file(path, str(tmp_path / "ckpt"), dict(kinematic_view="identity"),
                                           strict=True, init_size=64)
    assert report.unexpected == [] and report.missing == []


def test_a_checkpoint_that_does_not_fit_the_network_names_the_keys():
    sd = {k: v.numpy() for k, v in seed_network("direct").state_dict().items()}
    sd["head.extra.weight"] = np.zeros(3, np.float32)
    del sd["backbone.layer1.0.bn1.running_var"]
    with pytest.raises(ValueError, match=r"missing: \['backbone.layer1.0.bn1.running_var'\].*head.extra.weight"):
        torch_reference.load_network(sd, model_config(backbone="resnet10", head="direct"))
