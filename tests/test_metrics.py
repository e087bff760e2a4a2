"""Protocol #1/#2, the original's aligned and bone errors, PCK/AUC, the per-group table."""

import jax
import numpy as np
import pytest
import torch

from kinpose_jax import metrics, skeleton
from tests import torch_reference as ref

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)


def random_pose(seed, b=4):
    return np.random.default_rng(seed).normal(size=(b, 18, 3)).astype(np.float32) * 300


def random_similarity(seed):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    return q.astype(np.float32), float(rng.uniform(0.5, 2.0)), rng.normal(size=3).astype(np.float32) * 500


def test_ground_truth_against_itself_is_zero_everywhere():
    gt = random_pose(0)
    table = metrics.h36m_errors(gt, gt)
    for name, value in table.items():
        if "pck" in name:
            np.testing.assert_allclose(np.asarray(value), 100.0, err_msg=name)
        elif name == "auc":  # strictly below each threshold: 0 mm counts at none but the first (0 mm)
            np.testing.assert_allclose(np.asarray(value), 100.0 * 30 / 31, rtol=1e-6)
        else:
            assert np.max(np.abs(np.asarray(value))) < 1e-2, name


def test_pa_mpjpe_is_invariant_to_a_random_similarity_transform():
    gt = random_pose(1)
    pred = gt + np.random.default_rng(2).normal(size=gt.shape).astype(np.float32) * 20
    r, s, t = random_similarity(3)
    transformed = s * pred @ r.T + t
    np.testing.assert_allclose(metrics.pa_mpjpe(transformed, gt), metrics.pa_mpjpe(pred, gt), rtol=1e-3)
    # a pure similarity transform of the truth aligns back to zero error ...
    assert float(np.max(metrics.pa_mpjpe(s * gt @ r.T + t, gt))) < 0.05
    # ... but the original's rigid alignment cannot undo the scale
    assert float(np.min(metrics.seed_aligned_mpjpe(s * gt @ r.T + t, gt))) > 1.0
    assert float(np.max(metrics.seed_aligned_mpjpe(gt @ r.T + t, gt))) < 0.05


@pytest.mark.parametrize("with_scale", [True, False])
def test_procrustes_matches_independent_torch_reference(with_scale):
    rng = np.random.default_rng(4)
    # normalized units (the network's range, ~[-0.5, 0.5]): float32 vs float64 torch within 1e-5
    gt = (rng.normal(size=(64, 18, 3)) * 0.15).astype(np.float32)
    pred = (gt * 0.8 + rng.normal(size=gt.shape) * 0.025).astype(np.float32)
    expected = ref.to_numpy(ref.procrustes(torch.from_numpy(pred).double(), torch.from_numpy(gt).double(), with_scale))
    np.testing.assert_allclose(np.asarray(metrics.procrustes_align(pred, gt, with_scale)), expected,
                               rtol=1e-5, atol=1e-5)
    # millimetres (~1000 mm): the same relative accuracy, 5e-6 of the data scale
    gt_mm, pred_mm = gt * 2000.0, pred * 2000.0
    expected = ref.to_numpy(ref.procrustes(torch.from_numpy(pred_mm).double(), torch.from_numpy(gt_mm).double(),
                                           with_scale))
    got = np.asarray(metrics.procrustes_align(pred_mm, gt_mm, with_scale))
    assert np.abs(got - expected).max() <= 5e-6 * np.abs(gt_mm).max()


def test_collapsed_prediction_gives_the_centroid_error_with_finite_gradients():
    gt = random_pose(8, b=3)[:, :17]
    pred = np.broadcast_to(np.array([120.0, -40.0, 5000.0], np.float32), gt.shape).copy()  # one point
    # independent expectation: the best similarity fit of a single point is gt's centroid
    centroid_err = np.linalg.norm(gt - gt.mean(1, keepdims=True), axis=-1).mean(-1)
    pa = np.asarray(metrics.pa_mpjpe(pred, gt))
    assert np.all(np.isfinite(pa))
    np.testing.assert_allclose(pa, centroid_err, rtol=1e-5)
    rigid = lambda p, g: metrics.per_joint_error(metrics.procrustes_align(p, g, with_scale=False), g).mean(-1)  # noqa: E731
    np.testing.assert_allclose(np.asarray(rigid(pred, gt)), centroid_err, rtol=1e-5)
    for fn in (metrics.pa_mpjpe, rigid, metrics.seed_aligned_mpjpe):
        g = np.asarray(jax.jit(jax.grad(lambda p: fn(p, gt).sum()))(pred))  # noqa: B023
        assert np.all(np.isfinite(g))
    # a collapsed ground truth: s = 0 reproduces it exactly
    point = np.broadcast_to(gt[:, :1], gt.shape).copy()
    np.testing.assert_allclose(np.asarray(metrics.pa_mpjpe(gt, point)), 0.0, atol=1e-3)
    # the guard does not touch small but real predictions: PA-MPJPE is scale invariant
    noisy = gt + np.random.default_rng(9).normal(size=gt.shape).astype(np.float32) * 30
    np.testing.assert_allclose(np.asarray(metrics.pa_mpjpe(noisy * 1e-3 + 7.0, gt)),
                               np.asarray(metrics.pa_mpjpe(noisy, gt)), rtol=1e-3)


def test_hand_worked_table():
    gt = np.zeros((1, 18, 3), np.float32)
    gt[0, :, 1] = np.arange(18) * 10.0
    pred = gt.copy()
    pred[0, 2] += (3.0, 4.0, 0.0)  # R-knee off by 5 mm
    pred[0, 13] += (0.0, 0.0, -12.0)  # L-wrist off by 12 mm in depth
    table = {k: float(v[0]) for k, v in metrics.h36m_errors(pred, gt).items()}
    assert table["knee"] == pytest.approx(2.5)
    assert table["wrist"] == pytest.approx(6.0)
    assert table["root"] == 0.0 and table["hip"] == 0.0
    assert table["17j"] == pytest.approx(17.0 / 17)
    assert table["mpjpe"] == table["17j"]
    assert table["x"] == pytest.approx(3.0 / 17) and table["y"] == pytest.approx(4.0 / 17)
    assert table["z"] == pytest.approx(12.0 / 17)
    # seed bones (joint - parent) over joints 0..16: joint 2 (parent 1) and joint 3 (parent 2)
    # err 5 each, joint 13 (parent 12) err 12; the root's absolute error is 0 -> 22/17
    assert table["bone"] == pytest.approx(22.0 / 17)
    # PCK: every joint is within 105 and 150 mm; below 5 mm all but the knee (5.0, not < 5) and wrist
    assert table["seed_pck_105mm"] == pytest.approx(100.0) and table["pck_150mm"] == pytest.approx(100.0)
    assert table["seed_pck_5mm"] == pytest.approx(100.0 * 15 / 17)
    # AUC: thresholds 0, 5, ..., 150 mm; at 0 none is below, at 5 15 of 17, at 10 16 of 17 (wrist 12 mm)
    assert table["auc"] == pytest.approx(100.0 * (0 + 15 / 17 + 16 / 17 + 28) / 31)


def test_mpjpe_is_root_relative():
    gt = random_pose(6)
    shifted = gt + np.array([100.0, -50.0, 2000.0], np.float32)
    assert float(np.max(metrics.mpjpe(shifted, gt))) < 1e-3
    assert float(np.min(metrics.mpjpe(shifted, gt, root=None))) > 100


def test_pa_mpjpe_of_a_pose_with_itself_is_zero():
    rng = np.random.default_rng(7)
    cam = rng.normal(size=(3, 18, 3)).astype(np.float32) * 400 + np.array([0, 0, 5000], np.float32)
    err = np.asarray(metrics.pa_mpjpe(cam, cam))
    assert np.all(np.isfinite(err)) and float(err.max()) < 1e-2


def test_error_names_are_the_keys_of_the_table():
    rng = np.random.default_rng(0)
    table = metrics.h36m_errors(rng.normal(size=(2, 18, 3)), rng.normal(size=(2, 18, 3)))
    assert tuple(table) == metrics.h36m_error_names()


def seed_recipe_aligned_numpy(pred, gt):
    """The original's hm36_17j_align for one sample, written independently (numpy float64): Kabsch
    (rotation + translation, reflection fixed) on all 18 joints, re-centre both on the root
    (the *aligned* prediction's root), mean error over joints 0..16."""
    mu_p, mu_g = pred.mean(0), gt.mean(0)
    h = (pred - mu_p).T @ (gt - mu_g)
    u, _, vt = np.linalg.svd(h)
    rot = vt.T @ u.T
    if np.linalg.det(rot) < 0:
        vt[2] *= -1
        rot = vt.T @ u.T
    aligned = (pred - mu_p) @ rot.T + mu_g
    aligned, gt = aligned - aligned[0], gt - gt[0]
    return np.linalg.norm(aligned[:17] - gt[:17], axis=-1).mean()


def seed_recipe_bone_numpy(pred, gt, parent_ids):
    """The original's bone error: bone_j = joint_j - joint_parent(j), the root (own parent) keeps its
    absolute position; mean Euclidean error over joints 0..16 (a per-joint loop)."""
    errs = []
    for j in range(17):
        p = parent_ids[j]
        bp = pred[j] - (pred[p] if p != j else 0.0)
        bg = gt[j] - (gt[p] if p != j else 0.0)
        errs.append(np.linalg.norm(bp - bg))
    return np.mean(errs)


def test_seed_aligned_error_moved_pelvis_matches_the_seed_recipe():
    gt = random_pose(11, b=1)[0].astype(np.float64) + [0.0, 0.0, 4500.0]
    pred = gt.copy()
    pred[0, 0] += 100.0  # only the pelvis is wrong, by 100 mm in x
    expected = seed_recipe_aligned_numpy(pred, gt)
    # the fit barely moves the other joints; re-centring on the aligned root spreads ~100 mm over all 16
    assert expected > 80.0
    got = float(metrics.seed_aligned_mpjpe(pred[None].astype(np.float32), gt[None].astype(np.float32))[0])
    assert got == pytest.approx(expected, rel=1e-4)
    # (a 17-joint fit without re-centring, the former definition, gives a much smaller number)
    no_recentre = np.linalg.norm(np.asarray(metrics.procrustes_align(pred[:17], gt[:17], with_scale=False)) - gt[:17],
                                 axis=-1).mean()
    assert no_recentre < expected / 4


def test_seed_aligned_and_bone_match_independent_numpy_on_random_poses():
    rng = np.random.default_rng(12)
    gt = random_pose(13, b=32).astype(np.float64) + [0.0, 0.0, 5000.0]
    pred = gt + rng.normal(size=gt.shape) * 60 + rng.normal(size=(32, 1, 3)) * 80
    # a few predictions mirrored: the rigid fit must still be a proper rotation
    pred[:4, :, 0] = -pred[:4, :, 0]
    table = metrics.h36m_errors(pred.astype(np.float32), gt.astype(np.float32))
    want_aligned = [seed_recipe_aligned_numpy(p, g) for p, g in zip(pred, gt)]
    want_bone = [seed_recipe_bone_numpy(p, g, skeleton.H36M_PARENT_IDS) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(np.asarray(table["seed_aligned"]), want_aligned, rtol=2e-4)
    np.testing.assert_allclose(np.asarray(table["bone"]), want_bone, rtol=1e-4)
    # the root term of the bone error is absolute: a global shift of the prediction changes it
    shifted = metrics.h36m_errors((pred + [300.0, 0, 0]).astype(np.float32), gt.astype(np.float32))
    want_shifted = [seed_recipe_bone_numpy(p + [300.0, 0, 0], g, skeleton.H36M_PARENT_IDS) for p, g in zip(pred, gt)]
    np.testing.assert_allclose(np.asarray(shifted["bone"]), want_shifted, rtol=1e-4)
    assert float(np.max(np.abs(np.asarray(shifted["bone"]) - np.asarray(table["bone"])))) > 1.0
    np.testing.assert_allclose(np.asarray(shifted["seed_aligned"]), np.asarray(table["seed_aligned"]), rtol=1e-3)


def test_pck_and_auc_match_independent_numpy():
    rng = np.random.default_rng(14)
    gt = random_pose(15, b=16)
    pred = gt + rng.normal(size=gt.shape).astype(np.float32) * 70
    table = metrics.h36m_errors(pred, gt)
    err = np.linalg.norm((pred - pred[:, :1]) - (gt - gt[:, :1]), axis=-1)[:, :17]
    for name, t in (("seed_pck_5mm", 5), ("seed_pck_105mm", 105), ("pck_150mm", 150)):
        np.testing.assert_allclose(np.asarray(table[name]), 100 * (err < t).mean(-1), atol=1e-4, err_msg=name)
    auc = 100 * np.mean([(err < t).mean(-1) for t in np.arange(0, 151, 5)], axis=0)
    np.testing.assert_allclose(np.asarray(table["auc"]), auc, atol=1e-4)
    assert 0 < float(np.mean(table["pck_150mm"])) < 100  # the test data exercise both sides
    jitted = jax.jit(jax.vmap(lambda p, g: metrics.h36m_errors(p[None], g[None])))(pred, gt)
    np.testing.assert_allclose(np.asarray(jitted["auc"])[:, 0], auc, atol=1e-4)


def test_index_and_threshold_parameters_may_be_lists_or_numpy():
    """The jitted metrics take their static parameters as lists, numpy arrays or numpy scalars too."""
    gt = random_pose(16, b=2)
    pred = gt + np.random.default_rng(17).normal(size=gt.shape).astype(np.float32) * 20
    err = np.linalg.norm(pred - gt, axis=-1)
    want_auc = 100 * np.mean([(err < t).mean(-1) for t in (10.0, 30.0)], axis=0)
    np.testing.assert_allclose(np.asarray(metrics.pck_auc(err, np.array([10.0, 30.0]))), want_auc, atol=1e-4)
    np.testing.assert_allclose(np.asarray(metrics.bone_error(pred, gt, list(skeleton.H36M_PARENT_IDS), np.arange(17))),
                               np.asarray(metrics.bone_error(pred, gt)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(metrics.mpjpe(pred, gt, root=np.int64(0))), np.asarray(metrics.mpjpe(pred, gt)))
