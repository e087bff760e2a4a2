"""MPJPE / PA-MPJPE / rigid alignment / per-group table / back-projection."""

import math

import jax
import numpy as np
import pytest
import torch

from kinpose_jax import metrics, skeleton
from tests import torch_reference as ref


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
        assert np.max(np.abs(np.asarray(value))) < 1e-2, name


def test_pa_mpjpe_is_invariant_to_a_random_similarity_transform():
    gt = random_pose(1)
    pred = gt + np.random.default_rng(2).normal(size=gt.shape).astype(np.float32) * 20
    r, s, t = random_similarity(3)
    transformed = s * pred @ r.T + t
    np.testing.assert_allclose(metrics.pa_mpjpe(transformed, gt), metrics.pa_mpjpe(pred, gt), rtol=1e-3)
    # a pure similarity transform of the truth aligns back to zero error ...
    assert float(np.max(metrics.pa_mpjpe(s * gt @ r.T + t, gt))) < 0.05
    # ... but the seed's rigid alignment cannot undo the scale
    assert float(np.min(metrics.rigid_aligned_mpjpe(s * gt @ r.T + t, gt))) > 1.0
    assert float(np.max(metrics.rigid_aligned_mpjpe(gt @ r.T + t, gt))) < 0.05


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
    np.testing.assert_allclose(np.asarray(metrics.rigid_aligned_mpjpe(pred, gt)), centroid_err, rtol=1e-5)
    for fn in (metrics.pa_mpjpe, metrics.rigid_aligned_mpjpe):
        g = np.asarray(jax.grad(lambda p: fn(p, gt).sum())(pred))  # noqa: B023
        assert np.all(np.isfinite(g)), fn.__name__
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
    # bones touching the two moved joints: (1,2),(2,3) err 5 each; (12,13) err 12 -> 22/16
    assert table["bone"] == pytest.approx(22.0 / 16)


def test_mpjpe_is_root_relative():
    gt = random_pose(6)
    shifted = gt + np.array([100.0, -50.0, 2000.0], np.float32)
    assert float(np.max(metrics.mpjpe(shifted, gt))) < 1e-3
    assert float(np.min(metrics.mpjpe(shifted, gt, root=None))) > 100


def test_back_projection_inverts_projection():
    rng = np.random.default_rng(7)
    cam = rng.normal(size=(3, 18, 3)).astype(np.float32) * 400 + np.array([0, 0, 5000], np.float32)
    focal = np.array([[1145.0, 1143.8]] * 3, np.float32)
    center = np.array([[512.5, 515.4]] * 3, np.float32)
    uv = np.asarray(metrics.camera_to_pixel(cam, focal, center))
    root_depth = cam[:, skeleton.H36M_ROOT, 2]
    img = np.concatenate([uv, cam[..., 2:] - root_depth[:, None, None]], -1)
    np.testing.assert_allclose(np.asarray(metrics.pixel_to_camera(img, root_depth, focal, center)), cam, rtol=1e-4,
                               atol=1e-2)
    # hand-worked: u = cx + fx at depth Z gives X = Z
    one = np.array([[[512.5 + 1145.0, 515.4, 0.0]]], np.float32)
    np.testing.assert_allclose(np.asarray(metrics.pixel_to_camera(one, np.array([4000.0]), focal[:1], center[:1]))[0, 0],
                               [4000.0, 0.0, 4000.0], rtol=1e-5)
    assert math.isfinite(float(np.asarray(metrics.pa_mpjpe(cam, cam)).sum()))


def test_error_names_are_the_keys_of_the_table():
    rng = np.random.default_rng(0)
    table = metrics.h36m_errors(rng.normal(size=(2, 18, 3)), rng.normal(size=(2, 18, 3)))
    assert tuple(table) == metrics.h36m_error_names()
