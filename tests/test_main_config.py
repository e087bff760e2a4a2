"""main.py rejects bad command lines and configs before JAX starts, in one line naming the field
(in-process: main.parse_flags on a fresh FlagValues, config_checks.validate as a pure function)."""

import importlib
import os
import subprocess
import sys

import pytest
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main  # noqa: E402
from kinpose_jax import config_checks  # noqa: E402


def parse(*args, config="configs/synthetic.py"):
    """Parses main.py's command line ``args`` in-process; returns the config."""
    argv = ["main.py", f"--config={config}", *args]
    fv = flags.FlagValues()
    main.define_flags(fv, sys_argv=argv)  # ml_collections resolves --config.* overrides here already
    main.parse_flags(argv, fv)
    return fv.config


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.foo=1", "--config.model.foo: no such config field"),
        ("--config.foo.bar=1", "--config.foo.bar: no such config field"),
        ("--config.num_epochs=abc", "--config.num_epochs=abc"),
        ("--config.model=1", "--config.model=1"),
        ("--mode=x", "--mode=x"),
    ],
)
def test_bad_command_lines_are_one_line_naming_the_flag(override, message):
    with pytest.raises(main.UsageError, match=None) as info:
        parse(override)
    text = str(info.value)
    assert message in text and "\n" not in text, text


def test_a_missing_config_file_is_one_line():
    with pytest.raises(main.UsageError) as info:
        parse(config="configs/does_not_exist.py")
    assert "configs/does_not_exist.py" in str(info.value) and "No such file" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.head=heatmap", "config.model.head = 'heatmap' is invalid: expected one of"),
        ("--config.model.backbone=resnet42", "config.model.backbone"),
        ("--config.data.patch_size=100", "config.data.patch_size"),
        ("--config.optim.lr_decay_epochs=(290,270)", "config.optim.lr_decay_epochs"),
        ("--config.optim.lr_decay_epochs=(5,'a')", "config.optim.lr_decay_epochs = (5, 'a') is invalid"),
        ("--config.optim.lr_decay_epochs=(-5,)", "config.optim.lr_decay_epochs = (-5,) is invalid"),
        ("--config.optim.weight_decay=-0.1", "config.optim.weight_decay = -0.1 is invalid"),
        ("--config.optim.learning_rate=1e39", "config.optim.learning_rate = 1e+39 is invalid: expected a learning "
                                              "rate > 0 that is finite in float32"),
        ("--config.optim.learning_rate=nan", "config.optim.learning_rate = nan is invalid"),
        ("--config.max_eval_batches=0", "config.max_eval_batches = 0 is invalid"),
        ("--config.optim.lr_decay_factor=2.0", "config.optim.lr_decay_factor = 2.0 is invalid"),
        ("--config.model.kinematic_view=foo", "config.model.kinematic_view = 'foo' is invalid: expected one of "
                                              "('upright', 'identity')"),
        ("--config.model.kinematic_tree=foo", "config.model.kinematic_tree = 'foo' is invalid"),
        ("--config.data.synthetic_image_size=10", "config.data.synthetic_image_size = 10 is invalid: expected an "
                                                  "image side in px >= 64"),
        ("--config.data.worker_count=-2", "config.data.worker_count = -2 is invalid: expected an integer >= -1 "
                                          "(-1 = auto, 0 = in the main process)"),
        ("--config.data.read_threads=0", "config.data.read_threads = 0 is invalid: expected an integer >= 1"),
        ("--config.data.record_layout=tiles", "config.data.record_layout = 'tiles' is invalid"),
        ("--config.data.flip_prob=2.0", "config.data.flip_prob = 2.0 is invalid: expected a probability in [0, 1]"),
        ("--config.data.rotation_prob=-0.1", "config.data.rotation_prob = -0.1 is invalid"),
        ("--config.data.scale_factor=-1", "config.data.scale_factor = -1.0 is invalid: expected a factor in [0, 1)"),
        ("--config.data.color_factor=1.5", "config.data.color_factor = 1.5 is invalid"),
        ("--config.model.num_joints=0", "config.model.num_joints = 0 is invalid: expected 18"),
        ("--config.model.deconv_filters=-1", "config.model.deconv_filters = -1 is invalid: expected an integer >= 1"),
        ("--config.model.num_deconv_layers=-1", "config.model.num_deconv_layers = -1 is invalid: expected an integer"),
        ("--config.model.box_mm=-5", "config.model.box_mm = -5.0 is invalid: expected a length in mm > 0"),
        ("--config.model.depth_bins=0", "config.model.depth_bins = 0 is invalid"),
        ("--config.seed=-1", "config.seed = -1 is invalid"),
    ],
)
def test_bad_config_values_are_rejected_in_one_line_with_the_field_name(override, message):
    config = parse(override)
    with pytest.raises(ValueError) as info:
        config_checks.validate(config)
    assert message in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_synthetic_image_size_is_only_checked_for_synthetic_data():
    config_checks.validate(parse("--config.data.synthetic=False", "--config.data.synthetic_image_size=10"))


def test_the_names_checked_without_jax_are_the_models():
    from kinpose_jax import skeleton
    from kinpose_jax.kinematics.presets import PRESETS
    from kinpose_jax.models import heads

    assert sorted(config_checks.KINEMATIC_TREES) == sorted(PRESETS)
    assert config_checks.NUM_JOINTS == skeleton.H36M_NUM_JOINTS
    tree = PRESETS["h36m18"]()
    for view in config_checks.KINEMATIC_VIEWS:
        heads.view_matrix(tree, view)  # each accepted view is one the head knows


def test_a_bad_config_stops_main_before_jax_is_imported(tmp_path):
    """The process boundary is the point: JAX must not even be imported for a bad config."""
    workdir = str(tmp_path / "w")
    code = ("import sys; sys.argv = ['main.py', '--config.data.flip_prob=2.0', '--workdir=" + workdir + "']\n"
            "import main\n"
            "try:\n"
            "    main.app.run(main.main, flags_parser=main._flags_parser)\n"
            "except SystemExit as e:\n"
            "    print('exit', e.code, 'jax' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert "exit 1 False" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: config.data.flip_prob = 2.0 is invalid: expected a probability "
                                                "in [0, 1]"], proc.stderr
    assert not os.path.exists(tmp_path / "w")


def test_help_points_to_the_config_fields():
    fv = flags.FlagValues()
    main.define_flags(fv, sys_argv=["main.py"])
    assert "configs/default.py" in fv["config"].help


@pytest.mark.parametrize("name", ["default", "synthetic", "integral_r50_mpii_h36m", "direct_r50_h36m",
                                  "kinematic_r50_h36m"])
def test_shipped_configs_validate(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    config_checks.validate(config)
    if name == "integral_r50_mpii_h36m":
        assert (config.model.head, config.model.depth_bins, config.loss) == ("integral", 64, "l1")
        assert tuple(config.optim.lr_decay_epochs) == (270, 290) and config.num_epochs == 300
        assert config.per_device_batch_size == 32 and config.data.mpii_fraction > 0
    if name == "direct_r50_h36m":
        assert config.num_epochs == 140 and tuple(config.optim.lr_decay_epochs) == (90, 120)
