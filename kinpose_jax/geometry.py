"""Camera geometry shared by the data path, the metrics and evaluation.

Functions take numpy or jax arrays alike (plain arithmetic) and broadcast over leading axes.
Units: camera space in mm, image space in pixels.
"""

from __future__ import annotations


def project(points_cam, focal, center):
    """Pinhole projection without distortion: [..., 3] camera mm -> [..., 2] px,
    ``u = X / Z * fx + cx``, ``v = Y / Z * fy + cy``; ``focal`` and ``center`` broadcast against [..., 2]."""
    return points_cam[..., :2] / points_cam[..., 2:3] * focal + center
