"""Evaluation helpers: flip-test prediction, decoding to the image, padded-batch accounting."""

import jax.numpy as jnp
import numpy as np
import pytest

from kinpose_jax import evaluation, metrics, skeleton


class MirrorSensitiveModel:
    """A stand-in network: joints depend on the image's left/right asymmetry, so running the
    mirrored patch gives a different answer (apply(vars, images, train) like a flax module)."""

    def apply(self, variables, images, train=False):
        b = images.shape[0]
        left = jnp.mean(images[:, :, : images.shape[2] // 2], axis=(1, 2, 3))
        base = jnp.linspace(-0.3, 0.3, 18 * 3).reshape(1, 18, 3)
        return {"joints": base + left[:, None, None] * jnp.asarray(variables["w"])[None]}


def test_flip_test_averages_with_the_mirrored_back_prediction():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    w = rng.normal(size=(18, 3)).astype(np.float32) * 0.1
    batch = {"image": images, "joints": np.zeros((2, 18, 3), np.float32), "joints_vis": np.ones((2, 18, 3), np.float32)}
    model = MirrorSensitiveModel()
    plain, _ = evaluation.make_predict_fn(model, 32, flip_test=False)({"w": w}, batch)
    merged, _ = evaluation.make_predict_fn(model, 32, flip_test=True)({"w": w}, batch)
    # independent computation of the flip test in numpy
    own = (np.asarray(model.apply({"w": w}, images)["joints"]) + [0.5, 0.5, 0.0]) * 32
    flipped = (np.asarray(model.apply({"w": w}, images[:, :, ::-1])["joints"]) + [0.5, 0.5, 0.0]) * 32
    flipped[..., 0] = 32 - flipped[..., 0] - 1
    perm = np.arange(18)
    for a, b in skeleton.H36M_FLIP_PAIRS:
        perm[a], perm[b] = b, a
    expected = 0.5 * (own + flipped[:, perm])
    np.testing.assert_allclose(np.asarray(plain), own, atol=1e-4)
    np.testing.assert_allclose(np.asarray(merged), expected, atol=1e-4)
    assert np.abs(np.asarray(merged) - own).max() > 1e-3


def test_decoding_to_the_image_by_hand():
    from kinpose_jax.data import augment

    norm = np.array([[[0.0, -0.25, 0.125]]])  # patch px (128, 64, 32) of a 256 patch
    out = augment.normalized_to_image(norm, center=np.array([[500.0, 400.0]]), box_size=np.array([[300.0, 300.0]]),
                                      patch_size=(256, 256))
    np.testing.assert_allclose(out[0, 0], [500.0, 400.0 - 0.25 * 300.0, 32.0 / 256 * 2000.0], atol=1e-9)


def test_accumulator_counts_only_valid_samples():
    rng = np.random.default_rng(1)
    cam = rng.normal(size=(4, 18, 3)) * 300 + [0, 0, 4000]
    fl = np.full((4, 2), 1100.0)
    cp = np.full((4, 2), 500.0)
    uv = np.asarray(metrics.camera_to_pixel(cam, fl, cp))
    center, box = uv[:, 0, :], np.full((4, 2), 400.0)
    rel_depth = cam[..., 2] - cam[:, :1, 2]
    px = np.stack([(uv[..., 0] - center[:, None, 0]) / 400 * 256 + 128,
                   (uv[..., 1] - center[:, None, 1]) / 400 * 256 + 128, rel_depth / 2000 * 256], -1)
    batch = dict(valid=np.array([1, 1, 1, 0], np.float32), center=center, box_size=box, pelvis=cam[:, 0],
                 fl=fl, c_p=cp, joints_cam=cam)
    px_bad = px.copy()
    px_bad[3] += 1000.0  # garbage in the padding row must not count
    acc = evaluation.ErrorAccumulator()
    acc.add(px_bad, np.array([0.1, 0.2, 0.3, 99.0]), batch, 256)
    res = acc.result()
    assert res["num_samples"] == 3
    assert res["mpjpe"] < 0.05
    assert res["val_loss"] == pytest.approx(0.2)
