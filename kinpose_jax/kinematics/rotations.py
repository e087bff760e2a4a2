"""Cross-product matrices of rotation axes (the ``K`` of Rodrigues' formula used by forward kinematics)."""

from __future__ import annotations

import numpy as np


def skew(axes: np.ndarray) -> np.ndarray:
    """Cross-product matrices ``K`` with ``K @ v = axis x v``; axes [..., 3] -> [..., 3, 3]."""
    axes = np.asarray(axes, dtype=np.float64)
    x, y, z = axes[..., 0], axes[..., 1], axes[..., 2]
    zero = np.zeros_like(x)
    return np.stack(
        [np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2
    )
