"""Forward kinematics: a pure function of a :class:`KinematicTree` and joint angles.

Frames are composed level by level of tree depth: all frames of one depth are computed in one
batched gather + matmul, so the traced program has one step per depth level (a Python loop over
*depth* at trace time) and no loop over joints or over the batch.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kinpose_jax.kinematics.rotations import axis_angle_matrices
from kinpose_jax.kinematics.tree import KinematicTree


class _Schedule(NamedTuple):
    frames: np.ndarray  # [F] entry index of every frame, in level order
    level_slices: tuple[tuple[int, int], ...]  # [start, stop) into ``frames`` per depth level
    parent_in_prev: tuple[np.ndarray, ...]  # per level > 0: parent's position inside the previous level
    dof_axes: np.ndarray  # [P, 3] unit axis of every angle
    dof_groups: tuple[np.ndarray, ...]  # per k = 1..3: [n_k, k] angle indices of the frames with k dofs
    local_order: np.ndarray  # [F] level-ordered frame -> row of concat(no-dof frames, group 1, 2, 3)
    entry_from_level: np.ndarray  # [E] position of every entry in concat(levels, derived)
    derived: np.ndarray  # [D] derived entry indices
    derived_weights: np.ndarray  # [D, F] weights over level-ordered frames


@functools.lru_cache(maxsize=256)
def _schedule(names, parents, dofs, derived) -> _Schedule:
    e = len(names)
    frames_all = [i for i in range(e) if not derived[i]]
    depth = {}
    for i in frames_all:
        d, q = 0, i
        while parents[q] >= 0:
            q, d = parents[q], d + 1
        depth[i] = d
    max_depth = max(depth.values())
    levels = [[i for i in frames_all if depth[i] == d] for d in range(max_depth + 1)]
    frames = np.asarray([i for lvl in levels for i in lvl], dtype=np.int32)
    slices, start = [], 0
    for lvl in levels:
        slices.append((start, start + len(lvl)))
        start += len(lvl)
    parent_in_prev = tuple(
        np.asarray([levels[d - 1].index(parents[i]) for i in levels[d]], dtype=np.int32) for d in range(1, len(levels))
    )
    dof_offset, offsets = 0, {}
    for i in range(e):
        offsets[i] = dof_offset
        dof_offset += len(dofs[i])
    dof_axes = np.asarray([a for i in range(e) for a in dofs[i]], dtype=np.float64).reshape(-1, 3)
    by_count = [[f for f, i in enumerate(frames) if len(dofs[i]) == k] for k in range(4)]
    dof_groups = tuple(
        np.asarray([[offsets[frames[f]] + s for s in range(k)] for f in by_count[k]], dtype=np.int32).reshape(-1, k)
        for k in range(1, 4)
    )
    grouped = [f for k in range(4) for f in by_count[k]]
    local_order = np.asarray([grouped.index(f) for f in range(len(frames))], dtype=np.int32)
    derived_idx = np.asarray([i for i in range(e) if derived[i]], dtype=np.int32)
    level_pos = {int(i): p for p, i in enumerate(frames)}
    weights = np.zeros((len(derived_idx), len(frames)))
    for r, i in enumerate(derived_idx):
        for src, w in derived[i]:
            weights[r, level_pos[src]] += w
    order = list(frames) + list(derived_idx)
    entry_from_level = np.asarray([order.index(i) for i in range(e)], dtype=np.int32)
    return _Schedule(frames, tuple(slices), parent_in_prev, dof_axes, dof_groups, local_order,
                     entry_from_level, derived_idx, weights)


def schedule(tree: KinematicTree) -> _Schedule:
    return _schedule(tree.names, tree.parents, tree.dofs, tree.derived)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FKResult:
    """Output of :func:`forward_kinematics`.

    joints: [..., J, 3] output joint positions (offset units, mm unless scaled), after
      ``tree.output_axes``.
    positions: [..., E, 3] every entry (hidden frames and derived joints too), model axes.
    rotations: [..., E, 3, 3] global rotation of every entry's frame, model axes (identity for
      derived joints). ``transforms`` packs both into 4x4 matrices.
    """

    joints: jax.Array
    positions: jax.Array
    rotations: jax.Array

    @property
    def transforms(self) -> jax.Array:
        """[..., E, 4, 4] global homogeneous transforms (model axes)."""
        top = jnp.concatenate([self.rotations, self.positions[..., None]], axis=-1)
        bottom = jnp.broadcast_to(jnp.asarray([0.0, 0.0, 0.0, 1.0], top.dtype), top.shape[:-2] + (1, 4))
        return jnp.concatenate([top, bottom], axis=-2)


def forward_kinematics(
    tree: KinematicTree,
    angles: jax.Array,
    translation: jax.Array | None = None,
    scale: jax.Array | float | None = None,
) -> FKResult:
    """Poses a kinematic tree.

    ``G_root = T(translation) @ R_root``; ``G_j = G_parent @ T(scale * offset_j) @ R_j``, where
    ``R_j`` is the ordered product of the rotations about frame ``j``'s dof axes.

    Args:
      tree: the skeleton. Its ``offsets`` may carry leading batch dims.
      angles: [..., tree.num_dofs] radians, ordered as ``tree.param_names``.
      translation: [..., 3] root position (same unit as offsets; not scaled), default 0.
      scale: [...] multiplies every bone offset, default 1.
    Returns:
      FKResult with ``joints`` [..., tree.num_joints, 3].
    """
    sched = schedule(tree)
    angles = jnp.asarray(angles)
    if angles.shape[-1] != tree.num_dofs:
        raise ValueError(f"angles must be [..., {tree.num_dofs}] (tree.num_dofs), got shape {angles.shape}")
    dtype = angles.dtype if jnp.issubdtype(angles.dtype, jnp.floating) else jnp.float32
    angles = angles.astype(dtype)
    offsets = jnp.asarray(tree.offsets, dtype)
    translation = jnp.zeros((3,), dtype) if translation is None else jnp.asarray(translation, dtype)
    if translation.shape[-1:] != (3,):
        raise ValueError(f"translation must be [..., 3], got shape {translation.shape}")
    scale = jnp.ones((), dtype) if scale is None else jnp.asarray(scale, dtype)
    batch = jnp.broadcast_shapes(angles.shape[:-1], offsets.shape[:-2], translation.shape[:-1], scale.shape)
    # Work on one flat batch axis N (XLA's CPU dot with several batch dims is fragile) and
    # restore the leading shape at the end.
    n = int(np.prod(batch))
    angles = jnp.broadcast_to(angles, batch + angles.shape[-1:]).reshape(n, -1)
    translation = jnp.broadcast_to(translation, batch + (3,)).reshape(n, 3)
    offsets = jnp.broadcast_to(offsets, batch + offsets.shape[-2:]).reshape((n,) + offsets.shape[-2:])
    offsets = offsets * jnp.broadcast_to(scale, batch).reshape(n, 1, 1)
    result = _forward_flat(tree, sched, angles, translation, offsets, dtype)
    return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), result)


def _forward_flat(tree, sched, angles, translation, offsets, dtype) -> FKResult:
    """FK on flat inputs: angles [N, P], translation [N, 3], offsets [N, E, 3] (scaled)."""
    batch = angles.shape[:1]
    # Local rotations: one matrix per angle, then the product over each frame's dofs, grouped by
    # dof count so frames without dofs cost nothing: [..., F, 3, 3] in level order.
    dof_rot = axis_angle_matrices(sched.dof_axes, angles)  # [..., P, 3, 3]
    num_static = len(sched.frames) - sum(len(g) for g in sched.dof_groups)
    parts = [jnp.broadcast_to(jnp.eye(3, dtype=dtype), angles.shape[:-1] + (num_static, 3, 3))]
    for group in sched.dof_groups:
        if len(group):
            m = jnp.take(dof_rot, group[:, 0], axis=-3)
            for k in range(1, group.shape[1]):
                m = m @ jnp.take(dof_rot, group[:, k], axis=-3)
            parts.append(m)
    local_rot = jnp.concatenate(parts, axis=-3)[..., sched.local_order, :, :]
    local_off = offsets[..., sched.frames, :]

    start, stop = sched.level_slices[0]
    rot_levels = [jnp.broadcast_to(local_rot[..., start:stop, :, :], batch + (stop - start, 3, 3))]
    pos_levels = [jnp.broadcast_to(translation[..., None, :], batch + (stop - start, 3))]
    for d in range(1, len(sched.level_slices)):
        start, stop = sched.level_slices[d]
        pidx = sched.parent_in_prev[d - 1]
        parent_rot = rot_levels[-1][..., pidx, :, :]
        parent_pos = pos_levels[-1][..., pidx, :]
        bone = local_off[..., start:stop, :]
        pos_levels.append(parent_pos + jnp.einsum("...ij,...j->...i", parent_rot, bone))
        rot_levels.append(parent_rot @ local_rot[..., start:stop, :, :])
    frame_pos = jnp.concatenate(pos_levels, axis=-2)
    frame_rot = jnp.concatenate(rot_levels, axis=-3)

    if len(sched.derived):
        derived_pos = jnp.einsum("df,...fc->...dc", jnp.asarray(sched.derived_weights, dtype), frame_pos)
        eye = jnp.broadcast_to(jnp.eye(3, dtype=dtype), batch + (len(sched.derived), 3, 3))
        all_pos = jnp.concatenate([frame_pos, derived_pos], axis=-2)
        all_rot = jnp.concatenate([frame_rot, eye], axis=-3)
    else:
        all_pos, all_rot = frame_pos, frame_rot
    positions = all_pos[..., sched.entry_from_level, :]
    rotations = all_rot[..., sched.entry_from_level, :, :]
    joints = positions[..., np.asarray(tree.output_indices, dtype=np.int32), :]
    if tree.output_axes != (0, 1, 2):
        joints = joints[..., np.asarray(tree.output_axes)]
    return FKResult(joints=joints, positions=positions, rotations=rotations)


def rest_pose(tree: KinematicTree, scale: float | None = None) -> jax.Array:
    """[J, 3] output joints with all angles zero and no translation."""
    return forward_kinematics(tree, jnp.zeros((tree.num_dofs,)), scale=scale).joints
