"""main.py rejects bad configs before doing any work, with messages that name the field."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "main.py", "--workdir=/tmp/kinpose_never_used", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.head=heatmap", "config.model.head = 'heatmap' is invalid"),
        ("--config.model.backbone=resnet42", "config.model.backbone"),
        ("--config.data.patch_size=100", "config.data.patch_size"),
        ("--config.num_epochs=abc", "num_epochs"),  # ill-typed: rejected by ml_collections
        ("--config.model.not_a_field=1", "not_a_field"),  # unknown field of a locked config
        ("--config.optim.lr_decay_epochs=(290,270)", "lr_decay_epochs"),
        ("--config.optim.weight_decay=-0.1", "config.optim.weight_decay = -0.1 is invalid"),
        ("--config.max_eval_batches=0", "config.max_eval_batches = 0 is invalid"),
        ("--config.optim.lr_decay_factor=2.0", "config.optim.lr_decay_factor = 2.0 is invalid"),
    ],
)
def test_bad_config_values_are_rejected_with_the_field_name(override, message):
    proc = run_main("--config=configs/synthetic.py", override)
    assert proc.returncode != 0
    assert message in proc.stderr + proc.stdout, (proc.stdout + proc.stderr)[-2000:]
    if "is invalid" in message:  # our semantic checks: one line, no traceback
        assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists("/tmp/kinpose_never_used/checkpoints")


def test_missing_config_file_is_reported():
    proc = run_main("--config=configs/does_not_exist.py")
    assert proc.returncode != 0
    assert "does_not_exist.py" in proc.stderr + proc.stdout


@pytest.mark.parametrize("name", ["default", "synthetic", "integral_r50_mpii_h36m", "direct_r50_h36m",
                                  "kinematic_r50_h36m"])
def test_shipped_configs_validate(name):
    import importlib

    sys.path.insert(0, ROOT)
    from kinpose_jax import config_checks

    config = importlib.import_module(f"configs.{name}").get_config()
    config_checks.validate(config)
    if name == "integral_r50_mpii_h36m":
        assert (config.model.head, config.model.depth_bins, config.loss) == ("integral", 64, "l1")
        assert tuple(config.optim.lr_decay_epochs) == (270, 290) and config.num_epochs == 300
        assert config.per_device_batch_size == 32 and config.data.mpii_fraction > 0
    if name == "direct_r50_h36m":
        assert config.num_epochs == 140 and tuple(config.optim.lr_decay_epochs) == (90, 120)
