"""Human3.6M evaluation metrics (docs/DESIGN.md#evaluation), batched and pure ``jax.numpy`` (vmappable,
per sample).

Every function is jitted, its Python-level parameters (joint indices, thresholds) static.

Names as papers use them; all errors in mm on the 17 evaluation joints (0-16, thorax excluded):

* **Protocol #1** (``mpjpe``): mean per-joint Euclidean error after subtracting the root joint.
* **Protocol #2** (``pa_mpjpe``): per frame, a similarity Procrustes fit (rotation, translation,
  *scale*) of the 17 root-relative predicted joints onto the truth, then the mean error.
* The original's aligned error (``seed_aligned``, its ``hm36_17j_align``): a rigid fit (rotation and
  translation, *no scale*) on all 18 joints, then the aligned prediction's root and the truth's
  root are subtracted and the 17 evaluation joints averaged. Not Protocol #2.
* ``bone``: the original's bone error — per joint the error of its ``joint - parent`` vector (the
  original's parent ids, docs/DESIGN.md#bones); the root, its own parent, keeps its absolute position error.
* PCK (percent of joints with root-relative error *strictly below* a threshold): the original's
  thresholds 5 and 105 mm (``range(5, 205, 100)`` in its ``evaluate``), and the standard 3DPCK
  at 150 mm with its AUC, the mean PCK over thresholds 0, 5, ..., 150 mm (Mehta et al. 2017,
  ``mpii_compute_3d_pck``), here on the 17 Human3.6M joints.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp

from kinpose_jax import skeleton
from kinpose_jax.jitting import jit_static


@jit_static("root")
def root_relative(joints: jax.Array, root: int = skeleton.H36M_ROOT) -> jax.Array:
    """[..., J, 3] minus the root joint."""
    return joints - joints[..., root : root + 1, :]


@jax.jit
def per_joint_error(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """Euclidean distance per joint, [..., J, 3] x2 -> [..., J]. Its gradient at a zero distance
    (e.g. the root after root subtraction) is 0, not NaN."""
    sq = jnp.sum(jnp.square(pred - gt), axis=-1)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


@jit_static("root")
def mpjpe(pred: jax.Array, gt: jax.Array, root: int | None = skeleton.H36M_ROOT) -> jax.Array:
    """Mean per-joint position error per sample: [..., J, 3] x2 -> [...] (mm).
    Both are made root-relative first unless ``root`` is None."""
    if root is not None:
        pred, gt = root_relative(pred, root), root_relative(gt, root)
    return jnp.mean(per_joint_error(pred, gt), axis=-1)


@jit_static("with_scale")
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
      pred, gt: [..., J, 3].  with_scale: fit ``s`` (Protocol #2) or keep ``s = 1`` (rigid); static.
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


@jax.jit
def pa_mpjpe(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """Protocol #2: MPJPE after similarity Procrustes alignment (with scale); [...] mm."""
    return jnp.mean(per_joint_error(procrustes_align(pred, gt, with_scale=True), gt), axis=-1)


#: The original's PCK thresholds, mm (``range(5, 205, 100)`` in its ``evaluate``; computed, never printed).
SEED_PCK_THRESHOLDS_MM: tuple[float, ...] = (5.0, 105.0)
#: Standard 3DPCK threshold and the AUC's thresholds 0, 5, ..., 150 mm (Mehta et al. 2017).
PCK3D_THRESHOLD_MM = 150.0
AUC_THRESHOLDS_MM: tuple[float, ...] = tuple(float(t) for t in range(0, 155, 5))
EVAL_JOINTS: tuple[int, ...] = tuple(range(17))


@jit_static("eval_joints", "root")
def seed_aligned_mpjpe(pred: jax.Array, gt: jax.Array, eval_joints: Sequence[int] = EVAL_JOINTS,
                       root: int = skeleton.H36M_ROOT) -> jax.Array:
    """The original's aligned error (``hm36_17j_align``); [..., J, 3] x2 -> [...] mm.

    A rigid Procrustes fit (rotation + translation, no scale) of ``pred`` onto ``gt`` on *all*
    J joints; then the aligned prediction's root and ``gt``'s root are subtracted and the error
    averaged over ``eval_joints``. Invariant to translating either input."""
    aligned = procrustes_align(pred, gt, with_scale=False)
    err = per_joint_error(root_relative(aligned, root), root_relative(jnp.asarray(gt, aligned.dtype), root))
    return jnp.mean(err[..., jnp.asarray(eval_joints)], axis=-1)


@jit_static("parent_ids", "joints")
def bone_error(pred: jax.Array, gt: jax.Array, parent_ids: Sequence[int] = skeleton.H36M_PARENT_IDS,
               joints: Sequence[int] = EVAL_JOINTS) -> jax.Array:
    """The original's bone error; [..., J, 3] x2 (camera mm, *absolute*) -> [...] mm.

    Per joint ``j`` the Euclidean error of ``joint[j] - joint[parent_ids[j]]``; a joint that is its
    own parent (the root) keeps ``joint[j]`` itself, i.e. its absolute position error (0 for
    root-relative inputs). Averaged over ``joints``."""
    parent = jnp.asarray(parent_ids)
    is_root = (parent == jnp.arange(len(parent_ids)))[:, None]
    vp = pred - jnp.where(is_root, 0.0, pred[..., parent, :])
    vg = gt - jnp.where(is_root, 0.0, gt[..., parent, :])
    return jnp.mean(per_joint_error(vp, vg)[..., jnp.asarray(joints)], axis=-1)


@jax.jit
def pck(per_joint_err: jax.Array, threshold_mm: float | jax.Array) -> jax.Array:
    """Percent of joints with error strictly below ``threshold_mm``: [..., J] -> [...] (0-100)."""
    return 100.0 * jnp.mean((per_joint_err < threshold_mm).astype(jnp.float32), axis=-1)


@jit_static("thresholds_mm")
def pck_auc(per_joint_err: jax.Array, thresholds_mm: Sequence[float] = AUC_THRESHOLDS_MM) -> jax.Array:
    """Area under the PCK curve: the mean of :func:`pck` over ``thresholds_mm``; [..., J] -> [...] (0-100)."""
    t = jnp.asarray(thresholds_mm, jnp.float32)
    return jnp.mean(pck(per_joint_err[..., None, :], t[:, None]), axis=-1)


def _pck_name(threshold_mm: float) -> str:
    return f"pck_{threshold_mm:g}mm"


def h36m_error_names(groups: Mapping[str, Sequence[int]] = skeleton.H36M_EVAL_GROUPS) -> tuple[str, ...]:
    """The keys of :func:`h36m_errors` (same ``groups``), in its order."""
    seed_pck = tuple(f"seed_{_pck_name(t)}" for t in SEED_PCK_THRESHOLDS_MM)
    return (*groups, "x", "y", "z", "mpjpe", "pa_mpjpe", "seed_aligned", "bone", *seed_pck,
            _pck_name(PCK3D_THRESHOLD_MM), "auc")


def h36m_errors(
    pred_cam: jax.Array,
    gt_cam: jax.Array,
    groups: Mapping[str, Sequence[int]] = skeleton.H36M_EVAL_GROUPS,
    eval_joints: Sequence[int] = EVAL_JOINTS,
    root: int = skeleton.H36M_ROOT,
) -> dict[str, jax.Array]:
    """The evaluation table, per sample (average over valid samples to report).

    Args:
      pred_cam, gt_cam: [B, 18, 3] camera-space joints, mm, absolute (``bone``'s root term is
        the absolute root error; every other entry is translation invariant).
    Returns:
      {name: [B]}: one entry per joint group (root-relative per-joint error averaged over the
      group, mm; the original's table), ``x``/``y``/``z`` (mean absolute per-axis error over
      ``eval_joints``, mm), ``mpjpe`` (Protocol #1, = ``17j``), ``pa_mpjpe`` (Protocol #2),
      ``seed_aligned`` (the original's rigid, no-scale aligned error), ``bone`` (the original's bone
      error), ``seed_pck_5mm`` / ``seed_pck_105mm`` (the original's PCK thresholds), ``pck_150mm``
      (3DPCK) and ``auc`` (0-150 mm); PCK and AUC in percent, over ``eval_joints``,
      root-relative. See the module docstring for the definitions.
    Jitted; ``groups``, ``eval_joints`` and ``root`` are static.
    """
    group_items = tuple((name, tuple(idx)) for name, idx in groups.items())
    table = _h36m_errors(pred_cam, gt_cam, group_items, eval_joints, root)
    return {name: table[name] for name in h36m_error_names(groups)}  # jit returns the keys sorted


@jit_static("group_items", "eval_joints", "root")
def _h36m_errors(pred_cam, gt_cam, group_items, eval_joints, root) -> dict[str, jax.Array]:
    """:func:`h36m_errors` with ``groups`` as a tuple of (name, joint indices) items."""
    pred = root_relative(pred_cam, root)
    gt = root_relative(gt_cam, root)
    err = per_joint_error(pred, gt)
    out = {name: jnp.mean(err[..., jnp.asarray(idx)], axis=-1) for name, idx in group_items}
    ev = jnp.asarray(eval_joints)
    axis_err = jnp.mean(jnp.abs(pred[..., ev, :] - gt[..., ev, :]), axis=-2)
    out.update(x=axis_err[..., 0], y=axis_err[..., 1], z=axis_err[..., 2])
    err_ev = err[..., ev]
    out["mpjpe"] = jnp.mean(err_ev, axis=-1)
    out["pa_mpjpe"] = pa_mpjpe(pred[..., ev, :], gt[..., ev, :])
    out["seed_aligned"] = seed_aligned_mpjpe(pred_cam, gt_cam, eval_joints, root)
    out["bone"] = bone_error(pred_cam, gt_cam, skeleton.H36M_PARENT_IDS, eval_joints)
    for t in SEED_PCK_THRESHOLDS_MM:
        out[f"seed_{_pck_name(t)}"] = pck(err_ev, t)
    out[_pck_name(PCK3D_THRESHOLD_MM)] = pck(err_ev, PCK3D_THRESHOLD_MM)
    out["auc"] = pck_auc(err_ev)
    return out
