"""Integral regression: soft-argmax over heatmaps, flip-test merging.

Normalized coordinates (docs/DESIGN.md#soft-argmax): for a heatmap of W x H x D bins the expected bin index ``i``
along an axis gives ``i / W - 0.5`` (x), ``i / H - 0.5`` (y), ``i / D - 0.5`` (z); to patch pixels
with :func:`kinpose_jax.geometry.normalized_to_patch`.

Channel order of the 3D heatmaps is ``j * D + d`` (joint-major) in both layouts:
``"NCHW"``: [B, J*D, H, W] (the original's PyTorch layout); ``"NHWC"``: [B, H, W, J*D] (Flax convs).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from kinpose_jax import geometry
from kinpose_jax.jitting import jit_static


#: Heatmap rows (one joint's [D,] H, W logits each) per sequential step of the NCHW soft-argmax
#: on the CPU backend.
CPU_ROWS_PER_STEP = 8


def _expectations(logits: jax.Array, axes: dict[str, int], sum_axes: tuple[int, ...]):
    """Softmax over ``sum_axes`` (stable: max-subtracted, float32) and expected indices along
    each named axis, over the whole array at once (the NHWC layout, whose per-joint bins are not
    contiguous). Returns {name: [...]} with the summed axes removed."""
    logits = logits.astype(jnp.float32)
    m = jax.lax.stop_gradient(jnp.max(logits, axis=sum_axes, keepdims=True))
    e = jnp.exp(logits - m)
    total = jnp.sum(e, axis=sum_axes)
    out = {}
    for name, ax in axes.items():
        others = tuple(a for a in sum_axes if a != ax)
        marginal = jnp.sum(e, axis=others, keepdims=True)  # bins along ``ax`` only
        shape = [1] * logits.ndim
        shape[ax] = logits.shape[ax]
        idx = jnp.arange(logits.shape[ax], dtype=jnp.float32).reshape(shape)
        out[name] = jnp.squeeze(jnp.sum(marginal * idx, axis=ax, keepdims=True), axis=sum_axes) / total
    return out


def _row_sums(row: jax.Array, shift: jax.Array) -> jax.Array:
    """Unnormalized softmax moments of one row ([..., H, W] logits; ``shift``: a constant for
    autodiff subtracted before ``exp``, their max or :func:`_rows_shift_estimate`'s) -> [row.ndim
    + 1]: the sum of the exponentials, then their sums weighted by the bin index along each axis,
    last axis first (x, y[, z]). Every term is non-negative.

    The exponentials of each [H, W] plane are reduced by one matrix product with [1, x, y]
    weights over its H*W bins (float32 at full precision): XLA:CPU runs that product several
    times faster than a reduction whose operand is ``exp``. The leading axes (depth) are then
    summed on the per-plane totals."""
    e = jnp.exp(row.astype(jnp.float32) - shift)
    lead, (h, w) = row.shape[:-2], row.shape[-2:]
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    weights = jnp.stack([jnp.ones(h * w, jnp.float32), xs.reshape(-1), ys.reshape(-1)], axis=1)  # [H*W, 3]
    planes = jnp.dot(e.reshape(-1, h * w), weights, precision=jax.lax.Precision.HIGHEST).reshape(lead + (3,))
    totals = planes[..., 0]  # per plane
    sums = [jnp.sum(totals), jnp.sum(planes[..., 1]), jnp.sum(planes[..., 2])]
    for ax in reversed(range(len(lead))):
        shape = [1] * len(lead)
        shape[ax] = lead[ax]
        sums.append(jnp.sum(totals * jnp.arange(lead[ax], dtype=jnp.float32).reshape(shape)))
    return jnp.stack(sums)


def _expectations_from_sums(sums: jax.Array) -> jax.Array:
    """[..., 1 + k] sums from :func:`_row_sums` -> [..., k] expected bin indices."""
    return sums[..., 1:] / sums[..., :1]


def _rows_max(rows: jax.Array) -> jax.Array:
    """[R, ...] -> [R] float32 maximum of each row, as a constant for autodiff. Reduced first
    across 1024-wide column blocks (128-wide where a row is no multiple of 1024), then within the
    block: XLA:CPU vectorizes that order, which reads the array about twice as fast as one
    reduction per row (1024-wide blocks: 21-23 ms for 604 MB here, 128-wide 26-27 ms)."""
    flat = rows.reshape(rows.shape[0], -1)
    block = 1024 if flat.shape[1] % 1024 == 0 else 128
    if flat.shape[1] % block == 0:
        flat = jax.lax.optimization_barrier(flat.reshape(flat.shape[0], -1, block).max(axis=1))
    return jax.lax.stop_gradient(flat.max(axis=1).astype(jnp.float32))


def _rows_shift_estimate(rows: jax.Array) -> jax.Array:
    """[R, ...] -> [R] float32 maximum of each row's middle slice along its first axis (the middle
    depth plane of a 3D row, the middle image row of a 2D one), as a constant for autodiff: a
    softmax shift read from 1/D (1/H) of the bins. It is at most the row's maximum, so the largest
    exponential is at least 1; sums overflow once the row's maximum lies some 70 to 88 above it."""
    middle = rows[:, rows.shape[1] // 2].reshape(rows.shape[0], -1)
    return jax.lax.stop_gradient(middle.max(axis=1).astype(jnp.float32))


def _rows_sums_in_steps(rows: jax.Array, shift: jax.Array) -> jax.Array:
    """:func:`_row_sums` of every row of [R, ...] with its [R] shift, as a sequential loop over
    steps of :data:`CPU_ROWS_PER_STEP` rows (the step's exponentials stay in cache)."""
    return jax.lax.map(lambda a: _row_sums(*a), (rows, shift), batch_size=CPU_ROWS_PER_STEP)


def _rows_sums_max_subtracted_in_steps(rows: jax.Array) -> jax.Array:
    return _rows_sums_in_steps(rows, _rows_max(rows))


@jax.custom_jvp
def _rows_expectations_one_pass(rows: jax.Array) -> jax.Array:
    """The CPU path of :func:`_rows_expectations`, reading the array once where that is exact.

    The exponentials are shifted by :func:`_rows_shift_estimate` instead of each row's maximum,
    which saves the pass that finds the maxima (about a quarter of the time). Softmax expectations
    do not depend on the shift, and a shift at most the maximum loses no bin that matters (those
    lost lie e^-87 below the largest), so wherever every sum stays finite (their terms are
    non-negative: no partial sum overflowed either) the result equals the max-subtracted one up to
    float32 rounding. Where any sum of any row overflows (a row's maximum some 70 to 88 above its
    middle slice's), all rows are redone with their true maxima, so one such row changes the
    others' rounding. Under ``jax.vmap`` the choice is batched and both passes run. Derivatives
    are those of the max-subtracted loop (the same function)."""
    sums = _rows_sums_in_steps(rows, _rows_shift_estimate(rows))
    sums = jax.lax.cond(jnp.all(jnp.isfinite(sums)), lambda: sums, lambda: _rows_sums_max_subtracted_in_steps(rows))
    return _expectations_from_sums(sums)


@_rows_expectations_one_pass.defjvp
def _rows_expectations_one_pass_jvp(primals, tangents):
    return jax.jvp(lambda r: _expectations_from_sums(_rows_sums_max_subtracted_in_steps(r)), primals, tangents)


def _rows_expectations(rows: jax.Array) -> jax.Array:
    """Stable (float32) softmax expectations of every row of [R, ...] logits: [R, ndim - 1] (see
    :func:`_row_sums`). On the CPU backend the rows run in sequential steps of
    :data:`CPU_ROWS_PER_STEP` (:func:`_rows_expectations_one_pass`); elsewhere all rows at once,
    max-subtracted."""
    r = rows.shape[0]
    if jax.default_backend() == "cpu" and isinstance(r, int) and r > CPU_ROWS_PER_STEP:
        return _rows_expectations_one_pass(rows)
    return _expectations_from_sums(jax.vmap(_row_sums)(rows, _rows_max(rows)))


@jit_static("num_joints", "depth_bins", "layout")
def softargmax_3d(heatmaps: jax.Array, num_joints: int, depth_bins: int, layout: str = "NHWC") -> jax.Array:
    """Integral 3D joint regression. Jitted; ``num_joints``, ``depth_bins`` and ``layout`` are static.

    Args:
      heatmaps: logits, [B, J*D, H, W] ("NCHW") or [B, H, W, J*D] ("NHWC"), channel = j*D + d.
      num_joints: J. depth_bins: D.
    Returns:
      [B, J, 3] normalized (x, y, z), float32.
    """
    if layout == "NCHW":
        b, c, h, w = heatmaps.shape
        _check_channels(c, num_joints, depth_bins)
        xyz = _rows_expectations(heatmaps.reshape(b * num_joints, depth_bins, h, w)).reshape(b, num_joints, 3)
        exp = {"x": xyz[..., 0], "y": xyz[..., 1], "z": xyz[..., 2]}
    elif layout == "NHWC":
        b, h, w, c = heatmaps.shape
        _check_channels(c, num_joints, depth_bins)
        x = heatmaps.reshape(b, h, w, num_joints, depth_bins)
        exp = _expectations(x, {"x": 2, "y": 1, "z": 4}, (1, 2, 4))
    else:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return jnp.stack([exp["x"] / w - 0.5, exp["y"] / h - 0.5, exp["z"] / depth_bins - 0.5], axis=-1)


@jit_static("layout")
def softargmax_2d(heatmaps: jax.Array, layout: str = "NHWC") -> jax.Array:
    """Integral 2D joint regression: [B, J, H, W] ("NCHW") or [B, H, W, J] ("NHWC") -> [B, J, 2]
    normalized (x, y). Jitted; ``layout`` is static."""
    if layout == "NCHW":
        b, j, h, w = heatmaps.shape
        xy = _rows_expectations(heatmaps.reshape(b * j, h, w)).reshape(b, j, 2)
        exp = {"x": xy[..., 0], "y": xy[..., 1]}
    elif layout == "NHWC":
        _, h, w, _ = heatmaps.shape
        exp = _expectations(heatmaps, {"x": 2, "y": 1}, (1, 2))
    else:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return jnp.stack([exp["x"] / w - 0.5, exp["y"] / h - 0.5], axis=-1)


def _check_channels(c: int, num_joints: int, depth_bins: int) -> None:
    if c != num_joints * depth_bins:
        raise ValueError(
            f"heatmaps have {c} channels, expected num_joints * depth_bins = {num_joints} * {depth_bins}"
        )


@jit_static("flip_pairs")
def merge_flip_test(
    joints_px: jax.Array, joints_flipped_px: jax.Array, patch_width: float, flip_pairs: Sequence[tuple[int, int]]
) -> jax.Array:
    """Flip test: average the prediction on the patch with the mirrored-back prediction on the
    flipped patch. Both [..., J, 3] in patch pixels; returns the same. Jitted; ``flip_pairs`` is
    static."""
    return 0.5 * (joints_px + geometry.flip_horizontal(joints_flipped_px, patch_width, flip_pairs, xp=jnp))
