"""Training with an extended kinematic tree (``config.model.kinematic_tree='module.path:function'``):
the example tree, the dataset-joint mapping, config validation, conversion from PyTorch, and a
tiny in-process run on the synthetic set that trains, checkpoints, resumes and evaluates."""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinpose_jax import config_checks, skeleton
from kinpose_jax import kinematics as kin
from kinpose_jax.kinematics import presets
from kinpose_jax.models import build_pose_net, dataset_joint_indices, init_variables, variable_shapes
from tests.tiny_problem import EXTENDED_TREE as EXTENDED
from tests.tiny_problem import tiny_model_config

NEW_JOINTS = ("l_toe", "r_toe", "spine_1", "spine_2", "spine_3")


@pytest.mark.quick_compile
def test_example_tree_extends_h36m18_keeping_its_joints_angles_and_rest_pose():
    tree, base = presets.get_tree(EXTENDED), presets.h36m18()
    assert tree.joint_names == base.joint_names + NEW_JOINTS
    assert tree.param_names[:base.num_dofs] == base.param_names and tree.num_dofs == base.num_dofs + 2 + 6
    np.testing.assert_allclose(np.asarray(kin.rest_pose(tree))[:18], np.asarray(kin.rest_pose(base)), atol=1e-9)
    rest = np.asarray(kin.rest_pose(tree))
    names = tree.joint_names
    # the spine links lie on the pelvis -> torso segment, the toes in front of and below the ankles
    for k, name in enumerate(("spine_1", "spine_2", "spine_3")):
        np.testing.assert_allclose(rest[names.index(name)], rest[names.index("torso")] * (k + 1) / 4, atol=1e-9)
    toe = rest[names.index("l_toe")] - rest[names.index("l_ankle")]
    assert toe[1] < 0 and toe[2] > 0


@pytest.mark.quick_compile
def test_spine_angles_move_the_upper_body_and_the_ankle_angle_only_the_toe():
    tree = presets.get_tree(EXTENDED)
    rest = np.asarray(kin.rest_pose(tree))
    names = tree.joint_names
    upper = [names.index(n) for n in ("torso", "neck", "head", "l_wrist", "spine_3")]
    legs = [names.index(n) for n in ("pelvis", "l_hip", "r_ankle", "l_toe", "spine_1")]
    joints_of = jax.jit(lambda a: kin.forward_kinematics(tree, a).joints)
    angles = np.zeros(tree.num_dofs)
    angles[tree.param_names.index("spine_2_RotX")] = 0.5
    bent = np.asarray(joints_of(jnp.asarray(angles)))
    assert np.all(np.linalg.norm(bent[upper] - rest[upper], axis=-1) > 10.0)
    np.testing.assert_allclose(bent[legs], rest[legs], atol=1e-4)
    angles = np.zeros(tree.num_dofs)
    angles[tree.param_names.index("L_Ankle_RotX")] = 0.5
    moved = np.asarray(joints_of(jnp.asarray(angles)))
    changed = np.flatnonzero(np.linalg.norm(moved - rest, axis=-1) > 1e-4)
    assert changed.tolist() == [names.index("l_toe")]


def test_dataset_joints_are_mapped_by_name():
    tree = presets.get_tree(EXTENDED)
    assert dataset_joint_indices(presets.h36m18(), 18) is None  # a preset: all joints, as they are
    assert dataset_joint_indices(tree, 18) == tuple(range(18))
    # a tree whose output joints come in another order: the dataset joints are found by name
    order = [tree.index(n) for n in reversed(tree.joint_names)] + [i for i, h in enumerate(tree.hidden) if h]
    shuffled = presets._permute(tree, order)
    index = dataset_joint_indices(shuffled, 18)
    assert [shuffled.joint_names[i] for i in index] == list(skeleton.H36M_JOINT_NAMES)
    lacking = kin.remove_subtree(tree, "head")
    with pytest.raises(ValueError, match=r"lacks the dataset joints \['head'\]"):
        dataset_joint_indices(lacking, 18)


def _kinematic_config(tree) -> dict:
    """The tiny runs' model with the kinematic head on ``tree`` (on the extended tree: their
    compiled initializer, at their 32 px patches)."""
    return tiny_model_config(head="kinematic", kinematic_tree=tree)


def _kinematic_model(tree, patch=32):
    model = build_pose_net(_kinematic_config(tree))
    return model, init_variables(model, jax.random.PRNGKey(0), patch)  # a raw key, like the runs' create_state


@pytest.mark.quick_compile
def test_model_outputs_the_dataset_joints_and_every_tree_joint():
    model, variables = _kinematic_model(EXTENDED)
    # a non-trivial head: random fc so that the joints differ per image
    fc = variables["params"]["head"]["fc"]
    fc["kernel"] = jax.random.normal(jax.random.key(1), fc["kernel"].shape) * 0.05
    images = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    assert out["tree_joints"].shape == (2, 23, 3) and out["joints"].shape == (2, 18, 3)
    np.testing.assert_array_equal(np.asarray(out["joints"]), np.asarray(out["tree_joints"])[:, :18])
    assert np.abs(np.asarray(out["joints"][0] - out["joints"][1])).max() > 1e-4


@pytest.mark.quick_compile
def test_the_toes_are_predicted_but_not_supervised():
    """The loss sees only the 18 dataset joints: its gradient on the fc columns of the ankle
    flexions (which move only the toes) is exactly zero, while the spine's columns (which move
    the torso) get a gradient."""
    from kinpose_jax.training import train

    model, variables = _kinematic_model(EXTENDED)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8),
             "joints": rng.uniform(-0.3, 0.3, (2, 18, 3)).astype(np.float32),
             "joints_vis": np.ones((2, 18, 3), np.float32)}
    loss_of = train.make_loss_fn(model, "l1")
    grads = jax.jit(jax.grad(lambda p: loss_of(p, variables["batch_stats"], batch)[0]))(variables["params"])
    g = np.asarray(grads["head"]["fc"]["kernel"])  # [C, 3 + num_dofs + 1]
    names = presets.get_tree(EXTENDED).param_names
    column = {n: 3 + k for k, n in enumerate(names)}
    for n in ("L_Ankle_RotX", "R_Ankle_RotX"):
        assert np.all(g[:, column[n]] == 0.0), n
    for n in ("spine_1_RotX", "spine_3_RotZ", "L_Hip_RotX"):
        assert np.abs(g[:, column[n]]).max() > 0, n


@pytest.mark.parametrize("value,fragment", [
    ("nope", "one of ['h36m17', 'h36m18', 'mpii16', 'seed_h36m18'] or 'module.path:function'"),
    ("no_such_module_xyz:f", "module 'no_such_module_xyz' cannot be imported"),
    ("kinpose_jax.kinematics.examples:missing", "has no function 'missing'"),
    ("kinpose_jax.skeleton:H36M_JOINT_NAMES", "has no function 'H36M_JOINT_NAMES'"),
    ("kinpose_jax.kinematics.presets:mpii16", "16 output joints but num_joints=18"),
    ("tests.test_extended_tree:_not_a_tree", "returned int, not a KinematicTree"),
])
def test_config_check_names_the_field_in_one_line(value, fragment):
    from configs import synthetic

    config = synthetic.get_config()
    config.model.head = "kinematic"
    config.model.kinematic_tree = value
    with pytest.raises(ValueError) as err:
        config_checks.validate(config)
    message = str(err.value)
    assert message.startswith(f"config.model.kinematic_tree = {value!r} is invalid") and "\n" not in message
    assert fragment in message
    config.model.kinematic_tree = EXTENDED
    config_checks.validate(config)  # the accepted form


def _not_a_tree():
    return 3


# --------------------------------------------------------------------------- conversion
@pytest.mark.quick_compile
def test_a_torch_checkpoint_of_the_extended_tree_converts_and_loads_under_the_same_config(tmp_path):
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.dirname(__file__))
    import torch_pose_reference as ref

    from kinpose_jax import convert_torch as C
    from kinpose_jax.pretrained import PretrainedMismatchError, load_pretrained

    tree = presets.get_tree(EXTENDED)
    torch.manual_seed(3)
    tm = ref.randomize(ref.build(10, "kinematic", tree=tree, view="h36m18"), seed=3)
    path = str(tmp_path / "ext.pth.tar")
    torch.save({"network": tm.state_dict()}, path)
    out = str(tmp_path / "converted")
    assert C.main([path, out, "--kinematic-tree", EXTENDED]) == 0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = tm(x)["joints"].numpy()  # [2, 23, 3]: every tree joint
    assert want.shape == (2, 23, 3) and np.abs(want[0] - want[1]).max() > 1e-3
    config_model = _kinematic_config(EXTENDED)
    assert config_model["kinematic_view"] == "upright"
    model = build_pose_net(config_model)
    # every leaf comes from the checkpoint: the variables' shapes are the whole target
    variables = load_pretrained(out, variable_shapes(model, 32), config_model, allow_backbone_only=False)
    got = jax.jit(lambda v, images: model.apply(v, images, train=False))(variables, x.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(got["tree_joints"]), want, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got["joints"]), want[:, :18], atol=1e-4)
    with pytest.raises(PretrainedMismatchError, match="kinematic_tree"):
        load_pretrained(out, variable_shapes(build_pose_net(_kinematic_config("h36m18")), 32),
                        dict(config_model, kinematic_tree="h36m18"))


# --------------------------------------------------------------------------- training, end to end
def tiny_extended_config(data_root, **overrides):  # noqa: F811
    """tests/tiny_problem.py's tiny run with the kinematic head on the extended tree (its training
    step is the 1-vs-4-device test's, tests/test_train_parallel.py)."""
    from tests.tiny_problem import tiny_kinematic_config

    c = tiny_kinematic_config(data_root, max_eval_batches=2, num_vis_samples=1, log_every_steps=1,
                              checkpoint_every_steps=1, **overrides)
    return config_checks.validate(c)


def test_training_with_the_extended_tree_checkpoints_resumes_and_evaluates(tmp_path, data_root, capsys):  # noqa: F811
    from kinpose_jax.training import train

    devices = jax.device_count()
    workdir = str(tmp_path / "extended")
    first = train.train_and_evaluate(tiny_extended_config(data_root, num_epochs=1), workdir)
    assert np.isfinite(first["mpjpe"]) and first["num_samples"] == 2 * 2 * devices
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps[-1] == 2
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["kinematic_tree"] == EXTENDED
    capsys.readouterr()
    second = train.train_and_evaluate(tiny_extended_config(data_root, num_epochs=2), workdir)
    assert "Resumed from checkpoint at step 2" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert sorted({r["step"] for r in rows if r["kind"] == "train"}) == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in rows if r["kind"] == "train")
    assert np.isfinite(second["mpjpe"]) and np.isfinite(second["pa_mpjpe"])
    # --mode=eval of the best/latest checkpoint under the same config
    evaluated = train.evaluate_checkpoint(tiny_extended_config(data_root, num_epochs=2), workdir)
    out = capsys.readouterr().out
    assert "Evaluating checkpoint step" in out and "MPJPE" in out
    assert evaluated["num_samples"] == second["num_samples"] and np.isfinite(evaluated["mpjpe"])
    # the workdir runs on images too, with every tree joint in the output
    from kinpose_jax import predict

    folder = os.path.join(data_root, "hm36", "images")
    seq = os.path.join(folder, sorted(os.listdir(folder))[-1])
    image = os.path.join(seq, sorted(os.listdir(seq))[0])
    out = str(tmp_path / "predictions")
    assert predict.main(["--checkpoint", workdir, "--images", image, "--out", out, "--no-plots"]) == 0
    with open(os.path.join(out, os.path.splitext(os.path.basename(image))[0] + ".json")) as f:
        result = json.load(f)
    assert result["tree_joint_names"][18:] == list(NEW_JOINTS) and len(result["tree_joints_3d_mm"]) == 23
    np.testing.assert_allclose(np.asarray(result["tree_joints_3d_mm"])[:18], result["joints_3d_mm"], atol=1e-3)
    np.testing.assert_allclose(np.asarray(result["tree_joints_2d_px"])[:18], result["joints_2d_px"], atol=1e-3)
