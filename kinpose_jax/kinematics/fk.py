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
    slot_axes: np.ndarray  # [F*3, 3] rotation axes per frame and slot (zero rows: no dof)
    slot_angle: np.ndarray  # [F*3] index into angles (num_dofs means "no dof": angle 0)
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
    num_dofs = dof_offset
    slot_axes = np.zeros((len(frames), 3, 3))
    slot_angle = np.full((len(frames), 3), num_dofs, dtype=np.int32)
    for f, i in enumerate(frames):
        for k, axis in enumerate(dofs[i]):
            slot_axes[f, k] = axis
            slot_angle[f, k] = offsets[i] + k
    derived_idx = np.asarray([i for i in range(e) if derived[i]], dtype=np.int32)
    level_pos = {int(i): p for p, i in enumerate(frames)}
    weights = np.zeros((len(derived_idx), len(frames)))
    for r, i in enumerate(derived_idx):
        for src, w in derived[i]:
            weights[r, level_pos[src]] += w
    order = list(frames) + list(derived_idx)
    entry_from_level = np.asarray([order.index(i) for i in range(e)], dtype=np.int32)
    return _Schedule(frames, tuple(slices), parent_in_prev, slot_axes.reshape(-1, 3), slot_angle.reshape(-1),
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
    dtype = jnp.result_type(angles.dtype, jnp.float32) if not jnp.issubdtype(angles.dtype, jnp.floating) else angles.dtype
    angles = angles.astype(dtype)
    batch = angles.shape[:-1]
    offsets = jnp.asarray(tree.offsets, dtype)
    batch = jnp.broadcast_shapes(batch, offsets.shape[:-2])
    if translation is None:
        translation = jnp.zeros(batch + (3,), dtype)
    translation = jnp.asarray(translation, dtype)
    if translation.shape[-1] != 3:
        raise ValueError(f"translation must be [..., 3], got shape {translation.shape}")
    batch = jnp.broadcast_shapes(batch, translation.shape[:-1])
    if scale is not None:
        scale = jnp.asarray(scale, dtype)
        batch = jnp.broadcast_shapes(batch, scale.shape)
        offsets = offsets * scale[..., None, None]

    # Local rotations of every frame at once: [..., F, 3, 3].
    padded = jnp.concatenate([angles, jnp.zeros(angles.shape[:-1] + (1,), dtype)], axis=-1)
    slot_theta = jnp.take(padded, jnp.asarray(sched.slot_angle), axis=-1)
    slot_rot = axis_angle_matrices(sched.slot_axes, slot_theta)
    num_frames = len(sched.frames)
    slot_rot = slot_rot.reshape(slot_rot.shape[:-3] + (num_frames, 3, 3, 3))
    local_rot = slot_rot[..., 0, :, :] @ slot_rot[..., 1, :, :] @ slot_rot[..., 2, :, :]
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
