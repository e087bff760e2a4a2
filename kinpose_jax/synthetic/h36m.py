"""A synthetic Human3.6M in the original's exact on-disk layout (docs/DESIGN.md#h36m-on-disk), deterministic by seed.

``generate(root)`` writes under ``root/hm36/``::

    annot/<folder>/matlab_meta.txt                       camera + per-frame 32-joint world mocap (mm)
    images/<folder>/<folder>_%06d.jpg                    rendered frames
    HM36_train_cache/HM36_train_w256xh256_keypoint_db_sample<N>.pkl
    HM36_validmin_cache/HM36_validmin_w256xh256_keypoint_db_sample<N>.pkl
    synthetic.json                                       the generator's parameters (idempotence)

Poses: the symmetric H36M kinematic tree (:func:`kinpose_jax.kinematics.presets.h36m18`, human
joint ranges, mean bone lengths) with angles uniform within the joint limits damped towards zero,
a random heading (rotation about the vertical axis) and small tilts, a per-subject bone-length
scale ~ N(1, 0.05), feet on the floor; forward kinematics in float64 on the CPU device, so the
written geometry is the same on every platform (no accelerator or float32 involved). Four cameras around
the capture area with Human3.6M-like intrinsics (fx ~ 1145 px at 1000 px width, scaled to
``image_size``) and extrinsics (3.8-4.8 m away, 1.3-1.8 m high); no lens distortion. The cache
records are computed from the written ``matlab_meta.txt`` by the same code that converts real
annotations; the images are rendered with OpenCV's projection (see :mod:`~kinpose_jax.synthetic.render`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import cv2
import numpy as np

from kinpose_jax.data import DataError, h36m_cache, h36m_layout, matlab_meta, records
from kinpose_jax.synthetic import DEFAULTS, render

GENERATOR_VERSION = 2  # 2: float64 forward kinematics on the CPU device
#: Smallest image side, px.
MIN_IMAGE_SIZE = 64
#: H36M-like intrinsics for a 1000 px wide image (scaled to the requested size).
_FOCAL_1000 = np.array([1145.0, 1144.0])
#: World <- model axes: model x (left) -> world x, model y (up) -> world z, model z (forward) -> world -y.
_MODEL_TO_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def make_cameras(seed: int, image_size: int) -> list[render.Camera]:
    """Four cameras around the origin (one per quadrant), looking at the capture area's centre."""
    rng = np.random.default_rng([seed, 7919])
    s = image_size / 1000.0
    cams = []
    for k in range(4):
        az = np.deg2rad(45.0 + 90.0 * k + rng.uniform(-10, 10))
        dist, height = rng.uniform(3800, 4800), rng.uniform(1300, 1800)
        pos = np.array([dist * np.cos(az), dist * np.sin(az), height])
        target = np.array([rng.uniform(-150, 150), rng.uniform(-150, 150), rng.uniform(850, 1050)])
        focal = _FOCAL_1000 * s * (1.0 + rng.uniform(-0.01, 0.01, 2))
        center = np.array([image_size / 2.0, image_size / 2.0]) + rng.uniform(-3, 3, 2) * s
        cams.append(render.look_at_camera(pos, target, focal, center, (image_size, image_size)))
    return cams


def sample_pose_params(rng: np.random.Generator, num: int, tree, damping: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    """Random in-range poses: (angles [num, tree.num_dofs] radians, floor position [num, 2] mm).

    Limited angles are uniform within ``damping`` x the joint limits; the root gets a uniform
    heading about the vertical axis and tilts of at most 8 degrees."""
    limits = tree.limits_array
    finite = np.all(np.isfinite(limits), axis=1)
    lo = np.where(finite, damping * limits[:, 0], 0.0)
    hi = np.where(finite, damping * limits[:, 1], 0.0)
    angles = rng.uniform(lo, hi, (num, tree.num_dofs))
    names = tree.param_names
    tilt = np.deg2rad(8.0)
    angles[:, names.index("Root_RotZ")] = rng.uniform(-tilt, tilt, num)
    angles[:, names.index("Root_RotX")] = rng.uniform(-tilt, tilt, num)
    angles[:, names.index("Root_RotY")] = rng.uniform(-np.pi, np.pi, num)  # heading about the vertical
    return angles, rng.uniform(-600, 600, (num, 2))


def forward_kinematics_cpu64(tree, angles: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The library's :func:`~kinpose_jax.kinematics.forward_kinematics` in float64 on the CPU
    device, so the synthetic geometry does not depend on the accelerator or on float32 rounding
    (the same numbers on every platform).

    Args: angles [N, tree.num_dofs] radians; scales [N] bone-length scales.
    Returns: output joints [N, tree.num_joints, 3] (offset units, mm) as float64 numpy.
    """
    import jax
    import jax.numpy as jnp

    from kinpose_jax import kinematics

    with jax.enable_x64(True), jax.default_device(jax.devices("cpu")[0]):
        joints = kinematics.forward_kinematics(tree, jnp.asarray(angles, jnp.float64),
                                               scale=jnp.asarray(scales, jnp.float64)).joints
        return np.asarray(joints, np.float64)


def poses_to_world(tree, angles: np.ndarray, scales: np.ndarray, floor_xy: np.ndarray) -> np.ndarray:
    """World joints [N, 18, 3] mm (world z up, float64) by forward kinematics
    (:func:`forward_kinematics_cpu64`), feet on the floor (lowest ankle 90 mm up) at ``floor_xy``
    [N, 2]; ``scales`` [N] bone-length scales."""
    model = forward_kinematics_cpu64(tree, angles, scales)
    world = model @ _MODEL_TO_WORLD.T
    ankle_z = world[:, [3, 6], 2].min(axis=1)
    place = np.concatenate([floor_xy, (90.0 - ankle_z)[:, None]], axis=1)
    return world + place[:, None, :]


def _mocap32(joints18: np.ndarray) -> np.ndarray:
    """32-joint mocap rows [F, 32, 3]: the 17 used joints at their one-based slots, the rest filled
    with the pelvis (those slots are unused by the original)."""
    out = np.repeat(joints18[:, :1], 32, axis=1)
    out[:, np.asarray(matlab_meta.H36M_32_TO_17_ONE_BASED) - 1] = joints18[:, :17]
    return out


def _folders(split_subjects, count):
    out = []
    n = len(split_subjects)
    for i in range(count):
        subject = split_subjects[i % n]
        action = 2 + (i // n) % 15
        subaction = 1 + (i // (n * 15)) % 2
        out.append((subject, action, subaction, 1 + i % 4))
    return out


def generate(root: str, *, train_folders: int = DEFAULTS["train_folders"],
             frames_per_folder: int = DEFAULTS["frames_per_folder"], valid_folders: int = DEFAULTS["valid_folders"],
             valid_frames_per_folder: int = DEFAULTS["valid_frames_per_folder"],
             image_size: int = DEFAULTS["image_size"], seed: int = DEFAULTS["seed"], jpeg_quality: int = 90,
             damping: float = 0.6, force: bool = False, log=print) -> dict:
    """Writes the synthetic set under ``root/hm36`` (layout in the module docstring).

    Idempotent: returns the stored parameters at once when ``root/hm36/synthetic.json`` matches
    the arguments (and ``force`` is False). Otherwise the set is rewritten: the outputs of an
    earlier run (sequence folders, cache pickles; see :func:`remove_generated_outputs`) are deleted
    first, so no stale cache or folder of other parameters stays behind. A ``root/hm36`` holding
    Human3.6M data *without* the generator's marker is never touched (DataError). Converted shards
    under ``root/records`` need no cleaning: the converter notices the changed cache (hash) and
    rewrites them. Deterministic: the same arguments give byte-identical files. Returns a summary
    dict (parameters, counts, paths).
    """
    params = dict(version=GENERATOR_VERSION, train_folders=train_folders, frames_per_folder=frames_per_folder,
                  valid_folders=valid_folders, valid_frames_per_folder=valid_frames_per_folder,
                  image_size=image_size, seed=seed, jpeg_quality=jpeg_quality, damping=damping)
    for key in ("train_folders", "frames_per_folder", "valid_folders", "valid_frames_per_folder"):
        if params[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {params[key]}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE} px, got {image_size}")
    hm36 = os.path.join(os.path.abspath(root), "hm36")
    marker = os.path.join(hm36, MARKER_FILE)
    caches = {
        "train": os.path.join(hm36, h36m_layout.cache_file_name("train", frames_per_folder)),
        "validmin": os.path.join(hm36, h36m_layout.cache_file_name("validmin", valid_frames_per_folder)),
    }
    stored = _read_marker(marker)
    if not force and stored is not None and stored.get("complete", True) and stored.get("params") == params \
            and all(os.path.exists(p) for p in caches.values()):
        log(f"synthetic Human3.6M already in {hm36}")
        return stored
    t0 = time.perf_counter()
    if stored is None:
        _refuse_foreign_data(hm36)
    os.makedirs(hm36, exist_ok=True)
    # mark the folder as ours *before* writing anything, so an interrupted run is cleaned up next time
    records.write_json(marker, {"params": params, "complete": False})
    removed = remove_generated_outputs(hm36)
    if removed:
        log(f"removed {len(removed)} outputs of an earlier synthetic set in {hm36}")
    cameras = make_cameras(seed, image_size)
    splits = {"train": (_folders(h36m_layout.TRAIN_SUBJECTS, train_folders), frames_per_folder),
              "validmin": (_folders(h36m_layout.VALID_SUBJECTS, valid_folders), valid_frames_per_folder)}
    from kinpose_jax import kinematics

    tree = kinematics.presets.h36m18()
    jobs, angles, scales, floor = [], [], [], []
    for split, (folders, frames) in splits.items():
        for subject, action, subaction, camera_id in folders:
            rng = np.random.default_rng([seed, subject, action, subaction])  # the "mocap" of this sequence
            a, xy = sample_pose_params(rng, frames, tree, damping)
            jobs.append((split, h36m_layout.folder_name(subject, action, subaction, camera_id), camera_id, subject))
            angles.append(a)
            floor.append(xy)
            scales.append(np.full(frames, subject_scale(seed, subject)))
    world = poses_to_world(tree, np.concatenate(angles), np.concatenate(scales), np.concatenate(floor))
    cache_records: dict[str, list] = {split: [] for split in splits}
    start = 0
    for (split, folder, camera_id, subject), a in zip(jobs, angles):
        joints = world[start:start + len(a)]
        start += len(a)
        cache_records[split] += _write_folder(hm36, folder, cameras[camera_id - 1], joints,
                                              subject_scale(seed, subject), params)
    counts = {}
    for split, recs in cache_records.items():
        h36m_cache.write_cache(caches[split], recs)
        counts[split] = len(recs)
    summary = {"params": params, "counts": counts, "caches": caches, "root": hm36, "complete": True,
               "seconds": round(time.perf_counter() - t0, 2)}
    records.write_json(marker, summary)
    log(f"synthetic Human3.6M written to {hm36}: {counts} frames in {summary['seconds']} s")
    return summary


MARKER_FILE = "synthetic.json"


def _read_marker(marker: str) -> dict | None:
    """The generator's ``synthetic.json`` (None if absent); DataError if unreadable."""
    if not os.path.exists(marker):
        return None
    try:
        with open(marker) as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{marker} exists but is not the synthetic generator's JSON marker ({err}); remove it "
                        f"yourself if the folder holds only a synthetic set") from err
    if not isinstance(stored, dict) or "params" not in stored:
        raise DataError(f"{marker} is not the synthetic generator's marker (no 'params'); refusing to touch "
                        f"{os.path.dirname(marker)}")
    return stored


def _refuse_foreign_data(hm36: str) -> None:
    """DataError if ``hm36`` (without a generator marker) already holds Human3.6M-layout data:
    it may be a user's real dataset, which the generator must never overwrite or delete."""
    if not os.path.isdir(hm36):
        return
    found = sorted(n for n in os.listdir(hm36) if n in ("annot", "images") or re.match(r"^HM36_.*_cache$", n))
    if found:
        raise DataError(f"{hm36} already holds {found} but was not written by the synthetic generator (no "
                        f"{MARKER_FILE}); refusing to overwrite it: pass another root (e.g. data/synthetic)")


def remove_generated_outputs(hm36: str) -> list[str]:
    """Deletes what :func:`generate` writes under ``hm36`` — the sequence folders
    ``annot/<s_SS_act_AA_subact_BB_ca_CC>`` and ``images/<same>``, and the train/validmin cache
    pickles in ``HM36_<set>_cache/`` — and then those container folders if left empty. Nothing
    else is touched (other files stay). Only call it on a folder holding the generator's marker.
    Returns the removed paths."""
    if not os.path.exists(os.path.join(hm36, MARKER_FILE)):
        raise DataError(f"{hm36} has no {MARKER_FILE}: not a synthetic set, nothing removed")
    removed = []
    for sub in ("annot", "images"):
        folder = os.path.join(hm36, sub)
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if os.path.isdir(path) and not os.path.islink(path) and h36m_layout.is_folder_name(name):
                    shutil.rmtree(path)
                    removed.append(path)
    for image_set in ("train", "validmin"):
        folder = os.path.join(hm36, f"HM36_{image_set}_cache")
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                path = os.path.join(folder, name)
                if h36m_layout.is_cache_file_name(name, image_set, partial=True) and os.path.isfile(path):
                    os.remove(path)
                    removed.append(path)
    for sub in ("annot", "images", "HM36_train_cache", "HM36_validmin_cache"):
        folder = os.path.join(hm36, sub)
        if os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
    return removed


def subject_scale(seed: int, subject: int) -> float:
    """Bone-length scale of a synthetic subject ~ N(1, 0.05), clipped to [0.85, 1.15]."""
    return float(np.clip(np.random.default_rng([seed, 104729, subject]).normal(1.0, 0.05), 0.85, 1.15))


def _write_folder(hm36: str, folder: str, camera: render.Camera, joints: np.ndarray, scale: float,
                  params: dict) -> list[dict]:
    """Writes one sequence folder (annotation + images) for world joints [F, 18, 3]; returns its
    cache records."""
    seed = params["seed"]
    frames = len(joints)
    meta = matlab_meta.MetaSequence(
        image_size=camera.image_size, rotation=camera.rotation, position=camera.position, focal=camera.focal,
        center=camera.center, radial=np.zeros(3), tangential=np.zeros(2),
        joint_ids=np.asarray(matlab_meta.H36M_32_TO_17_ONE_BASED), joints_world=_mocap32(joints))
    annot_dir = os.path.join(hm36, "annot", folder)
    os.makedirs(annot_dir, exist_ok=True)
    meta_path = os.path.join(annot_dir, "matlab_meta.txt")
    with open(meta_path, "w") as f:
        f.write(matlab_meta.format_matlab_meta(meta))
    parsed = matlab_meta.parse_matlab_meta(meta_path)  # labels come from the file, as for real data
    image_dir = os.path.join(hm36, "images", folder)
    os.makedirs(image_dir, exist_ok=True)
    view_rng = np.random.default_rng([seed, *h36m_layout.parse_folder_name(folder)])  # backdrop + pixel noise
    backdrop = render.background(view_rng, camera)
    records = []
    world18 = np.concatenate([parsed.joints_world[:, parsed.joint_ids - 1],
                              parsed.joints_world[:, parsed.joint_ids[[11, 14]] - 1].mean(axis=1, keepdims=True)], 1)
    for frame in range(frames):
        noise = view_rng.standard_normal(backdrop.shape, dtype=np.float32) * 3.0
        noisy = np.clip(backdrop + noise, 0, 255).astype(np.uint8)
        image = render.render_person(noisy, world18[frame], camera, scale, with_maps=False)[0]
        name = h36m_layout.image_name(folder, frame)
        path = os.path.join(image_dir, name)
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, params["jpeg_quality"]])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {path}")
        with open(path, "wb") as f:
            f.write(buf.tobytes())
        records.append(matlab_meta.meta_frame_record(parsed, frame, path))
    return records


def render_frame_maps(root: str, folder: str, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Re-renders frame ``frame`` of ``folder`` from its ``matlab_meta.txt`` (for checks):
    returns (image without noise, part map [H, W], z-buffer [H, W] mm) of the person drawn on
    a black backdrop."""
    hm36 = os.path.join(root, "hm36")
    meta = matlab_meta.parse_matlab_meta(os.path.join(hm36, "annot", folder, "matlab_meta.txt"))
    with open(os.path.join(hm36, MARKER_FILE)) as f:
        seed = json.load(f)["params"]["seed"]
    subject = h36m_layout.parse_folder_name(folder)[0]
    w, h = meta.image_size
    camera = render.Camera(meta.rotation, meta.position, meta.focal, meta.center, (w, h))
    world17 = meta.joints_world[frame, meta.joint_ids - 1]
    world = np.concatenate([world17, world17[[11, 14]].mean(0, keepdims=True)], 0)
    return render.render_person(np.zeros((h, w, 3), np.uint8), world, camera, subject_scale(seed, subject))
