"""Kinematic trees and forward kinematics: PyTorch parity, invariants, seed bugs, edits, IK."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kinpose_jax import kinematics as kin
from kinpose_jax.kinematics import fk as fk_module
from kinpose_jax.kinematics import presets, rotations
from tests import torch_reference as ref

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

SEED_SCALE_RANGE = (3e-4, 7e-4)  # normalized units: ~1/2000 per mm


# Basis rotations written out by hand (numpy, float64) for analytic expectations.
def Rz(t):
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def Rx(t):
    return np.array([[1, 0, 0], [0, math.cos(t), -math.sin(t)], [0, math.sin(t), math.cos(t)]])


def Ry(t):
    return np.array([[math.cos(t), 0, math.sin(t)], [0, 1, 0], [-math.sin(t), 0, math.cos(t)]])


def random_motion(rng, n, angle_scale=1.0):
    motion = rng.uniform(-math.pi, math.pi, size=(n, 29)) * angle_scale
    motion[:, :3] = rng.normal(size=(n, 3)) * 0.1
    return motion.astype(np.float32)


@jax.jit
def seed_fk_jax(motion, scale):
    tree = presets.seed_h36m18()
    translation, angles = presets.seed_motion_to_fk_inputs(motion, tree)
    return kin.forward_kinematics(tree, angles, translation, scale).joints


# ------------------------------------------------------------------ parity with PyTorch
def test_seed_fk_matches_independent_torch_reference():
    rng = np.random.default_rng(0)
    motion = random_motion(rng, 64)
    scale = rng.uniform(*SEED_SCALE_RANGE, size=64).astype(np.float32)
    ours = np.asarray(seed_fk_jax(motion, scale))
    theirs = ref.to_numpy(ref.seed_fk(torch.from_numpy(motion), torch.from_numpy(scale)))
    assert ours.shape == (64, 18, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)


def test_seed_fk_matches_in_millimetres():
    rng = np.random.default_rng(1)
    motion = random_motion(rng, 16)
    motion[:, :3] *= 5000.0
    scale = np.ones(16, np.float32)
    ours = np.asarray(seed_fk_jax(motion, scale))
    theirs = ref.to_numpy(ref.seed_fk(torch.from_numpy(motion).double(), torch.from_numpy(scale).double()))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=2e-3)  # float32 at ~1000 mm


def test_seed_fk_gradients_match_torch_autograd():
    rng = np.random.default_rng(2)
    motion = random_motion(rng, 8)
    scale = rng.uniform(*SEED_SCALE_RANGE, size=8).astype(np.float32)
    w = rng.normal(size=(8, 18, 3)).astype(np.float32)

    g_motion, g_scale = jax.jit(jax.grad(lambda m, s: jnp.sum(seed_fk_jax(m, s) * w), argnums=(0, 1)))(motion, scale)

    tm = torch.tensor(motion, requires_grad=True)
    ts = torch.tensor(scale, requires_grad=True)
    (ref.seed_fk(tm, ts) * torch.from_numpy(w)).sum().backward()
    expected_motion = ref.to_numpy(tm.grad)
    expected_motion[:, 28] = 0.0  # Head_RotX is unused by the original model
    np.testing.assert_allclose(np.asarray(g_motion), expected_motion, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(g_scale), ref.to_numpy(ts.grad), rtol=1e-4, atol=1e-3)


def test_seed_fk_values_and_gradients_match_torch_in_float64_to_1e_9():
    """Both frameworks in float64: agreement then reflects the maths, not float32 rounding."""
    rng = np.random.default_rng(12)
    motion = random_motion(rng, 8).astype(np.float64)
    scale = rng.uniform(*SEED_SCALE_RANGE, size=8)
    w = rng.normal(size=(8, 18, 3))
    tm = torch.tensor(motion, requires_grad=True)
    ts = torch.tensor(scale, requires_grad=True)
    theirs = ref.seed_fk(tm, ts)
    (theirs * torch.from_numpy(w)).sum().backward()
    expected_motion = ref.to_numpy(tm.grad)
    expected_motion[:, 28] = 0.0  # Head_RotX is unused by the original model
    with jax.enable_x64(True):
        m64, s64, w64 = jnp.asarray(motion, jnp.float64), jnp.asarray(scale, jnp.float64), jnp.asarray(w)
        loss_and_joints = lambda j: (jnp.sum(j * w64), j)  # noqa: E731
        value_and_grad = jax.jit(jax.value_and_grad(lambda m, s: loss_and_joints(seed_fk_jax(m, s)),
                                                    argnums=(0, 1), has_aux=True))
        (_, ours), (g_motion, g_scale) = value_and_grad(m64, s64)
        assert ours.dtype == jnp.float64 and g_motion.dtype == jnp.float64
        ours, g_motion, g_scale = np.asarray(ours), np.asarray(g_motion), np.asarray(g_scale)
    np.testing.assert_allclose(ours, ref.to_numpy(theirs), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_motion, expected_motion, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(g_scale, ref.to_numpy(ts.grad), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------ invariants
@pytest.mark.parametrize("name", ["seed_h36m18", "h36m18", "mpii16"])
def test_bone_lengths_equal_offset_length_times_scale(name):
    tree = presets.get_tree(name)
    rng = np.random.default_rng(3)
    angles = rng.uniform(-math.pi, math.pi, size=(32, tree.num_dofs)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, size=32).astype(np.float32)
    pos = np.asarray(kin.forward_kinematics(tree, angles, scale=scale).positions)
    off = np.asarray(tree.offsets)
    for j, p in enumerate(tree.parents):
        if p < 0:
            continue
        length = np.linalg.norm(pos[:, j] - pos[:, p], axis=-1)
        np.testing.assert_allclose(length, np.linalg.norm(off[j]) * scale, rtol=1e-5, atol=1e-3)


def test_zero_angles_give_the_seed_rest_pose():
    joints = np.asarray(kin.rest_pose(presets.seed_h36m18()))
    # Rest positions from docs/DESIGN.md#original-model by hand, model axes (x left, y up), then output (x, z, y).
    model = {
        "pelvis": (0, 0, 0), "l_hip": (84.7, 0, 0), "l_knee": (84.7, -302, 0), "l_ankle": (84.7, -602, 0),
        "r_ankle": (-84.7, -602, 0), "torso": (0, 165, 0), "neck": (0, 326.6, 0),
        "nose": (0, 326.6 + 73.46, -29), "head": (0, 326.6 + 73.46 + 66.91, 0),
        "l_shoulder": (117, 320.1, 0), "r_shoulder": (-117, 320.1, 0), "l_elbow": (117, 320.1 - 187.16, 0),
        "r_wrist": (-117, 320.1 - 187.16 - 160.6, 0), "thorax": (0, 320.1, 0),
    }
    tree = presets.seed_h36m18()
    for name, (x, y, z) in model.items():
        np.testing.assert_allclose(joints[tree.joint_index(name)], (x, z, y), atol=1e-3, err_msg=name)


def test_hinge_rotates_about_its_axis_only():
    tree = presets.seed_h36m18()
    names = tree.param_names
    base = np.zeros(tree.num_dofs, np.float32)
    bent = base.copy()
    theta = 0.7
    bent[names.index("L_Knee_RotX")] = theta
    p0 = np.asarray(kin.forward_kinematics(tree, base).positions)
    p1 = np.asarray(kin.forward_kinematics(tree, bent).positions)
    moved = np.nonzero(np.abs(p1 - p0).max(-1) > 1e-4)[0]
    assert [tree.names[i] for i in moved] == ["l_ankle"]
    knee, ankle = tree.index("l_knee"), tree.index("l_ankle")
    v0, v1 = p0[ankle] - p0[knee], p1[ankle] - p1[knee]
    assert abs(v1[0] - v0[0]) < 1e-4  # no motion along the hinge axis (x)
    cos = np.dot(v0[1:], v1[1:]) / np.linalg.norm(v0[1:]) / np.linalg.norm(v1[1:])
    assert math.isclose(math.acos(np.clip(cos, -1, 1)), theta, abs_tol=1e-5)


def test_arbitrary_axis_hinge_follows_rodrigues():
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    tree = kin.make_tree([
        dict(name="a", parent=None, offset=(0, 0, 0)),
        dict(name="b", parent="a", offset=(0, 0, 0), dofs=[axis]),
        dict(name="c", parent="b", offset=(30.0, -10.0, 5.0)),
    ])
    theta = 1.1
    c = np.asarray(kin.forward_kinematics(tree, np.array([theta], np.float32)).joints)[2]
    v = np.array([30.0, -10.0, 5.0])
    expected = v * math.cos(theta) + np.cross(axis, v) * math.sin(theta) + axis * axis.dot(v) * (1 - math.cos(theta))
    np.testing.assert_allclose(c, expected, atol=1e-4)
    assert tree.param_names == ("b_RotAxis0",)


def test_oblique_and_basis_axis_sequences_match_rodrigues_in_float64():
    """Frames whose dofs mix oblique axes with a basis axis (two frames share one sequence, so
    they are built together): rotations, positions and angle gradients against a torch chain of
    Rodrigues rotations, in float64."""
    a1 = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    a2 = np.array([-0.3, 0.1, 0.9]) / np.linalg.norm([-0.3, 0.1, 0.9])
    seq = [a1, "x", a2]
    offsets = [(0.0, 0.0, 0.0), (10.0, 20.0, -5.0), (30.0, -10.0, 5.0), (0.0, 7.0, 3.0)]
    tree = kin.make_tree([
        dict(name="a", parent=None, offset=offsets[0], dofs="zy"),
        dict(name="b", parent="a", offset=offsets[1], dofs=seq),
        dict(name="c", parent="b", offset=offsets[2], dofs=seq),
        dict(name="d", parent="c", offset=offsets[3]),
    ])
    axes = [[(0.0, 0.0, 1.0), (0.0, 1.0, 0.0)], [a1, (1.0, 0.0, 0.0), a2], [a1, (1.0, 0.0, 0.0), a2], []]
    rng = np.random.default_rng(21)
    angles = rng.uniform(-math.pi, math.pi, size=(5, 8))
    w = rng.normal(size=(5, 4, 3))

    def rodrigues(axis, t):
        k = torch.tensor([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
                         dtype=torch.float64)
        return torch.eye(3, dtype=torch.float64) + torch.sin(t)[:, None, None] * k + \
            (1 - torch.cos(t))[:, None, None] * (k @ k)

    ta = torch.tensor(angles, requires_grad=True)
    rot, pos, rots, positions, col = None, None, [], [], 0
    for frame_axes, off in zip(axes, offsets):
        local = torch.eye(3, dtype=torch.float64).expand(5, 3, 3)
        for ax in frame_axes:
            local = local @ rodrigues(ax, ta[:, col])
            col += 1
        pos = torch.zeros(5, 3, dtype=torch.float64) if rot is None else \
            pos + (rot @ torch.tensor(off, dtype=torch.float64))
        rot = local if rot is None else rot @ local
        rots.append(rot)
        positions.append(pos)
    theirs_pos = torch.stack(positions, 1)
    (theirs_pos * torch.from_numpy(w)).sum().backward()
    with jax.enable_x64(True):
        res = kin.forward_kinematics(tree, jnp.asarray(angles))
        g = jax.jit(jax.grad(lambda a: jnp.sum(kin.forward_kinematics(tree, a).positions * w)))(jnp.asarray(angles))
        ours_pos, ours_rot, g = np.asarray(res.positions), np.asarray(res.rotations), np.asarray(g)
    np.testing.assert_allclose(ours_rot, ref.to_numpy(torch.stack(rots, 1)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours_pos, ref.to_numpy(theirs_pos), rtol=0, atol=1e-10)
    np.testing.assert_allclose(g, ref.to_numpy(ta.grad), rtol=0, atol=1e-10)


def test_jit_vmap_grad_and_leading_batch_dims():
    tree = presets.h36m18()
    rng = np.random.default_rng(4)
    angles = rng.normal(size=(3, 5, tree.num_dofs)).astype(np.float32)
    trans = rng.normal(size=(3, 5, 3)).astype(np.float32) * 100
    eager = kin.forward_kinematics(tree, angles, trans).joints
    jitted = jax.jit(lambda t, a, x: kin.forward_kinematics(t, a, x).joints)(tree, angles, trans)
    vmapped = jax.vmap(jax.vmap(lambda a, x: kin.forward_kinematics(tree, a, x).joints))(angles, trans)
    assert eager.shape == (3, 5, 18, 3)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-3)
    np.testing.assert_allclose(np.asarray(vmapped), np.asarray(eager), atol=1e-3)
    # Gradient against central finite differences (float64 numpy via small steps in float32).
    f = jax.jit(lambda a: jnp.sum(kin.forward_kinematics(tree, a).joints[..., 13, :]))
    g = np.asarray(jax.jit(jax.grad(f))(angles[0, 0]))
    k = tree.param_names.index("L_Elbow_RotX")
    eps = 1e-3
    e = np.zeros(tree.num_dofs, np.float32)
    e[k] = eps
    fd = (f(angles[0, 0] + e) - f(angles[0, 0] - e)) / (2 * eps)
    assert abs(g[k] - float(fd)) < 1e-2 * max(1.0, abs(float(fd)))


def test_per_sample_bone_lengths_batch_through_the_offsets_leaf():
    tree = presets.h36m18()
    factors = np.array([0.9, 1.0, 1.2], np.float32)
    batched = kin.KinematicTree(**{**tree.__dict__, "offsets": np.asarray(tree.offsets)[None] * factors[:, None, None]})
    angles = np.random.default_rng(5).normal(size=(3, tree.num_dofs)).astype(np.float32)
    out = np.asarray(kin.forward_kinematics(batched, angles).joints)
    for i, f in enumerate(factors):
        single = np.asarray(kin.forward_kinematics(tree, angles[i], scale=f).joints)
        np.testing.assert_allclose(out[i], single, atol=1e-3)
    # the offsets leaf is differentiable: d(sum of ankle y)/d(offsets) is non-zero
    g = jax.grad(lambda t: jnp.sum(kin.forward_kinematics(t, angles[0]).joints[3]))(tree)
    assert np.abs(np.asarray(g.offsets)).sum() > 0


# ------------------------------------------------------------------ seed bugs (a)-(c)
def test_bug_a_global_translation_is_applied():
    tree = presets.seed_h36m18()
    rng = np.random.default_rng(6)
    angles = rng.normal(size=(4, tree.num_dofs)).astype(np.float32)
    t = rng.normal(size=(4, 3)).astype(np.float32) * 1000
    moved = np.asarray(kin.forward_kinematics(tree, angles, t).joints)
    still = np.asarray(kin.forward_kinematics(tree, angles, np.zeros_like(t)).joints)
    # translation lives in model axes; the original's outputs are (x, z, y)
    np.testing.assert_allclose(moved - still, np.broadcast_to(t[:, None, [0, 2, 1]], moved.shape), atol=1e-2)


def test_bug_b_no_rotation_leaks_into_later_translations():
    """With only the root and L_Hip rotated, each joint must equal the analytic product of fresh
    transforms; the original's shared-matrix bug turns later pure translations into rotations."""
    tree = presets.seed_h36m18()
    names = tree.param_names
    a = np.zeros(tree.num_dofs, np.float32)
    rz, rx, ry, hz, hx, hy = 0.3, -0.4, 0.5, 0.2, 0.9, -0.6
    for n, v in zip(["Root_RotZ", "Root_RotX", "Root_RotY", "L_Hip_RotZ", "L_Hip_RotX", "L_Hip_RotY"],
                    [rz, rx, ry, hz, hx, hy]):
        a[names.index(n)] = v

    root = Rz(rz) @ Rx(rx) @ Ry(ry)
    hip = root @ np.array([84.7, 0, 0])
    knee = hip + root @ Rz(hz) @ Rx(hx) @ Ry(hy) @ np.array([0, -302.0, 0])
    ankle = knee + root @ Rz(hz) @ Rx(hx) @ Ry(hy) @ np.array([0, -300.0, 0])
    right_hip = root @ np.array([-84.7, 0, 0])
    torso = root @ np.array([0, 165.0, 0])
    out = np.asarray(kin.forward_kinematics(tree, a).joints)[:, [0, 2, 1]]  # back to model axes
    for name, want in dict(l_hip=hip, l_knee=knee, l_ankle=ankle, r_hip=right_hip, torso=torso).items():
        np.testing.assert_allclose(out[tree.joint_index(name)], want, atol=1e-3, err_msg=name)


def test_bug_c_both_shoulders_hang_off_the_neck():
    """Right shoulder = neck + R_spine @ (-Neck2ShoulderX, -Neck2ShoulderY, 0) (docs/DESIGN.md#original-model, mirrored
    left side), computed by hand; the original's bug puts it at torso + the same vector instead."""
    tree = presets.seed_h36m18()
    names = tree.param_names
    rng = np.random.default_rng(7)
    angles = rng.uniform(-2, 2, size=(6, tree.num_dofs)).astype(np.float32)
    trans = (rng.normal(size=(6, 3)) * 500).astype(np.float32)
    j = np.asarray(kin.forward_kinematics(tree, angles, trans).joints)[..., [0, 2, 1]]  # back to model axes
    neck_i, rs_i, ls_i = (tree.joint_index(n) for n in ("neck", "r_shoulder", "l_shoulder"))
    for a, t, joints in zip(angles.astype(np.float64), trans.astype(np.float64), j):
        p = {n: a[names.index(n)] for n in names}
        spine = (Rz(p["Root_RotZ"]) @ Rx(p["Root_RotX"]) @ Ry(p["Root_RotY"])
                 @ Rz(p["Pelvis_RotZ"]) @ Rx(p["Pelvis_RotX"]) @ Ry(p["Pelvis_RotY"]))
        torso = t + spine @ np.array([0.0, 165.0, 0.0])
        neck = torso + spine @ np.array([0.0, 161.6, 0.0])
        right, left = spine @ np.array([-117.0, -6.5, 0.0]), spine @ np.array([117.0, -6.5, 0.0])
        np.testing.assert_allclose(joints[neck_i], neck, atol=2e-3)
        np.testing.assert_allclose(joints[rs_i] - joints[neck_i], right, atol=2e-3)
        np.testing.assert_allclose(joints[ls_i] - joints[neck_i], left, atol=2e-3)
        # the bug's position (torso + offset) is the Torso2Neck bone (161.6 mm) away
        assert math.isclose(np.linalg.norm(joints[rs_i] - (torso + right)), 161.6, abs_tol=2e-3)


# ------------------------------------------------------------------ functional extension
def human_with_toes_fingers_tail():
    tree = presets.h36m18()
    for side, sign in (("l", 1.0), ("r", -1.0)):
        tree = kin.add_joint(tree, f"{side}_toe", f"{side}_ankle", (0.0, -40.0, 120.0), dofs="x",
                             limits=[(-0.5, 0.8)])
        tree = kin.add_chain(tree, f"{side}_wrist", [
            dict(name=f"{side}_index_1", offset=(sign * 10.0, -80.0, 10.0), dofs="zx"),
            dict(name=f"{side}_index_2", offset=(0.0, -40.0, 0.0), dofs="x"),
            dict(name=f"{side}_index_3", offset=(0.0, -25.0, 0.0), dofs="x"),
        ])
    tree = kin.add_chain(tree, "pelvis", [
        dict(name=f"tail_{k}", offset=(0.0, -30.0, -60.0 if k == 0 else -80.0), dofs="xy") for k in range(4)
    ])
    return tree


def test_extended_tree_keeps_old_joints_and_adds_new_ones():
    old = presets.h36m18()
    new = human_with_toes_fingers_tail()
    assert new.joint_names[:18] == old.joint_names
    assert new.param_names[: old.num_dofs] == old.param_names
    assert new.num_joints == 18 + 2 + 6 + 4
    rng = np.random.default_rng(8)
    a_old = rng.normal(size=(5, old.num_dofs)).astype(np.float32)
    a_new = np.concatenate([a_old, rng.normal(size=(5, new.num_dofs - old.num_dofs)).astype(np.float32)], -1)
    j_old = np.asarray(kin.forward_kinematics(old, a_old).joints)
    fk_new = kin.forward_kinematics(new, a_new)
    j_new = np.asarray(fk_new.joints)
    np.testing.assert_allclose(j_new[:, :18], j_old, atol=1e-3)
    # a new joint = its parent + parent's global rotation @ offset (independent numpy check)
    rot = np.asarray(fk_new.rotations)
    pos = np.asarray(fk_new.positions)
    toe, ankle = new.index("l_toe"), new.index("l_ankle")
    np.testing.assert_allclose(pos[:, toe], pos[:, ankle] + rot[:, ankle] @ np.array([0.0, -40.0, 120.0]), atol=1e-3)
    assert new.param_names[-2:] == ("tail_3_RotX", "tail_3_RotY")


def test_trees_are_equal_by_value():
    """Equal skeletons are equal (and hash alike) however often they are built, so a model holding
    one reuses its jitted programs; any change of structure or bone length makes another tree."""
    from kinpose_jax.kinematics import examples

    for build in (presets.h36m18, presets.seed_h36m18, examples.h36m18_toes_spine):
        a, b = build(), build()
        assert a is not b and a == b and hash(a) == hash(b) and len({a, b}) == 1
    base = presets.h36m18()
    assert base == base and base != presets.h36m17() and base != presets.seed_h36m18() and base != "h36m18"
    assert base != kin.set_bone_lengths(base, {"l_knee": 500.0})
    assert base != dataclasses.replace(base, output_axes=(0, 2, 1))
    batched = dataclasses.replace(base, offsets=jnp.broadcast_to(jnp.asarray(base.offsets), (2,) + base.offsets.shape))
    assert batched == dataclasses.replace(batched) and batched != dataclasses.replace(base, offsets=batched.offsets + 0)


def test_edits_do_not_mutate_and_compose():
    base = presets.h36m18()
    names_before, offsets_before = base.names, np.asarray(base.offsets).copy()
    longer = kin.set_bone_lengths(base, {"l_knee": 500.0})
    assert base.names == names_before and np.array_equal(np.asarray(base.offsets), offsets_before)
    j = np.asarray(kin.rest_pose(longer))
    assert math.isclose(np.linalg.norm(j[5] - j[4]), 500.0, rel_tol=1e-5)

    no_left_arm = kin.remove_subtree(base, "l_shoulder", drop_dependent_derived=True)
    assert "l_elbow" not in no_left_arm.names and "thorax" not in no_left_arm.names
    assert no_left_arm.num_dofs == base.num_dofs - 4
    with pytest.raises(ValueError, match="thorax"):
        kin.remove_subtree(base, "l_shoulder")

    moved = kin.reparent(base, "r_shoulder", "torso", offset=(-117.0, 0.0, 0.0))
    rest = np.asarray(kin.rest_pose(moved))
    np.testing.assert_allclose(rest[moved.joint_index("r_shoulder")], rest[moved.joint_index("torso")] + (-117, 0, 0),
                               atol=1e-3)
    with pytest.raises(ValueError, match="descendant"):
        kin.reparent(base, "l_hip", "l_ankle")

    arm = kin.make_tree([
        dict(name="shoulder", parent=None, offset=(0, 0, 0), dofs="zxy"),
        dict(name="elbow", parent="shoulder", offset=(0, -250, 0), dofs="x"),
        dict(name="hand", parent="elbow", offset=(0, -230, 0)),
    ])
    three_arms = kin.merge(base, arm, parent="neck", offset=(0.0, 0.0, 100.0), prefix="extra_")
    assert three_arms.joint_names[-3:] == ("extra_shoulder", "extra_elbow", "extra_hand")
    assert three_arms.num_dofs == base.num_dofs + 4
    rest3 = np.asarray(kin.rest_pose(three_arms))
    np.testing.assert_allclose(rest3[-1], rest3[three_arms.joint_index("neck")] + (0, -480, 100), atol=1e-3)
    with pytest.raises(ValueError, match="prefix"):
        kin.merge(base, presets.h36m18(), parent="neck")


@pytest.mark.parametrize(
    "builder, message",
    [
        (lambda: kin.add_joint(presets.h36m18(), "neck", "pelvis", (0, 0, 0)), "already exists"),
        (lambda: kin.add_joint(presets.h36m18(), "toe", "nowhere", (0, 0, 0)), "nowhere"),
        (lambda: kin.add_joint(presets.h36m18(), "toe", "l_ankle", (0, 0, 0), dofs="xyzx"), "at most 3"),
        (lambda: kin.add_joint(presets.h36m18(), "toe", "l_ankle", (0, 0, 0), dofs="q"), "unknown rotation axis"),
        (lambda: kin.make_tree([dict(name="a", parent=None), dict(name="b", parent=None)]), "exactly one root"),
    ],
)
def test_bad_trees_are_refused_with_a_clear_message(builder, message):
    with pytest.raises((ValueError, KeyError), match=message):
        builder()


def test_forward_kinematics_rejects_wrong_angle_count():
    tree = presets.h36m18()
    with pytest.raises(ValueError, match="num_dofs"):
        kin.forward_kinematics(tree, np.zeros((2, tree.num_dofs + 1)))


# ------------------------------------------------------------------ bone lengths from data
# H36M joint pairs per bone, from the bone list of docs/DESIGN.md#bones (written here, not imported).
SPEC_BONES = {
    "pelvis2hip": [(0, 1), (0, 4)], "hip2knee": [(1, 2), (4, 5)], "knee2ankle": [(2, 3), (5, 6)],
    "pelvis2torso": [(0, 7)], "torso2neck": [(7, 8)], "neck2nose": [(8, 9)], "nose2head": [(9, 10)],
    "neck2shoulder": [(8, 11), (8, 14)], "shoulder2elbow": [(11, 12), (14, 15)],
    "elbow2wrist": [(12, 13), (15, 16)],
}


def test_measured_bone_lengths_round_trip_through_fk_and_h36m18_from_joints():
    rng = np.random.default_rng(13)
    lengths = {k: float(v) for k, v in zip(sorted(SPEC_BONES), rng.uniform(60.0, 480.0, size=len(SPEC_BONES)))}
    tree = presets.h36m18(lengths)
    angles = rng.uniform(-math.pi, math.pi, size=(12, tree.num_dofs)).astype(np.float32)
    trans = (rng.normal(size=(12, 3)) * 1000).astype(np.float32)
    joints = np.asarray(kin.forward_kinematics(tree, angles, trans).joints)
    # 4 extra garbage samples, masked out
    data = np.concatenate([joints, rng.normal(size=(4, 18, 3)).astype(np.float32) * 5000])
    mask = np.arange(16) < 12
    measured = presets.measure_h36m_bone_lengths(data, mask)
    assert set(measured) == set(lengths)
    for bone, want in lengths.items():
        assert math.isclose(measured[bone], want, rel_tol=2e-5), (bone, measured[bone], want)
    rebuilt = presets.h36m18_from_joints(data, mask)
    rest = np.asarray(kin.rest_pose(rebuilt), np.float64)
    for bone, pairs in SPEC_BONES.items():
        for p, c in pairs:
            assert math.isclose(np.linalg.norm(rest[c] - rest[p]), lengths[bone], rel_tol=2e-5), bone
    # left and right are averaged: a 400 mm left and 420 mm right femur measure 410 mm
    lopsided = kin.set_bone_lengths(tree, {"l_knee": 400.0, "r_knee": 420.0})
    measured = presets.measure_h36m_bone_lengths(np.asarray(kin.forward_kinematics(lopsided, angles).joints))
    assert math.isclose(measured["hip2knee"], 410.0, rel_tol=1e-5)
    with pytest.raises(ValueError, match="H36M order"):
        presets.measure_h36m_bone_lengths(joints[:, :10])


# ------------------------------------------------------------------ small public API
def test_h36m17_is_h36m18_without_the_thorax():
    t17, t18 = presets.h36m17(), presets.h36m18()
    assert t17.num_joints == 17 and t17.joint_names == t18.joint_names[:17] and "thorax" not in t17.names
    assert t17.param_names == t18.param_names
    a = np.random.default_rng(14).normal(size=(4, t18.num_dofs)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(kin.forward_kinematics(t17, a).joints),
                               np.asarray(kin.forward_kinematics(t18, a).joints)[:, :17], atol=1e-4)
    assert presets.get_tree("h36m17").joint_names == t17.joint_names


def test_set_hidden_removes_and_restores_output_joints():
    tree = presets.h36m18()
    hidden = kin.set_hidden(tree, ["nose", "head"])
    assert hidden.num_joints == 16 and "nose" not in hidden.joint_names and "nose" in hidden.names
    with pytest.raises(KeyError, match="hidden"):
        hidden.joint_index("nose")
    a = np.random.default_rng(15).normal(size=(3, tree.num_dofs)).astype(np.float32)
    full = np.asarray(kin.forward_kinematics(tree, a).joints)
    keep = [i for i, n in enumerate(tree.joint_names) if n not in ("nose", "head")]
    np.testing.assert_allclose(np.asarray(kin.forward_kinematics(hidden, a).joints), full[:, keep], atol=1e-4)
    shown = kin.set_hidden(hidden, ["nose", "head"], hidden=False)
    assert shown.joint_names == tree.joint_names and tree.num_joints == 18  # the input tree is untouched


def test_add_derived_is_the_weighted_combination_of_its_sources():
    tree = kin.add_derived(presets.h36m18(), "mix", {"l_wrist": 0.25, "r_ankle": 0.75})
    rng = np.random.default_rng(16)
    a = rng.normal(size=(3, tree.num_dofs)).astype(np.float32)
    t = (rng.normal(size=(3, 3)) * 800 + [0, 0, 4000]).astype(np.float32)  # well away from the origin
    j = np.asarray(kin.forward_kinematics(tree, a, t).joints)
    lw, ra, mix = (tree.joint_index(n) for n in ("l_wrist", "r_ankle", "mix"))
    assert mix == 18
    np.testing.assert_allclose(j[:, mix], 0.25 * j[:, lw] + 0.75 * j[:, ra], atol=1e-3)
    assert np.linalg.norm(j[:, mix] - 0.5 * (j[:, lw] + j[:, ra]), axis=-1).min() > 1.0  # not a plain mean


def test_scale_bones_scales_only_the_chosen_bones():
    tree = presets.h36m18()
    rest = np.asarray(kin.rest_pose(tree), np.float64)
    np.testing.assert_allclose(np.asarray(kin.rest_pose(kin.scale_bones(tree, 2.0))), 2.0 * rest, atol=1e-3)
    longer = kin.scale_bones(tree, 1.5, ["l_knee"])  # the l_hip -> l_knee bone
    off, off0 = np.asarray(longer.offsets), np.asarray(tree.offsets)
    i = tree.index("l_knee")
    np.testing.assert_allclose(off[i], 1.5 * off0[i])
    np.testing.assert_array_equal(np.delete(off, i, axis=0), np.delete(off0, i, axis=0))
    new = np.asarray(kin.rest_pose(longer), np.float64)
    lh, lk, la = (tree.joint_index(n) for n in ("l_hip", "l_knee", "l_ankle"))
    assert math.isclose(np.linalg.norm(new[lk] - new[lh]), 1.5 * np.linalg.norm(rest[lk] - rest[lh]), rel_tol=1e-5)
    np.testing.assert_allclose(new[la] - new[lk], rest[la] - rest[lk], atol=1e-3)  # the shin is unchanged
    others = [k for k in range(18) if k not in (lk, la, tree.joint_index("thorax"))]
    np.testing.assert_allclose(new[others], rest[others], atol=1e-3)


def test_set_offsets_places_the_frame_at_the_new_offset():
    tree = kin.set_offsets(presets.h36m18(), {"l_elbow": (10.0, -200.0, 30.0)})
    rest = np.asarray(kin.rest_pose(tree))
    np.testing.assert_allclose(rest[tree.joint_index("l_elbow")] - rest[tree.joint_index("l_shoulder")],
                               (10.0, -200.0, 30.0), atol=1e-3)
    # with the shoulder rotated by 90 degrees about z, the new offset turns with it: (x, y) -> (-y, x)
    a = np.zeros(tree.num_dofs, np.float32)
    a[tree.param_names.index("L_Shoulder_RotZ")] = math.pi / 2
    posed = np.asarray(kin.forward_kinematics(tree, a).joints)
    np.testing.assert_allclose(posed[tree.joint_index("l_elbow")] - posed[tree.joint_index("l_shoulder")],
                               (200.0, 10.0, 30.0), atol=1e-3)


def test_transforms_pack_rotations_and_positions_into_4x4():
    tree = presets.seed_h36m18()
    names = tree.param_names
    a = np.zeros((2, tree.num_dofs), np.float32)
    rz, rx, ry = 0.4, -0.7, 1.1
    for n, v in (("Root_RotZ", rz), ("Root_RotX", rx), ("Root_RotY", ry)):
        a[:, names.index(n)] = v
    t = np.array([[10.0, 20.0, 30.0], [-5.0, 0.0, 2000.0]], np.float32)
    out = kin.forward_kinematics(tree, a, t)
    m = np.asarray(out.transforms)
    assert m.shape == (2, tree.num_entries, 4, 4)
    np.testing.assert_array_equal(m[..., 3, :], np.broadcast_to([0.0, 0.0, 0.0, 1.0], m.shape[:-2] + (4,)))
    np.testing.assert_array_equal(m[..., :3, :3], np.asarray(out.rotations))
    np.testing.assert_array_equal(m[..., :3, 3], np.asarray(out.positions))
    # root frame by hand: [Rz Rx Ry | t]; a child frame without dofs: same rotation, t + R @ offset
    root = Rz(rz) @ Rx(rx) @ Ry(ry)
    pelvis, l_hip = tree.index("pelvis"), tree.index("l_hip")
    for b in range(2):
        np.testing.assert_allclose(m[b, pelvis, :3, :3], root, atol=1e-6)
        np.testing.assert_allclose(m[b, pelvis, :3, 3], t[b], atol=1e-4)
        np.testing.assert_allclose(m[b, l_hip, :3, 3], t[b] + root @ [84.7, 0.0, 0.0], atol=1e-3)
    # output joints are the translations of the output entries, in the tree's output axes (x, z, y)
    rows = np.asarray(tree.output_indices)
    np.testing.assert_allclose(np.asarray(out.joints), m[:, rows][..., :3, 3][..., [0, 2, 1]], atol=1e-5)


# ------------------------------------------------------------------ sines and cosines
def quarter_turn_neighbours(count):
    """float32 angles at and beside whole multiples of pi/2 (where sin or cos is near 0)."""
    x = (np.arange(-count, count) * (np.pi / 2)).astype(np.float32)
    return np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(-np.inf))])


def test_sincos_is_within_1e_7_of_float64_below_its_range():
    rng = np.random.default_rng(21)
    limit = rotations.SINCOS_POLYNOMIAL_RANGE
    just_below = np.nextafter(np.float32(limit), np.float32(0))
    x = np.concatenate([rng.uniform(-m, m, 200_000) for m in (1.0, 4.0, 100.0, limit)]
                       + [quarter_turn_neighbours(40_000), [just_below, 0.0, 1e-30]]).astype(np.float32)
    sin, cos = jax.jit(rotations.sincos)(x)
    np.testing.assert_allclose(np.asarray(sin), np.sin(x.astype(np.float64)), rtol=0, atol=1e-7)
    np.testing.assert_allclose(np.asarray(cos), np.cos(x.astype(np.float64)), rtol=0, atol=1e-7)
    assert np.asarray(sin)[-1] == np.float32(1e-30)  # tiny angles keep their relative precision
    # the polynomial path is the one taken on the CPU backend, jnp's elsewhere
    path = rotations._sincos_polynomial if jax.default_backend() == "cpu" else lambda a: (jnp.sin(a), jnp.cos(a))
    for got, want in zip((sin, cos), jax.jit(path)(x)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("odd", [rotations.SINCOS_POLYNOMIAL_RANGE, -1e9, np.nan, np.inf])
def test_sincos_takes_jnp_sin_and_cos_with_one_angle_out_of_range(odd):
    x = np.random.default_rng(22).uniform(-4, 4, 64).astype(np.float32)
    x[17] = odd
    sin, cos = rotations.sincos(x)
    np.testing.assert_array_equal(np.asarray(sin), np.asarray(jnp.sin(x)))  # NaN where jnp gives NaN
    np.testing.assert_array_equal(np.asarray(cos), np.asarray(jnp.cos(x)))


def test_sincos_of_other_dtypes_is_jnp_sin_and_cos():
    x = np.random.default_rng(23).uniform(-4, 4, 64)
    with jax.enable_x64(True):
        sin, cos = rotations.sincos(jnp.asarray(x, jnp.float64))
        assert sin.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(sin), np.sin(x), rtol=0, atol=1e-15)
        np.testing.assert_allclose(np.asarray(cos), np.cos(x), rtol=0, atol=1e-15)
    xb = jnp.asarray(x, jnp.bfloat16)
    sin, cos = rotations.sincos(xb)
    assert sin.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(sin), np.asarray(jnp.sin(xb)))
    np.testing.assert_array_equal(np.asarray(cos), np.asarray(jnp.cos(xb)))


def test_sincos_gradients_are_cos_and_minus_sin_also_under_vmap():
    rng = np.random.default_rng(24)
    x = rng.uniform(-10, 10, (4, 256)).astype(np.float32)
    u, v = rng.normal(size=(2, 4, 256)).astype(np.float32)

    def weighted(a, wu, wv):
        s, c = rotations.sincos(a)
        return jnp.sum(s * wu + c * wv)

    grad = jax.jit(jax.vmap(jax.grad(weighted)))(x, u, v)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(grad), u * np.cos(x64) - v * np.sin(x64), rtol=0,
                               atol=3e-7 * (np.abs(u) + np.abs(v)).max())


# ------------------------------------------------------------------ inverse use
def test_fit_to_joints_round_trip_within_1mm():
    tree = presets.h36m18()
    rng = np.random.default_rng(9)
    lim = tree.limits_array
    lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -math.pi)
    hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], math.pi)
    angles = (lo + rng.uniform(size=(6, tree.num_dofs)) * (hi - lo)).astype(np.float32)
    trans = (rng.normal(size=(6, 3)) * 500 + [0, 0, 4000]).astype(np.float32)
    target = kin.forward_kinematics(tree, angles, trans).joints
    fit = kin.fit_to_joints(tree, target)
    again = kin.forward_kinematics(tree, fit.angles, fit.translation, fit.scale).joints
    err = np.linalg.norm(np.asarray(again - target), axis=-1)
    assert err.max() < 1.0, err.max()
    np.testing.assert_allclose(np.asarray(fit.residual), err.mean(-1), atol=1e-2)


def test_fit_recovers_scale_and_respects_limits():
    tree = presets.seed_h36m18()
    rng = np.random.default_rng(10)
    lim = tree.limits_array
    lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -1.0)
    hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], 1.0)
    angles = (lo + rng.uniform(size=(3, tree.num_dofs)) * (hi - lo)).astype(np.float32)
    target = kin.forward_kinematics(tree, angles, scale=np.array([0.8, 1.0, 1.3], np.float32)).joints
    fit = kin.fit_to_joints(tree, target, fit_scale=True, respect_limits=True)
    np.testing.assert_allclose(np.asarray(fit.scale), [0.8, 1.0, 1.3], rtol=1e-3)
    got = np.asarray(fit.angles)
    assert np.all(got >= lim[:, 0] - 1e-6) and np.all(got <= lim[:, 1] + 1e-6)
    assert float(np.max(fit.residual)) < 1.0


def test_chunked_and_unchunked_fk_give_the_same_values_and_gradients():
    tree = presets.seed_h36m18()
    rng = np.random.default_rng(11)
    n = 37  # chunk_size 12: 4 balanced chunks of 10 (3 padded rows)
    a = rng.normal(size=(n, tree.num_dofs)).astype(np.float32)
    t = rng.normal(size=(n, 3)).astype(np.float32) * 1000
    s = rng.uniform(0.5, 1.5, size=n).astype(np.float32)
    w = rng.normal(size=(n, 18, 3)).astype(np.float32)

    @functools.partial(jax.jit, static_argnums=3)
    def value_and_grads(x, tt, ss, size):  # joints and the gradients of sum(joints * w)
        joints, vjp = jax.vjp(lambda x, tt, ss: kin.forward_kinematics(tree, x, tt, ss, chunk_size=size).joints,
                              x, tt, ss)
        return joints, vjp(w)

    plain, g_plain = value_and_grads(a, t, s, 0)
    plain = np.asarray(plain)
    chunked, g_chunked = value_and_grads(a, t, s, 12)
    # float32 at ~1000 mm: a different vectorization may round differently (1 ulp ~ 6e-5 mm)
    np.testing.assert_allclose(np.asarray(chunked), plain, rtol=1e-6, atol=1e-6 * np.abs(plain).max())
    for gc, gp in zip(g_chunked, g_plain):
        gp = np.asarray(gp)
        np.testing.assert_allclose(np.asarray(gc), gp, rtol=1e-5, atol=1e-6 * np.abs(gp).max())
    # and the values are right: the rest pose (angles 0) against the independent torch reference
    expected = ref.to_numpy(ref.seed_fk(torch.from_numpy(np.concatenate([t, np.zeros((n, 26), np.float32)], 1)),
                                        torch.from_numpy(s)))
    rest = np.asarray(value_and_grads(np.zeros_like(a), t, s, 12)[0])
    np.testing.assert_allclose(rest, expected, atol=1e-3)
    # every entry's position and rotation too, in the same sample order
    full = {size: kin.forward_kinematics(tree, a, t, s, chunk_size=size) for size in (0, 12)}
    for field in ("positions", "rotations"):
        want = np.asarray(getattr(full[0], field))
        np.testing.assert_allclose(np.asarray(getattr(full[12], field)), want, rtol=1e-6,
                                   atol=1e-6 * np.abs(want).max())


def test_chunking_really_happens_only_when_asked():
    tree = presets.h36m18()
    a = jnp.zeros((10, tree.num_dofs))
    jaxpr = lambda size: str(jax.make_jaxpr(  # noqa: E731
        lambda x: kin.forward_kinematics(tree, x, chunk_size=size).joints)(a))
    assert "scan" not in jaxpr(0) and "scan" not in jaxpr(10)  # batch <= chunk: one step
    assert "scan" in jaxpr(4)  # 10 samples in chunks of <= 4: a sequential loop (lax.map)


def test_default_chunk_size_depends_on_the_backend():
    assert fk_module.resolve_chunk_size(None, backend="cpu") == fk_module.CPU_CHUNK_SIZE > 0
    for backend in ("gpu", "cuda", "rocm", "tpu"):
        assert fk_module.resolve_chunk_size(None, backend=backend) == 0  # accelerators: never chunk
    assert fk_module.resolve_chunk_size(0, backend="cpu") == 0
    assert fk_module.resolve_chunk_size(512, backend="gpu") == 512
    assert fk_module.resolve_chunk_size(None) == (fk_module.CPU_CHUNK_SIZE if jax.default_backend() == "cpu" else 0)
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            fk_module.resolve_chunk_size(bad)


def test_empty_batch_gives_empty_joints():
    tree = presets.h36m18()
    out = kin.forward_kinematics(tree, np.zeros((0, tree.num_dofs), np.float32))
    assert out.joints.shape == (0, 18, 3)
    assert out.transforms.shape == (0, tree.num_entries, 4, 4)
    assert kin.forward_kinematics(tree, np.zeros((3, 0, tree.num_dofs), np.float32)).joints.shape == (3, 0, 18, 3)


def test_readme_python_examples_run():
    import os
    import re

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        namespace = {}
        exec(block, namespace)  # noqa: S102 - the README's own examples
    assert namespace["joints"].shape == (18 + 2 + 4 + 4, 3)


def test_a_tree_cannot_be_changed_in_place():
    """The offsets a tree holds are a read-only copy: neither the tree's array nor the array it
    was built from can change it; edits return new trees."""
    tree = kin.presets.h36m18()
    before = np.array(tree.offsets)
    with pytest.raises(ValueError, match="read-only"):
        tree.offsets[1, 0] = 123.0
    source = np.array(tree.offsets)
    rebuilt = dataclasses.replace(tree, offsets=source)
    source[1, 0] = 123.0  # the caller's array stays the caller's
    np.testing.assert_array_equal(rebuilt.offsets, before)
    scaled = kin.scale_bones(tree, 2.0)
    np.testing.assert_array_equal(tree.offsets, before)
    assert not np.array_equal(scaled.offsets, before)
