"""Rotation matrices from axis-angle pairs (pure ``jax.numpy``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def skew(axes: np.ndarray) -> np.ndarray:
    """Cross-product matrices ``K`` with ``K @ v = axis x v``; axes [..., 3] -> [..., 3, 3]."""
    axes = np.asarray(axes, dtype=np.float64)
    x, y, z = axes[..., 0], axes[..., 1], axes[..., 2]
    zero = np.zeros_like(x)
    return np.stack(
        [np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2
    )


def axis_angle_matrices(axes: np.ndarray, angles: jnp.ndarray) -> jnp.ndarray:
    """Rodrigues' formula ``R = I + sin(a) K + (1 - cos(a)) K^2``.

    Args:
      axes: [N, 3] unit axes (static numpy); a zero row gives the identity for any angle.
      angles: [..., N] radians.
    Returns:
      [..., N, 3, 3] rotation matrices (right-handed, counter-clockwise about the axis).
    """
    k = skew(axes)
    k2 = k @ k
    dtype = angles.dtype if jnp.issubdtype(angles.dtype, jnp.floating) else jnp.float32
    k, k2 = jnp.asarray(k, dtype), jnp.asarray(k2, dtype)
    s = jnp.sin(angles)[..., None, None]
    c = jnp.cos(angles)[..., None, None]
    return jnp.eye(3, dtype=dtype) + s * k + (1.0 - c) * k2


def euler_matrix(order: str, angles: jnp.ndarray) -> jnp.ndarray:
    """``R = R_{order[0]}(a_0) @ R_{order[1]}(a_1) @ ...``; angles [..., len(order)] -> [..., 3, 3]."""
    basis = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}
    mats = axis_angle_matrices(np.asarray([basis[c] for c in order]), angles)
    out = mats[..., 0, :, :]
    for k in range(1, len(order)):
        out = out @ mats[..., k, :, :]
    return out
