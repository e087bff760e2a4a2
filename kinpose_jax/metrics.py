"""Human3.6M evaluation metrics (docs/DESIGN.md#evaluation), batched and pure ``jax.numpy``.

* MPJPE: mean per-joint Euclidean error (mm) after subtracting the root joint.
* PA-MPJPE (Protocol #2): error after a similarity Procrustes fit (rotation, translation and
  *scale*) of the prediction onto the ground truth.
* Rigid-aligned error (``rigid_aligned_mpjpe``): the seed's "aligned" number — rotation and
  translation only, *no scale*. Not the same as PA-MPJPE; both are reported under their names.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from kinpose_jax import skeleton


def pixel_to_camera(joints_img: jax.Array, root_depth: jax.Array, focal: jax.Array, center: jax.Array) -> jax.Array:
    """Back-projects image joints to camera space (no distortion).

    Args:
      joints_img: [..., J, 3] (u px, v px, depth relative to the root, mm).
      root_depth: [...] ground-truth root (pelvis) depth, mm.
      focal: [..., 2] (fx, fy) px. center: [..., 2] (cx, cy) px.
    Returns:
      [..., J, 3] camera coordinates, mm.
    """
    z = joints_img[..., 2] + root_depth[..., None]
    x = (joints_img[..., 0] - center[..., None, 0]) * z / focal[..., None, 0]
    y = (joints_img[..., 1] - center[..., None, 1]) * z / focal[..., None, 1]
    return jnp.stack([x, y, z], axis=-1)


def camera_to_pixel(joints_cam: jax.Array, focal: jax.Array, center: jax.Array) -> jax.Array:
    """[..., J, 3] camera mm -> [..., J, 2] pixels: ``u = X/Z fx + cx``, ``v = Y/Z fy + cy``."""
    uv = joints_cam[..., :2] / joints_cam[..., 2:3]
    return uv * focal[..., None, :] + center[..., None, :]


def root_relative(joints: jax.Array, root: int = skeleton.H36M_ROOT) -> jax.Array:
    """[..., J, 3] minus the root joint."""
    return joints - joints[..., root : root + 1, :]


def per_joint_error(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """Euclidean distance per joint, [..., J, 3] x2 -> [..., J]."""
    return jnp.sqrt(jnp.sum(jnp.square(pred - gt), axis=-1))


def mpjpe(pred: jax.Array, gt: jax.Array, root: int | None = skeleton.H36M_ROOT) -> jax.Array:
    """Mean per-joint position error per sample: [..., J, 3] x2 -> [...] (mm).
    Both are made root-relative first unless ``root`` is None."""
    if root is not None:
        pred, gt = root_relative(pred, root), root_relative(gt, root)
    return jnp.mean(per_joint_error(pred, gt), axis=-1)


def procrustes_align(pred: jax.Array, gt: jax.Array, with_scale: bool = True, eps: float = 1e-12) -> jax.Array:
    """Aligns ``pred`` onto ``gt`` by the least-squares similarity (or rigid) transform.

    Solves ``min_{s,R,t} sum_j |s R pred_j + t - gt_j|^2`` with ``R`` a proper rotation
    (reflections excluded) via the SVD of the cross-covariance (Umeyama).

    Degenerate inputs: when either point set has collapsed to a single point (its centred sum of
    squares is at most ``eps`` times the other's, or both are zero), the cross-covariance is zero
    and any rotation is optimal; the result is then ``gt``'s centroid for every joint (``s = 0``)
    with scale, or ``R = I`` without. Values and gradients stay finite (the SVD is evaluated on
    a harmless stand-in matrix and its result is not used).
    Args:
      pred, gt: [..., J, 3].  with_scale: fit ``s`` (Protocol #2) or keep ``s = 1`` (rigid).
      eps: relative threshold for the collapse test above.
    Returns:
      [..., J, 3] aligned prediction.
    """
    pred, gt = jnp.asarray(pred, jnp.float32), jnp.asarray(gt, jnp.float32)
    # Centre relative to the first joint first: identical points then give exact zeros.
    p_rel = pred - pred[..., :1, :]
    g_rel = gt - gt[..., :1, :]
    p0 = p_rel - jnp.mean(p_rel, axis=-2, keepdims=True)
    g0 = g_rel - jnp.mean(g_rel, axis=-2, keepdims=True)
    mu_g = gt[..., :1, :] + jnp.mean(g_rel, axis=-2, keepdims=True)  # centroid of gt
    var_p = jnp.sum(jnp.square(p0), axis=(-2, -1))
    var_g = jnp.sum(jnp.square(g0), axis=(-2, -1))
    collapsed = jnp.minimum(var_p, var_g) <= eps * jnp.maximum(var_p, var_g)
    cov = jnp.einsum("...ji,...jk->...ik", g0, p0)  # [..., 3, 3] = G^T P
    stand_in = jnp.diag(jnp.asarray([3.0, 2.0, 1.0], cov.dtype))  # distinct singular values
    cov = jnp.where(collapsed[..., None, None], stand_in, cov)
    u, sing, vt = jnp.linalg.svd(cov)
    d = jnp.sign(jnp.linalg.det(u @ vt))
    fix = jnp.ones_like(sing).at[..., -1].set(d)
    rot = u @ (fix[..., :, None] * vt)  # R maps centred pred onto centred gt
    if with_scale:
        safe_var = jnp.where(collapsed, 1.0, var_p)
        scale = jnp.where(collapsed, 0.0, jnp.sum(sing * fix, axis=-1) / safe_var)
    else:
        rot = jnp.where(collapsed[..., None, None], jnp.eye(3, dtype=rot.dtype), rot)
        scale = jnp.ones(pred.shape[:-2], sing.dtype)
    aligned = scale[..., None, None] * jnp.einsum("...ik,...jk->...ji", rot, p0)
    return aligned + mu_g


def pa_mpjpe(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """Protocol #2: MPJPE after similarity Procrustes alignment (with scale); [...] mm."""
    return jnp.mean(per_joint_error(procrustes_align(pred, gt, with_scale=True), gt), axis=-1)


def rigid_aligned_mpjpe(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """The seed's "aligned" error: rigid Procrustes (rotation + translation, no scale); [...] mm."""
    return jnp.mean(per_joint_error(procrustes_align(pred, gt, with_scale=False), gt), axis=-1)


def bone_error(pred: jax.Array, gt: jax.Array, bones: Sequence[tuple[int, int]] = skeleton.H36M_BONES) -> jax.Array:
    """Mean Euclidean error of bone vectors ``joint[child] - joint[parent]``; [...] mm."""
    parent = jnp.asarray([p for p, _ in bones])
    child = jnp.asarray([c for _, c in bones])
    vp = pred[..., child, :] - pred[..., parent, :]
    vg = gt[..., child, :] - gt[..., parent, :]
    return jnp.mean(per_joint_error(vp, vg), axis=-1)


def h36m_error_names(groups: Mapping[str, Sequence[int]] = skeleton.H36M_EVAL_GROUPS) -> tuple[str, ...]:
    """The keys of :func:`h36m_errors` (same ``groups``), in its order."""
    return (*groups, "x", "y", "z", "mpjpe", "pa_mpjpe", "rigid_aligned", "bone")


def h36m_errors(
    pred_cam: jax.Array,
    gt_cam: jax.Array,
    groups: Mapping[str, Sequence[int]] = skeleton.H36M_EVAL_GROUPS,
    eval_joints: Sequence[int] = tuple(range(17)),
    root: int = skeleton.H36M_ROOT,
) -> dict[str, jax.Array]:
    """The seed's evaluation table, per sample (average over valid samples to report).

    Args:
      pred_cam, gt_cam: [B, 18, 3] camera-space joints, mm (absolute or root-relative).
    Returns:
      {name: [B]} mm: one entry per joint group (root-relative per-joint error averaged over
      the group), ``x``/``y``/``z`` (mean absolute per-axis error over ``eval_joints``),
      ``mpjpe`` (= ``17j``), ``pa_mpjpe`` (similarity-aligned), ``rigid_aligned`` (the seed's
      no-scale alignment) and ``bone`` (bone-vector error), all on ``eval_joints``.
    """
    pred = root_relative(pred_cam, root)
    gt = root_relative(gt_cam, root)
    err = per_joint_error(pred, gt)
    out = {name: jnp.mean(err[..., jnp.asarray(idx)], axis=-1) for name, idx in groups.items()}
    ev = jnp.asarray(eval_joints)
    axis_err = jnp.mean(jnp.abs(pred[..., ev, :] - gt[..., ev, :]), axis=-2)
    out.update(x=axis_err[..., 0], y=axis_err[..., 1], z=axis_err[..., 2])
    out["mpjpe"] = jnp.mean(err[..., ev], axis=-1)
    out["pa_mpjpe"] = pa_mpjpe(pred[..., ev, :], gt[..., ev, :])
    out["rigid_aligned"] = rigid_aligned_mpjpe(pred[..., ev, :], gt[..., ev, :])
    eval_set = set(int(j) for j in eval_joints)
    bones = tuple(b for b in skeleton.H36M_BONES if b[0] in eval_set and b[1] in eval_set)
    out["bone"] = bone_error(pred, gt, bones)
    return out
