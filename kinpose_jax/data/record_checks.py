"""Validation of every record read from the original's caches (docs/DESIGN.md#cache-format), and the
plausibility checks of a record against its image.

A validated record is a plain dict of float64 numpy arrays (plus the image path):

=================  ===========  ===================================================================
key                shape        meaning
=================  ===========  ===================================================================
``image``          str          image file path (as resolved on this machine)
``center``         [2]          box centre (u, v), image px
``box_size``       [2]          box width, height, image px
``joints_img``     [18, 3]      u px, v px, depth - pelvis depth (mm); H36M-18 order (docs/DESIGN.md#joints)
``joints_vis``     [18, 3]      0/1 loss weights (MPII: depth weight 0)
``joints_cam``     [18, 3]      camera mm (zeros for MPII)
``pelvis``         [3]          camera mm (zeros for MPII)
``fl``             [2]          focal lengths fx, fy px (zeros for MPII)
``c_p``            [2]          principal point cx, cy px (zeros for MPII)
``bone_len``       []           total skeleton length mm (0 for MPII)
=================  ===========  ===================================================================
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kinpose_jax import geometry, skeleton
from kinpose_jax.data import DataError
from kinpose_jax.data.h36m_cache import H36M_CACHE_KEYS, MPII_CACHE_KEYS


def _where(source: str, index: int, field: str) -> str:
    return f"{source} record {index} field {field!r}"


def _array(rec: dict, key: str, shape: tuple[int, ...], source: str, index: int) -> np.ndarray:
    value = rec[key]
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{_where(source, index, key)}: not numeric ({type(value).__name__}); "
                        f"expected shape {shape}") from err
    if arr.shape != shape:
        raise DataError(f"{_where(source, index, key)}: shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[:3].tolist()
        raise DataError(f"{_where(source, index, key)}: non-finite values (NaN/inf) at {bad}")
    return arr


def _positive(arr: np.ndarray, key: str, source: str, index: int) -> None:
    if np.any(arr <= 0):
        raise DataError(f"{_where(source, index, key)}: {arr.tolist()} must be > 0")


def _check_keys(rec: dict, required: Sequence[str], source: str, index: int) -> None:
    missing = [k for k in required if k not in rec]
    if missing:
        raise DataError(f"{source} record {index}: missing keys {missing}; a record needs {list(required)} "
                        f"(has {sorted(map(str, rec))})")


def _check_pairs(rec: dict, key: str, expected: Sequence, source: str, index: int) -> None:
    try:
        got = np.asarray(rec[key], dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{_where(source, index, key)}: not integer data") from err
    exp = np.asarray(expected, dtype=np.int64)
    if key == "flip_pairs":
        if got.ndim != 2 or got.shape[1] != 2 or {tuple(sorted(p)) for p in got.tolist()} != {
                tuple(sorted(p)) for p in exp.tolist()}:
            raise DataError(f"{_where(source, index, key)}: {got.tolist()}, expected the pairs {exp.tolist()} "
                            f"(a different joint set?)")
    elif got.shape != exp.shape or not np.array_equal(got, exp):
        raise DataError(f"{_where(source, index, key)}: {got.tolist()}, expected {exp.tolist()} "
                        f"(a different joint set?)")


def _check_vis(vis: np.ndarray, key: str, source: str, index: int) -> None:
    if np.any((vis < 0) | (vis > 1)):
        raise DataError(f"{_where(source, index, key)}: values outside [0, 1] (visibility weights)")


def _box(rec: dict, source: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    vals = {}
    for key in ("center_x", "center_y", "width", "height"):
        vals[key] = _array(rec, key, (), source, index)
    size = np.array([vals["width"], vals["height"]])
    for key in ("width", "height"):
        _positive(np.asarray(vals[key]), key, source, index)
    return np.array([vals["center_x"], vals["center_y"]]), size


def validate_h36m_record(rec: Any, index: int, source: str) -> dict:
    """Checks one Human3.6M cache record (docs/DESIGN.md#cache-format) and returns the validated record (module
    docstring; ``image`` is the path as written in the cache). DataError names the record and
    field otherwise."""
    if not isinstance(rec, dict):
        raise DataError(f"{source} record {index}: a {type(rec).__name__}, expected a dict")
    _check_keys(rec, H36M_CACHE_KEYS, source, index)
    j = skeleton.H36M_NUM_JOINTS
    if not isinstance(rec["image"], (str, bytes)):
        raise DataError(f"{_where(source, index, 'image')}: a {type(rec['image']).__name__}, expected a path")
    center, size = _box(rec, source, index)
    _check_pairs(rec, "flip_pairs", skeleton.H36M_FLIP_PAIRS, source, index)
    _check_pairs(rec, "parent_ids", skeleton.H36M_PARENT_IDS, source, index)
    out = {
        "image": rec["image"].decode() if isinstance(rec["image"], bytes) else rec["image"],
        "center": center, "box_size": size,
        "joints_img": _array(rec, "joints_3d", (j, 3), source, index),
        "joints_vis": _array(rec, "joints_3d_vis", (j, 3), source, index),
        "joints_cam": _array(rec, "joints_3d_cam", (j, 3), source, index),
        "pelvis": _array(rec, "pelvis", (3,), source, index),
        "fl": _array(rec, "fl", (2,), source, index),
        "c_p": _array(rec, "c_p", (2,), source, index),
        "bone_len": _array(rec, "bone_len", (), source, index),
    }
    _check_vis(out["joints_vis"], "joints_3d_vis", source, index)
    _positive(out["fl"], "fl", source, index)
    _positive(out["pelvis"][2:], "pelvis", source, index)
    _positive(out["bone_len"], "bone_len", source, index)
    return out


def validate_mpii_record(rec: Any, index: int, source: str) -> dict:
    """Checks one MPII cache record (16 joints, docs/DESIGN.md#mpii-cache) and returns it in the validated
    H36M-18 layout: joints mapped with ``MPII_TO_H36M`` (unmapped joints weight 0), depth
    weights 0, camera fields zero."""
    if not isinstance(rec, dict):
        raise DataError(f"{source} record {index}: a {type(rec).__name__}, expected a dict")
    _check_keys(rec, MPII_CACHE_KEYS, source, index)
    if not isinstance(rec["image"], (str, bytes)):
        raise DataError(f"{_where(source, index, 'image')}: a {type(rec['image']).__name__}, expected a path")
    center, size = _box(rec, source, index)
    _check_pairs(rec, "flip_pairs", skeleton.MPII_FLIP_PAIRS, source, index)
    n = skeleton.MPII_NUM_JOINTS
    joints = _array(rec, "joints_3d", (n, 3), source, index)
    vis = _array(rec, "joints_3d_vis", (n, 3), source, index)
    _check_vis(vis, "joints_3d_vis", source, index)
    j = skeleton.H36M_NUM_JOINTS
    joints18, vis18 = np.zeros((j, 3)), np.zeros((j, 3))
    for dst, src in enumerate(skeleton.MPII_TO_H36M):
        if src >= 0:
            joints18[dst], vis18[dst] = joints[src], vis[src]
    joints18[:, 2] = 0.0
    vis18[:, 2] = 0.0  # 2D labels only: never train depth on MPII
    return {
        "image": rec["image"].decode() if isinstance(rec["image"], bytes) else rec["image"],
        "center": center, "box_size": size, "joints_img": joints18, "joints_vis": vis18,
        "joints_cam": np.zeros((j, 3)), "pelvis": np.zeros(3), "fl": np.zeros(2), "c_p": np.zeros(2),
        "bone_len": np.zeros(()),
    }


#: Default plausibility limits of the converter (``convert_records`` / ``data_prep/convert_h36m.py``):
#: a box side may be at most this many times the image side ...
MAX_BOX_SCALE = 10.0
#: ... and ``joints_3d`` u, v may differ from the pinhole projection of ``joints_3d_cam`` with the
#: record's ``fl`` / ``c_p`` by at most this many px (real Human3.6M caches: a few px of lens distortion).
MAX_REPROJECTION_PX = 40.0


def check_plausible(rec: dict, image_size: tuple[int, int], where: str, *, max_box_scale: float = MAX_BOX_SCALE,
                    max_reprojection_px: float | None = MAX_REPROJECTION_PX) -> None:
    """Checks a validated record against its image (``image_size`` = (W, H) px) and camera.

    The box (``box_size`` px) must be at most ``max_box_scale`` times the image side and overlap
    the image; with ``max_reprojection_px`` (Human3.6M; None for MPII) the u, v of ``joints_img``
    must lie within that many px of the projection of ``joints_cam`` with ``fl`` / ``c_p``.
    DataError names ``where`` (record and image), the field and the limit otherwise."""
    w, h = image_size
    size, center = rec["box_size"], rec["center"]
    if size[0] > max_box_scale * w or size[1] > max_box_scale * h:
        raise DataError(f"{where} fields 'width'/'height': box {size[0]:.6g} x {size[1]:.6g} px is more than "
                        f"{max_box_scale:g}x the {w} x {h} px image (option max_box_scale)")
    if (center[0] + size[0] / 2 < 0 or center[0] - size[0] / 2 > w or center[1] + size[1] / 2 < 0
            or center[1] - size[1] / 2 > h):
        raise DataError(f"{where} fields 'center_x'/'center_y': the box centred at ({center[0]:.6g}, {center[1]:.6g}) "
                        f"px, {size[0]:.6g} x {size[1]:.6g} px, does not overlap the {w} x {h} px image")
    if max_reprojection_px is not None:
        err = np.abs(geometry.project(rec["joints_cam"], rec["fl"], rec["c_p"]) - rec["joints_img"][:, :2])
        joint = int(np.argmax(err.max(axis=1)))
        if err[joint].max() > max_reprojection_px:
            raise DataError(f"{where} field 'joints_3d': joint {joint} is {err[joint].max():.1f} px from the "
                            f"projection "
                            f"of 'joints_3d_cam' with the record's fl {rec['fl'].tolist()} and c_p "
                            f"{rec['c_p'].tolist()} (limit {max_reprojection_px:g} px, option max_reprojection_px): "
                            f"the labels contradict the camera")
