"""Forward kinematics: a pure function of a :class:`KinematicTree` and joint angles.

Frames are composed level by level of tree depth: all frames of one depth are computed in one
batched gather + matmul, so the traced program has one step per depth level (a Python loop over
*depth* at trace time) and no loop over joints or over the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kinpose_jax.jitting import jit_static
from kinpose_jax.kinematics.rotations import sincos, skew
from kinpose_jax.kinematics.tree import KinematicTree


class _Schedule(NamedTuple):
    frames: np.ndarray  # [F] entry index of every frame, in level order
    level_slices: tuple[tuple[int, int], ...]  # [start, stop) into ``frames`` per depth level
    parent_in_prev: tuple[np.ndarray, ...]  # per level > 0: parent's position inside the previous level
    dof_groups: tuple[tuple[tuple[tuple[float, float, float], ...], np.ndarray], ...]
    # per distinct axis sequence (the k unit axes of a frame's dofs, in order): [n, k] angle indices
    local_order: np.ndarray  # [F] level-ordered frame -> row of concat(no-dof frames, *dof_groups)
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
    signatures = {}  # axis sequence -> level-ordered frames with it (in first-seen order)
    for f, i in enumerate(frames):
        if len(dofs[i]):
            signatures.setdefault(tuple(tuple(float(c) for c in a) for a in dofs[i]), []).append(f)
    dof_groups = tuple(
        (sig, np.asarray([[offsets[frames[f]] + s for s in range(len(sig))] for f in fs], dtype=np.int32))
        for sig, fs in signatures.items()
    )
    grouped = [f for f, i in enumerate(frames) if not len(dofs[i])] + [f for fs in signatures.values() for f in fs]
    local_order = np.asarray([grouped.index(f) for f in range(len(frames))], dtype=np.int32)
    derived_idx = np.asarray([i for i in range(e) if derived[i]], dtype=np.int32)
    level_pos = {int(i): p for p, i in enumerate(frames)}
    weights = np.zeros((len(derived_idx), len(frames)))
    for r, i in enumerate(derived_idx):
        for src, w in derived[i]:
            weights[r, level_pos[src]] += w
    order = list(frames) + list(derived_idx)
    entry_from_level = np.asarray([order.index(i) for i in range(e)], dtype=np.int32)
    return _Schedule(frames, tuple(slices), parent_in_prev, dof_groups, local_order,
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


@jit_static("chunk_size")
def forward_kinematics(
    tree: KinematicTree,
    angles: jax.Array,
    translation: jax.Array | None = None,
    scale: jax.Array | float | None = None,
    *,
    chunk_size: int | None = None,
) -> FKResult:
    """Poses a kinematic tree. Jitted (one compiled program per tree structure, input shapes and
    ``chunk_size``); ``chunk_size`` is static.

    ``G_root = T(translation) @ R_root``; ``G_j = G_parent @ T(scale * offset_j) @ R_j``, where
    ``R_j`` is the ordered product of the rotations about frame ``j``'s dof axes.

    Args:
      tree: the skeleton. Its ``offsets`` may carry leading batch dims.
      angles: [..., tree.num_dofs] radians, ordered as ``tree.param_names``.
      translation: [..., 3] root position (same unit as offsets; not scaled), default 0.
      scale: [...] multiplies every bone offset, default 1.
      chunk_size: samples per chunk when the (flattened) batch is large. ``None`` (default):
        :data:`CPU_CHUNK_SIZE` on the CPU backend, no chunking on GPU/TPU (see
        :func:`resolve_chunk_size`); ``0``: never chunk; ``k > 0``: batches larger than ``k`` run
        as a sequential ``lax.map`` over ``ceil(N / k)`` equal chunks of at most ``k`` samples
        (padding is less than one sample per chunk). Chunking changes speed and memory only,
        not the values or gradients. A Python int (static).
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
    n = math.prod(batch)  # an int; a symbolic dimension when traced for jax.export with a symbolic batch
    chunk = resolve_chunk_size(chunk_size)
    angles = jnp.broadcast_to(angles, batch + angles.shape[-1:]).reshape(n, angles.shape[-1])
    translation = jnp.broadcast_to(translation, batch + (3,)).reshape(n, 3)
    scale = jnp.broadcast_to(scale, batch).reshape(n)
    per_sample = [angles, translation, scale]
    if offsets.ndim > 2:  # batched bone lengths: [N, E, 3]; otherwise one [E, 3] for every sample
        per_sample.append(jnp.broadcast_to(offsets, batch + offsets.shape[-2:]).reshape((n,) + offsets.shape[-2:]))
        shared = None
    else:
        shared = offsets

    def flat(a, t, s, off=None):
        return _forward_flat(tree, sched, a, t, s, shared if off is None else off, dtype)

    if chunk and isinstance(n, int) and n > chunk:
        # Large batches run as a sequential loop over chunks (lax.map): on CPU the per-level
        # intermediates then stay in cache instead of streaming through memory. The chunks are
        # balanced (ceil(n / num_chunks) samples each), so padding stays below num_chunks. Each
        # chunk's results stay batch-last; one transpose of the whole result follows the loop.
        num_chunks = -(-n // chunk)
        size = -(-n // num_chunks)
        pad = num_chunks * size - n
        padded = [jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], dtype)]) for x in per_sample]
        chunks = [x.reshape((num_chunks, size) + x.shape[1:]) for x in padded]
        result = jax.lax.map(lambda c: flat(*c), chunks)  # leaves [num_chunks, ..., size]
        result = jax.tree.map(lambda x: jnp.moveaxis(x, -1, 1).reshape((-1,) + x.shape[1:-1])[:n], result)
    else:
        result = jax.tree.map(lambda x: jnp.moveaxis(x, -1, 0), flat(*per_sample))
    return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), result)


#: Default chunk (samples) on the CPU backend: small enough for one chunk's per-level
#: intermediates of a human-sized tree (~20 frames) to stay in a CPU's L2/L3 cache.
CPU_CHUNK_SIZE = 4096


def resolve_chunk_size(chunk_size: int | None, backend: str | None = None) -> int:
    """The chunk size :func:`forward_kinematics` uses; 0 means no chunking.

    ``None`` picks by backend (``backend`` defaults to ``jax.default_backend()``, read at trace
    time): :data:`CPU_CHUNK_SIZE` on ``"cpu"``, 0 elsewhere — accelerators run the whole batch
    in one step, since a sequential loop over chunks would serialize it. An explicit value is
    returned unchanged (it must be a non-negative int).
    """
    if chunk_size is None:
        backend = jax.default_backend() if backend is None else backend
        return CPU_CHUNK_SIZE if backend == "cpu" else 0
    if isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 0:
        raise ValueError(f"chunk_size must be None or a non-negative int, got {chunk_size!r}")
    return int(chunk_size)


def _add(a, b):
    """Sum of two entries, each a float constant or an array; zero constants are dropped."""
    if isinstance(a, float) and a == 0.0:
        return b
    if isinstance(b, float) and b == 0.0:
        return a
    return a + b


def _mul(a, b):
    """Product of two entries, each a float constant or an array; 0 and 1 constants fold away."""
    for u, v in ((a, b), (b, a)):
        if isinstance(u, float) and u == 0.0:
            return 0.0
        if isinstance(u, float) and u == 1.0:
            return v
    return a * b


def _axis_rotation(axis, sin, cos):
    """Rotation about the constant unit ``axis`` by angles given by ``sin``/``cos`` [n, N], as a
    3x3 nested list of entries (float constants or [n, N] arrays): Rodrigues'
    ``I + sin K + (1 - cos) K^2`` with the constant coefficients folded at trace time, so a
    rotation about x, y or z costs 4 non-constant entries and no multiplications by zero."""
    k = skew(np.asarray(axis))
    k2 = k @ k
    const = np.eye(3) + k2
    return [[_add(_add(float(const[r, q]), _mul(float(-k2[r, q]), cos)), _mul(float(k[r, q]), sin))
             for q in range(3)] for r in range(3)]


def _entries_mm3(a, b):
    """3x3 product of nested-list matrices (:func:`_axis_rotation` entries)."""
    out = []
    for r in range(3):
        row = []
        for q in range(3):
            acc = 0.0
            for k in range(3):
                acc = _add(acc, _mul(a[r][k], b[k][q]))
            row.append(acc)
        out.append(row)
    return out


def _mm3(a: jax.Array, b: jax.Array) -> jax.Array:
    """3x3 products on batch-last arrays [..., 3, 3, N]: three unrolled multiply-adds over
    contiguous N lanes, which XLA:CPU vectorizes far better than a batched dot of tiny matrices."""
    return sum(a[..., :, k : k + 1, :] * b[..., k : k + 1, :, :] for k in range(3))


def _mv3(a: jax.Array, v: jax.Array) -> jax.Array:
    """[..., 3, 3, N] @ [..., 3, N] -> [..., 3, N] (batch last)."""
    return sum(a[..., :, k, :] * v[..., k : k + 1, :] for k in range(3))


def _forward_flat(tree, sched, angles, translation, scale, offsets, dtype) -> FKResult:
    """FK on flat inputs: angles [N, P], translation [N, 3], scale [N], offsets [E, 3] (shared)
    or [N, E, 3] (per sample), unscaled. Returns an :class:`FKResult` whose fields are batch-last:
    joints [J, 3, N], positions [E, 3, N], rotations [E, 3, 3, N].

    Batch-last ("structure of arrays") throughout: every 3x3 block is [..., 3, 3, N].
    """
    n = angles.shape[0]
    ang = angles.T  # [P, N]
    sin, cos = sincos(ang)
    eye = jnp.eye(3, dtype=dtype)[..., None]
    num_static = len(sched.frames) - sum(len(idx) for _, idx in sched.dof_groups)
    parts = [jnp.broadcast_to(eye, (num_static, 3, 3, n))]
    for axes, idx in sched.dof_groups:  # frames sharing one axis sequence: [n_g, k] angle indices
        m = _axis_rotation(axes[0], sin[idx[:, 0]], cos[idx[:, 0]])
        for j in range(1, len(axes)):
            m = _entries_mm3(m, _axis_rotation(axes[j], sin[idx[:, j]], cos[idx[:, j]]))
        shape = (len(idx), n)
        parts.append(jnp.stack([jnp.stack([jnp.broadcast_to(jnp.asarray(v, dtype), shape) for v in row], 1)
                                for row in m], 1))
    local_rot = jnp.concatenate(parts, axis=0)[sched.local_order]  # [F, 3, 3, N] level order
    if offsets.ndim == 2:
        local_off = offsets[sched.frames][..., None] * scale  # [F, 3, N]
    else:
        local_off = jnp.transpose(offsets[:, sched.frames, :], (1, 2, 0)) * scale
    start, stop = sched.level_slices[0]
    rot_levels = [local_rot[start:stop]]
    pos_levels = [jnp.broadcast_to(translation.T[None], (stop - start, 3, n))]
    for d in range(1, len(sched.level_slices)):
        start, stop = sched.level_slices[d]
        pidx = sched.parent_in_prev[d - 1]
        parent_rot = rot_levels[-1][pidx]
        pos_levels.append(pos_levels[-1][pidx] + _mv3(parent_rot, local_off[start:stop]))
        rot_levels.append(_mm3(parent_rot, local_rot[start:stop]))
    frame_pos = jnp.concatenate(pos_levels, axis=0)  # [F, 3, N]
    frame_rot = jnp.concatenate(rot_levels, axis=0)  # [F, 3, 3, N]

    if len(sched.derived):
        derived_pos = jnp.einsum("df,fcn->dcn", jnp.asarray(sched.derived_weights, dtype), frame_pos)
        all_pos = jnp.concatenate([frame_pos, derived_pos], axis=0)
        all_rot = jnp.concatenate([frame_rot, jnp.broadcast_to(eye, (len(sched.derived), 3, 3, n))], axis=0)
    else:
        all_pos, all_rot = frame_pos, frame_rot
    out_rows = np.asarray(sched.entry_from_level)[np.asarray(tree.output_indices, dtype=np.int32)]
    joints = all_pos[out_rows]  # [J, 3, N]
    if tree.output_axes != (0, 1, 2):
        joints = joints[:, np.asarray(tree.output_axes)]
    return FKResult(joints=joints, positions=all_pos[sched.entry_from_level], rotations=all_rot[sched.entry_from_level])


def rest_pose(tree: KinematicTree, scale: float | None = None) -> jax.Array:
    """[J, 3] output joints with all angles zero and no translation."""
    return forward_kinematics(tree, jnp.zeros((tree.num_dofs,)), scale=scale).joints
