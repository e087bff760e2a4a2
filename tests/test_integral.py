"""Soft-argmax, decoding and flip test against an independent PyTorch implementation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kinpose_jax import geometry, integral, skeleton
from tests import torch_reference as ref

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

J, D, H, W = 5, 8, 12, 10


def random_heatmaps(seed, b=3):
    return (np.random.default_rng(seed).normal(size=(b, J * D, H, W)) * 3).astype(np.float32)


def test_softargmax_3d_matches_torch_in_both_layouts():
    hm = random_heatmaps(0)
    expected = ref.to_numpy(ref.softargmax_3d_nchw(torch.from_numpy(hm), J, D))
    nchw = np.asarray(integral.softargmax_3d(hm, J, D, layout="NCHW"))
    nhwc = np.asarray(integral.softargmax_3d(np.transpose(hm, (0, 2, 3, 1)), J, D, layout="NHWC"))
    np.testing.assert_allclose(nchw, expected, atol=1e-5)
    np.testing.assert_allclose(nhwc, expected, atol=1e-5)


# on CPU: 15 rows in one vectorized step; 35 rows (each 8 x 16 x 8 = 1024 bins, read by the
# 1024-wide column max) in steps of integral.CPU_ROWS_PER_STEP and a remainder
@pytest.mark.parametrize("b, d, h, w", [(3, D, H, W), (7, 8, 16, 8)])
def test_softargmax_3d_values_and_gradient_match_torch_autograd(b, d, h, w):
    rng = np.random.default_rng(b)
    hm = (rng.normal(size=(b, J * d, h, w)) * 3).astype(np.float32)
    weights = rng.normal(size=(b, J, 3)).astype(np.float32)
    out, vjp = jax.vjp(lambda x: integral.softargmax_3d(x, J, d, layout="NCHW"), hm)
    t = torch.tensor(hm, requires_grad=True)
    expected = ref.softargmax_3d_nchw(t, J, d)
    (expected * torch.from_numpy(weights)).sum().backward()
    np.testing.assert_allclose(np.asarray(out), ref.to_numpy(expected), atol=1e-5)
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(weights))[0]), ref.to_numpy(t.grad), atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("d, h, w", [(8, 16, 8), (3, 16, 8), (3, 5, 7)])  # 1024-, 128-wide blocks, none
def test_softargmax_3d_is_exact_on_a_spike_far_from_zero(d, h, w):
    """A spike 1000 above a floor at 1e4 gives exactly its own bin: the softmax subtracts each
    row's true maximum (a maximum off by more than ~88 would give inf, or 0 / 0)."""
    b, j = 3, 9  # 27 rows: steps of integral.CPU_ROWS_PER_STEP and a remainder on the CPU
    rng = np.random.default_rng(d * h * w)
    hm = np.full((b, j, d, h, w), 1e4, np.float32) + rng.uniform(0, 1, (b, j, d, h, w)).astype(np.float32)
    spikes = rng.integers(0, [d, h, w], size=(b, j, 3))
    for bi in range(b):
        for ji in range(j):
            z, y, x = spikes[bi, ji]
            hm[bi, ji, z, y, x] = 1.1e4
    out = np.asarray(integral.softargmax_3d(hm.reshape(b, j * d, h, w), j, d, layout="NCHW"))
    expected = np.stack([spikes[..., 2] / w, spikes[..., 1] / h, spikes[..., 0] / d], -1) - 0.5
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # on the CPU the one pass shifted by the middle planes' maxima overflows here, so this is the
    # result of the max-subtracted pass that replaces it
    rows = jnp.asarray(hm.reshape(b * j, d, h, w))
    assert not np.all(np.isfinite(one_pass_attempt(rows)))


def one_pass_attempt(rows):
    """The CPU path's first try: every row's sums ([R, 1 + k]: total, then index-weighted) with the
    exponentials shifted by the row's middle-plane maximum."""
    return np.asarray(integral._rows_sums_in_steps(rows, integral._rows_shift_estimate(rows)))


def test_softargmax_3d_is_exact_with_the_maximum_far_above_the_middle_plane():
    """The CPU path's one pass shifts each row by its middle plane's maximum, not the row's own;
    with the maximum 60 above that shift (exponentials up to e^60) the result is still the softmax's.
    Compared with torch in float64."""
    b, j, d, h, w = 3, 9, 8, 16, 8  # 27 rows: steps of integral.CPU_ROWS_PER_STEP and a remainder
    rng = np.random.default_rng(11)
    hm = (rng.normal(size=(b, j, d, h, w)) * 3).astype(np.float32)
    hm[:, :, d // 2] -= 60.0
    rows = jnp.asarray(hm.reshape(b * j, d, h, w))
    assert np.all(hm.reshape(b * j, -1).max(1) - hm[:, :, d // 2].reshape(b * j, -1).max(1) > 55)
    sums = one_pass_attempt(rows)
    assert np.all(np.isfinite(sums))  # so the one pass is the result
    one_pass = sums[:, 1:] / sums[:, :1] / np.array([w, h, d]) - 0.5
    out = np.asarray(integral.softargmax_3d(hm.reshape(b, j * d, h, w), j, d, layout="NCHW"))
    expected = ref.to_numpy(ref.softargmax_3d_nchw(torch.from_numpy(hm.reshape(b, j * d, h, w)).double(), j, d))
    np.testing.assert_allclose(one_pass.reshape(b, j, 3), expected, atol=1e-6)
    np.testing.assert_allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("dims", [3, 2])
def test_softargmax_is_exact_where_only_the_one_pass_total_overflows(dims):
    """Zeros with two peaks, e^88.6 at bin 0 and e^87 at bin 1 of every axis: shifted by the middle
    plane's maximum (0), the sum of exponentials overflows while the index-weighted sums do not
    (bin 0 weighs nothing). The overflow of the total alone must send the rows to the
    max-subtracted pass; the ratio finite / inf would give -0.5 everywhere."""
    b, j, d, h, w = 3, 3, 8, 16, 8  # 9 rows: a step of integral.CPU_ROWS_PER_STEP and a remainder
    hm = np.zeros((b, j, d, h, w), np.float32)
    hm[:, :, 0, 0, 0], hm[:, :, 1, 1, 1] = 88.6, 87.0
    if dims == 2:
        hm = hm[:, :, 0]
        hm[:, :, 1, 1] = 87.0
    sums = one_pass_attempt(jnp.asarray(hm.reshape((b * j,) + hm.shape[2:])))
    assert np.all(np.isinf(sums[:, 0])) and np.all(np.isfinite(sums[:, 1:]))
    if dims == 3:
        out = integral.softargmax_3d(hm.reshape(b, j * d, h, w), j, d, layout="NCHW")
        expected = ref.softargmax_3d_nchw(torch.from_numpy(hm.reshape(b, j * d, h, w)).double(), j, d)
    else:
        out = integral.softargmax_2d(hm, "NCHW")
        expected = ref.softargmax_2d_nchw(torch.from_numpy(hm).double())
    assert np.all(ref.to_numpy(expected) > -0.49)
    np.testing.assert_allclose(np.asarray(out), ref.to_numpy(expected), atol=1e-6)


def test_softargmax_2d_matches_torch():
    hm = np.random.default_rng(3).normal(size=(2, J, H, W)).astype(np.float32) * 4
    expected = ref.to_numpy(ref.softargmax_2d_nchw(torch.from_numpy(hm)))
    np.testing.assert_allclose(np.asarray(integral.softargmax_2d(hm, "NCHW")), expected, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(integral.softargmax_2d(np.transpose(hm, (0, 2, 3, 1)), "NHWC")), expected, atol=1e-5)


@pytest.mark.parametrize("b, j", [(1, 3), (7, 5)])  # on CPU: one vectorized step; steps + a remainder
def test_softargmax_2d_values_and_gradients_match_torch_autograd(b, j):
    rng = np.random.default_rng(b)
    hm = (rng.normal(size=(b, j, H, W)) * 3).astype(np.float32)
    w = rng.normal(size=(b, j, 2)).astype(np.float32)
    t = torch.tensor(hm, requires_grad=True)
    expected = ref.softargmax_2d_nchw(t)
    (expected * torch.from_numpy(w)).sum().backward()
    for layout, x, to_nchw in (("NCHW", hm, lambda a: a), ("NHWC", np.transpose(hm, (0, 2, 3, 1)),
                                                           lambda a: np.transpose(a, (0, 3, 1, 2)))):
        out, vjp = jax.vjp(lambda y: integral.softargmax_2d(y, layout), x)
        np.testing.assert_allclose(np.asarray(out), ref.to_numpy(expected), atol=1e-5)
        np.testing.assert_allclose(to_nchw(np.asarray(vjp(jnp.asarray(w))[0])), ref.to_numpy(t.grad),
                                   atol=1e-6, rtol=1e-4)


def test_a_sharp_peak_decodes_to_its_bin_and_huge_logits_stay_finite():
    hm = np.full((1, J * D, H, W), -1e4, np.float32)
    j, d, y, x = 2, 5, 7, 3
    hm[0, j * D + d, y, x] = 1e4  # would overflow a naive exp
    out = np.asarray(integral.softargmax_3d(hm, J, D, layout="NCHW"))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, j], [x / W - 0.5, y / H - 0.5, d / D - 0.5], atol=1e-6)
    px = np.asarray(geometry.normalized_to_patch(out, (256, 192)))
    np.testing.assert_allclose(px[0, j], [x / W * 256, y / H * 192, (d / D - 0.5) * 256], atol=1e-3)
    back = np.asarray(geometry.patch_to_normalized(px, (256, 192)))
    np.testing.assert_allclose(back, out, atol=1e-6)


def test_bfloat16_heatmaps_are_reduced_in_float32():
    hm = random_heatmaps(4)
    out = integral.softargmax_3d(jnp.asarray(hm, jnp.bfloat16), J, D, layout="NCHW")
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), np.asarray(integral.softargmax_3d(hm, J, D, "NCHW")), atol=2e-2)


def test_wrong_channel_count_is_refused():
    with pytest.raises(ValueError, match="num_joints \\* depth_bins"):
        integral.softargmax_3d(np.zeros((1, 7, 4, 4), np.float32), J, D, layout="NCHW")


def test_flip_merge_by_hand_and_flip_twice_is_identity():
    pw = 256.0
    pairs = skeleton.H36M_FLIP_PAIRS
    joints = np.random.default_rng(5).uniform(0, 255, size=(2, 18, 3)).astype(np.float32)
    twice = geometry.flip_horizontal(geometry.flip_horizontal(joints, pw, pairs), pw, pairs)
    np.testing.assert_allclose(np.asarray(twice), joints, atol=1e-4)
    # hand-worked: joint 1 (R-hip) of the flipped patch at u=200 becomes joint 4 at 256-200-1=55
    flipped = np.zeros((1, 18, 3), np.float32)
    flipped[0, 1] = (200.0, 30.0, 7.0)
    own = np.zeros((1, 18, 3), np.float32)
    own[0, 4] = (57.0, 32.0, 9.0)
    merged = np.asarray(integral.merge_flip_test(own, flipped, pw, pairs))
    np.testing.assert_allclose(merged[0, 4], (56.0, 31.0, 8.0))
