"""Camera and patch geometry shared by the data path, training, evaluation and prediction
(docs/DESIGN.md#camera-model, docs/DESIGN.md#patch-affine, docs/DESIGN.md#normalized-units,
docs/DESIGN.md#decoding), and the pixel statistics of the network input.

Coordinate systems: world / camera space in mm; image and patch coordinates in px (u right, v
down); image joints carry depth relative to the root (pelvis) in mm, patch joints depth in
patch-width units; normalized units (network targets and outputs) ``x = u'/pw - 0.5``,
``y = v'/ph - 0.5``, ``z = z'/pw`` for patch px (u', v', z') of a (pw, ph) patch.

Functions are pure and broadcast over leading axes. Those without an ``xp`` argument use plain
arithmetic and take numpy or jax arrays alike; those with one run on ``jax.numpy`` when given
it (jit-, vmap- and grad-able); :func:`patch_affine` and :func:`image_to_patch` are numpy
(float64) for the host-side data path. The module imports numpy only (the data path runs
without jax). :meth:`kinpose_jax.synthetic.render.Camera.project`
projects with ``cv2.projectPoints`` from world coordinates instead, an independent
implementation that tests check this module against.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: ImageNet RGB mean / std in 0..255 units (docs/DESIGN.md#pixel-normalization).
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], np.float32)


# ------------------------------------------------------------------------------------ camera
def world_to_camera(points_world, rotation, position):
    """[..., 3] world mm -> camera mm, ``X_cam = R (X_world - T)``; rotation [3, 3] world -> camera,
    position T [3] mm (the camera centre in the world)."""
    return (points_world - position) @ rotation.T


def project(points_cam, focal, center):
    """Pinhole projection without distortion: [..., 3] camera mm -> [..., 2] px,
    ``u = X / Z * fx + cx``, ``v = Y / Z * fy + cy``; ``focal`` and ``center`` broadcast against [..., 2]."""
    return points_cam[..., :2] / points_cam[..., 2:3] * focal + center


def back_project(uv, depth, focal, center, xp=np):
    """Inverse of :func:`project` at a known depth: [..., 2] px and depth Z [...] mm -> [..., 3]
    camera mm, ``X = (u - cx) Z / fx``, ``Y = (v - cy) Z / fy``; ``focal`` and ``center``
    broadcast against [..., 2]. ``xp``: ``numpy`` or ``jax.numpy`` (jit-able)."""
    return xp.concatenate([(uv - center) * depth[..., None] / focal, depth[..., None]], axis=-1)


def image_to_camera(joints_img, root_depth, focal, center, xp=np):
    """Image joints [..., J, 3] (u px, v px, depth relative to the root mm) with the root's depth
    [...] mm -> [..., J, 3] camera mm (:func:`back_project`); focal, center: [..., 2] px."""
    depth = joints_img[..., 2] + root_depth[..., None]
    return back_project(joints_img[..., :2], depth, focal[..., None, :], center[..., None, :], xp)


# ------------------------------------------------------------------------- normalized <-> patch
def _patch_scale(patch_size: Sequence[int]) -> np.ndarray:
    pw, ph = patch_size
    return np.array([pw, ph, pw], np.float32)


_NORMALIZED_OFFSET = np.array([0.5, 0.5, 0.0], np.float32)


def normalized_to_patch(joints, patch_size: Sequence[int]):
    """[..., 3] normalized -> patch px ``((x + 0.5) pw, (y + 0.5) ph)`` and depth ``z pw`` in
    patch-width units; ``patch_size`` = (pw, ph)."""
    return (joints + _NORMALIZED_OFFSET) * _patch_scale(patch_size)


def patch_to_normalized(joints_patch, patch_size: Sequence[int]):
    """Inverse of :func:`normalized_to_patch`: [..., 3] patch px -> normalized ``(u'/pw - 0.5,
    v'/ph - 0.5, z'/pw)``."""
    return joints_patch / _patch_scale(patch_size) - _NORMALIZED_OFFSET


# ----------------------------------------------------------------------------- horizontal flip
def flip_permutation(num_joints: int, flip_pairs: Sequence[tuple[int, int]]) -> np.ndarray:
    """[J] joint permutation that swaps each left/right pair."""
    perm = np.arange(num_joints)
    for a, b in flip_pairs:
        perm[a], perm[b] = b, a
    return perm


def flip_horizontal(points, width, flip_pairs: Sequence[tuple[int, int]] | None = None, xp=np):
    """Horizontal mirror of pixel coordinates in an image (or patch) ``width`` px wide:
    ``u <- width - u - 1`` (pixel centres onto pixel centres) in column 0 of [..., >=2], the other
    columns kept; with ``flip_pairs`` the points are joints [..., J, >=2] and each left/right pair
    is swapped. ``xp``: ``numpy`` or ``jax.numpy`` (jit-able)."""
    out = xp.concatenate([width - points[..., :1] - 1.0, points[..., 1:]], axis=-1)
    if flip_pairs is None:
        return out
    return out[..., flip_permutation(out.shape[-2], flip_pairs), :]


# ----------------------------------------------------------------------------- image <-> patch
def patch_affine(center: Sequence[float], box_size: Sequence[float], patch_size: Sequence[int],
                 scale: float = 1.0, rotation: float = 0.0, inverse: bool = False) -> np.ndarray:
    """[2, 3] affine (float64) taking image px to patch px (docs/DESIGN.md#patch-affine), or back with ``inverse``.

    The box (centre ``center``, size ``box_size * scale``, rotated ``rotation`` degrees) maps to
    the whole ``patch_size`` = (pw, ph) patch: centre -> patch centre, the box's rotated "down"
    half-vector -> (0, ph/2), its "right" half-vector -> (pw/2, 0).
    """
    pw, ph = patch_size
    w, h = box_size[0] * scale, box_size[1] * scale
    a = np.deg2rad(rotation)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    # columns: right and down half-vectors of the box in the image, and in the patch
    src = rot @ np.diag([w / 2.0, h / 2.0])
    dst = np.diag([pw / 2.0, ph / 2.0])
    c_src, c_dst = np.asarray(center, np.float64), np.array([pw / 2.0, ph / 2.0])
    lin = dst @ np.linalg.inv(src) if not inverse else src @ np.linalg.inv(dst)
    c_from, c_to = (c_src, c_dst) if not inverse else (c_dst, c_src)
    return np.concatenate([lin, (c_to - lin @ c_from)[:, None]], axis=1)


def apply_affine(points, affine):
    """[..., 2] points through a [2, 3] affine."""
    return points @ affine[:, :2].T + affine[:, 2]


def image_to_patch(joints_img: np.ndarray, affine: np.ndarray, scale: float, patch_width: int,
                   box_mm: float) -> np.ndarray:
    """Image joints [J, 3] (u px, v px, depth relative to the root mm) -> patch px through
    ``affine`` (:func:`patch_affine`), depth in patch-width units ``z / (box_mm * scale) * pw``
    (docs/DESIGN.md#normalized-units). float64."""
    joints_img = np.asarray(joints_img, np.float64)
    out = np.empty_like(joints_img)
    out[:, :2] = apply_affine(joints_img[:, :2], affine)
    out[:, 2] = joints_img[:, 2] / (box_mm * scale) * patch_width
    return out


def patch_to_image(joints_patch, center, box_size, patch_size: Sequence[int], box_mm: float, scale=1.0,
                   rotation=0.0, xp=np):
    """Patch joints straight to the image (docs/DESIGN.md#decoding): the inverse of :func:`image_to_patch`
    in closed form, ``center + R(rotation) (x w s, y h s)`` and depth ``z box_mm s`` for the
    normalized (x, y, z) (:func:`patch_to_normalized`), box (w, h) and scale s.

    Args:
      joints_patch: [B, J, 3] patch px (depth in patch-width units). center: [B, 2] box centre px.
        box_size: [B, 2] box width, height px. patch_size: (pw, ph). box_mm: the box's extent in
        mm. scale / rotation (degrees): [B] or scalars — the augmentation used for the patch
        (evaluation: 1 and 0).
      xp: ``numpy`` (float64, the default) or ``jax.numpy`` (float32; jit-able, on the device).
    Returns:
      [B, J, 3]: image u px, v px, depth relative to the root in mm.
    """
    dtype = np.float64 if xp is np else np.float32
    joints = patch_to_normalized(xp.asarray(joints_patch, dtype), patch_size)
    b = joints.shape[0]
    center = xp.asarray(center, dtype).reshape(b, 1, 2)
    box_size = xp.asarray(box_size, dtype).reshape(b, 1, 2)
    scale = xp.broadcast_to(xp.asarray(scale, dtype), (b,))[:, None]
    angle = xp.deg2rad(xp.broadcast_to(xp.asarray(rotation, dtype), (b,)))[:, None]
    dx = joints[..., 0] * box_size[..., 0] * scale
    dy = joints[..., 1] * box_size[..., 1] * scale
    cos, sin = xp.cos(angle), xp.sin(angle)
    return xp.stack([center[..., 0] + cos * dx - sin * dy, center[..., 1] + sin * dx + cos * dy,
                     joints[..., 2] * box_mm * scale], axis=-1)
