"""kinpose_jax.geometry against independent computations: OpenCV's projection and affine
helpers, formulas written out here, and round trips image -> patch -> normalized -> patch -> image."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinpose_jax import geometry
from kinpose_jax.synthetic import render


def random_camera(rng):
    """A rotation [3, 3] (world -> camera), a camera position [3] mm, focal [2] and centre [2] px."""
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation *= np.sign(np.linalg.det(rotation))
    return rotation, rng.normal(size=3) * 500, rng.uniform(900, 1200, 2), rng.uniform(400, 600, 2)


def points_in_front(rng, rotation, position, n=20):
    """[n, 3] world points 2..6 m in front of the camera."""
    cam = np.concatenate([rng.normal(size=(n, 2)) * 600, rng.uniform(2000, 6000, (n, 1))], 1)
    return cam @ rotation + position


def test_projection_equals_opencv_from_world_coordinates():
    rng = np.random.default_rng(0)
    for _ in range(3):
        rotation, position, focal, center = random_camera(rng)
        world = points_in_front(rng, rotation, position)
        camera = render.Camera(rotation, position, focal, center, (1000, 1000))
        want = camera.project(world)  # cv2.projectPoints with rvec / tvec, no distortion
        got = geometry.project(geometry.world_to_camera(world, rotation, position), focal, center)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-8)
        # and OpenCV from camera coordinates (identity extrinsics)
        cam = geometry.world_to_camera(world, rotation, position)
        k = np.array([[focal[0], 0, center[0]], [0, focal[1], center[1]], [0, 0, 1.0]])
        direct, _ = cv2.projectPoints(cam.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), k, None)
        np.testing.assert_allclose(got, direct.reshape(-1, 2), atol=1e-8)


def test_world_to_camera_by_hand():
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about z
    out = geometry.world_to_camera(np.array([[1.0, 2.0, 3.0]]), rotation, np.array([1.0, 0.0, -1.0]))
    np.testing.assert_allclose(out, [[-2.0, 0.0, 4.0]])


def test_back_projection_inverts_projection_and_by_hand():
    rng = np.random.default_rng(7)
    cam = rng.normal(size=(3, 18, 3)) * 400 + [0, 0, 5000]
    focal = np.array([[1145.0, 1143.8]] * 3)
    center = np.array([[512.5, 515.4]] * 3)
    uv = geometry.project(cam, focal[:, None], center[:, None])
    np.testing.assert_allclose(geometry.back_project(uv, cam[..., 2], focal[:, None], center[:, None]), cam,
                               rtol=1e-12, atol=1e-9)
    root_depth = cam[:, 0, 2]
    img = np.concatenate([uv, cam[..., 2:] - root_depth[:, None, None]], -1)
    np.testing.assert_allclose(geometry.image_to_camera(img, root_depth, focal, center), cam, rtol=1e-12, atol=1e-9)
    # u = cx + fx at depth Z gives X = Z
    one = np.array([[[512.5 + 1145.0, 515.4, 0.0]]])
    np.testing.assert_allclose(geometry.image_to_camera(one, np.array([4000.0]), focal[:1], center[:1])[0, 0],
                               [4000.0, 0.0, 4000.0], rtol=1e-12)
    # float32 on the device, jitted, equals the float64 host result
    dev = jax.jit(lambda *a: geometry.image_to_camera(*a, xp=jnp))(*(np.float32(x) for x in (img, root_depth, focal,
                                                                                              center)))
    assert dev.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dev), cam, rtol=1e-5, atol=0.05)


def test_projection_is_differentiable_in_jax():
    cam = jnp.array([[100.0, -50.0, 4000.0]])
    jac = jax.jacobian(lambda p: geometry.project(p, jnp.array([1000.0, 1100.0]), jnp.array([500.0, 400.0])))(cam)
    # du/dX = fx / Z, du/dZ = -fx X / Z^2
    np.testing.assert_allclose(jac[0, 0, 0], [1000.0 / 4000, 0.0, -1000.0 * 100 / 4000 ** 2], rtol=1e-6)
    np.testing.assert_allclose(jac[0, 1, 0], [0.0, 1100.0 / 4000, 1100.0 * 50 / 4000 ** 2], rtol=1e-6)


def test_normalized_patch_units_by_hand_and_round_trip():
    norm = np.array([[0.0, -0.25, 0.125], [-0.5, 0.5, -1.0]])
    px = geometry.normalized_to_patch(norm, (256, 192))
    np.testing.assert_allclose(px, [[128.0, 48.0, 32.0], [0.0, 192.0, -256.0]])
    np.testing.assert_array_equal(geometry.patch_to_normalized(px, (256, 192)), norm)
    assert px.dtype == np.float64  # numpy float64 in, float64 out
    dev = geometry.normalized_to_patch(jnp.asarray(norm, jnp.float32), (256, 192))
    assert isinstance(dev, jax.Array) and dev.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dev), px)


def test_patch_affine_equals_opencv_from_three_point_pairs():
    rng = np.random.default_rng(3)
    for _ in range(5):
        center, box = rng.uniform(100, 900, 2), rng.uniform(100, 500, 2)
        patch, scale, rotation = (int(rng.integers(32, 257)), int(rng.integers(32, 257))), rng.uniform(0.75, 1.25), \
            rng.uniform(-60, 60)
        w, h = box * scale
        a = np.deg2rad(rotation)
        right = np.array([np.cos(a), np.sin(a)]) * w / 2  # the box's rotated half-axes in the image
        down = np.array([-np.sin(a), np.cos(a)]) * h / 2
        src = np.float32([center, center + right, center + down])
        dst = np.float32([[patch[0] / 2, patch[1] / 2], [patch[0], patch[1] / 2], [patch[0] / 2, patch[1]]])
        want = cv2.getAffineTransform(src, dst)
        affine = geometry.patch_affine(center, box, patch, scale, rotation)
        np.testing.assert_allclose(affine, want, rtol=1e-4, atol=1e-3)
        inverse = geometry.patch_affine(center, box, patch, scale, rotation, inverse=True)
        np.testing.assert_allclose(inverse, cv2.invertAffineTransform(affine), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scale, rotation", [(1.0, 0.0), (1.2, -25.0), (0.8, 170.0)])
def test_image_patch_normalized_round_trip(scale, rotation):
    """image -> patch (affine) -> normalized -> patch -> image (closed form) gives the image joints back."""
    rng = np.random.default_rng(5)
    center, box, patch = np.array([480.0, 520.0]), np.array([310.0, 260.0]), (64, 48)
    joints_img = np.concatenate([center + rng.normal(size=(18, 2)) * 100, rng.normal(size=(18, 1)) * 300], 1)
    affine = geometry.patch_affine(center, box, patch, scale, rotation)
    norm = geometry.patch_to_normalized(geometry.image_to_patch(joints_img, affine, scale, patch[0], 2000.0), patch)
    np.testing.assert_allclose(norm[:, 2], joints_img[:, 2] / (2000.0 * scale), rtol=1e-12)
    back = geometry.patch_to_image(geometry.normalized_to_patch(norm, patch)[None], center[None], box[None], patch,
                                   2000.0, scale, rotation)[0]
    np.testing.assert_allclose(back, joints_img, rtol=1e-12, atol=1e-9)


def test_patch_to_image_float32_equals_the_former_two_step_decoding():
    """The device decoding in one step gives what evaluation computed before, patch px ->
    normalized (float32) -> image (closed form), written out here, up to float32 rounding."""
    rng = np.random.default_rng(9)
    px = (rng.uniform(-0.1, 1.1, (6, 18, 3)) * 32).astype(np.float32)
    center, box = rng.uniform(200, 800, (6, 2)).astype(np.float32), rng.uniform(200, 500, (6, 2)).astype(np.float32)
    norm = px / np.float32([32, 32, 32]) - np.float32([0.5, 0.5, 0.0])
    former = np.stack([center[:, None, 0] + norm[..., 0] * box[:, None, 0], center[:, None, 1] + norm[..., 1] * box[:, None, 1],
                       norm[..., 2] * np.float32(2000.0)], -1)
    now = jax.jit(lambda *a: geometry.patch_to_image(*a, (32, 32), 2000.0, xp=jnp))(px, center, box)
    assert now.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(now), former, rtol=1e-6, atol=1e-4)


def test_flip_horizontal_follows_opencvs_mirrored_image_and_swaps_pairs():
    img = np.zeros((40, 57), np.uint8)
    pts = np.array([[3.0, 7.0], [56.0, 0.0], [20.0, 39.0]])
    img[pts[:, 1].astype(int), pts[:, 0].astype(int)] = [50, 100, 150]
    mirrored = cv2.flip(img, 1)
    got = geometry.flip_horizontal(pts, 57)
    for (u, v), value in zip(got, (50, 100, 150)):
        assert mirrored[int(v), int(u)] == value
    joints = np.arange(12.0).reshape(4, 3)
    flipped = geometry.flip_horizontal(joints, 10, ((0, 3),))
    np.testing.assert_array_equal(flipped, [[10 - 9 - 1, 10, 11], [10 - 3 - 1, 4, 5], [10 - 6 - 1, 7, 8],
                                            [10 - 0 - 1, 1, 2]])
    dev = jax.jit(lambda j: geometry.flip_horizontal(j, 10, ((0, 3),), xp=jnp))(jnp.asarray(joints, jnp.float32))
    np.testing.assert_array_equal(np.asarray(dev), flipped)
