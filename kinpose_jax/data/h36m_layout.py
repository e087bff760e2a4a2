"""The original's Human3.6M folder layout (docs/DESIGN.md#h36m-on-disk): splits, cache set names, sequence
folder and image file names, cache file names, and re-rooting image paths written on another machine."""

from __future__ import annotations

import os
import re
from typing import Iterable

import numpy as np

from kinpose_jax.data import DataError


#: Subjects of the Human3.6M splits (docs/DESIGN.md#h36m-on-disk).
TRAIN_SUBJECTS: tuple[int, ...] = (1, 5, 6, 7, 8)
VALID_SUBJECTS: tuple[int, ...] = (9, 11)
#: Frames sampled per folder by the original's cache sets (-1 = every frame).
SET_SAMPLES: dict[str, int] = {"train": 200, "validmin": 10, "valid": 40, "trainfull": -1, "validfull": -1}
_FOLDER_RE = re.compile(r"^s_(\d+)_act_(\d+)_subact_(\d+)_ca_(\d+)$")
_IMAGE_RE = re.compile(r"^(s_\d+_act_\d+_subact_\d+_ca_\d+)_(\d+)\.jpg$")
#: Human3.6M action ids (the ``act_AA`` of a folder name) and their names as papers print them.
ACTION_NAMES: dict[int, str] = {
    2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing", 8: "Purchases",
    9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo", 13: "Waiting", 14: "Walking", 15: "WalkDog",
    16: "WalkTogether",
}


def folder_name(subject: int, action: int, subaction: int, camera: int) -> str:
    """``s_SS_act_AA_subact_BB_ca_CC`` (docs/DESIGN.md#h36m-on-disk)."""
    return f"s_{subject:02d}_act_{action:02d}_subact_{subaction:02d}_ca_{camera:02d}"


def parse_folder_name(name: str) -> tuple[int, int, int, int]:
    """(subject, action, subaction, camera) of a sequence folder name; DataError if malformed."""
    m = _FOLDER_RE.match(name)
    if not m:
        raise DataError(f"folder name {name!r} is not of the form s_SS_act_AA_subact_BB_ca_CC")
    return tuple(int(g) for g in m.groups())  # type: ignore[return-value]


def is_folder_name(name: str) -> bool:
    """Whether ``name`` is a sequence folder name ``s_SS_act_AA_subact_BB_ca_CC``."""
    return bool(_FOLDER_RE.match(name))


def image_name(folder: str, frame: int) -> str:
    """Image file name of zero-based ``frame`` in ``folder`` (the file number is frame + 1)."""
    return f"{folder}_{frame + 1:06d}.jpg"


def parse_image_path(path: str) -> tuple[str, int]:
    """(folder, zero-based frame) of ``.../<folder>/<folder>_%06d.jpg`` (inverse of :func:`image_name`);
    DataError if the file name is not of that form."""
    m = _IMAGE_RE.match(os.path.basename(path))
    if not m:
        raise DataError(f"image file name {os.path.basename(path)!r} (of {path!r}) is not of the form "
                        f"s_SS_act_AA_subact_BB_ca_CC_NNNNNN.jpg")
    return m.group(1), int(m.group(2)) - 1


def cache_file_name(image_set: str, sample: int, patch_size: int = 256) -> str:
    """``HM36_<set>_cache/HM36_<set>_w<W>xh<H>_keypoint_db_sample<N>.pkl`` relative to ``hm36/``."""
    return os.path.join(f"HM36_{image_set}_cache",
                        f"HM36_{image_set}_w{patch_size}xh{patch_size}_keypoint_db_sample{sample}.pkl")


def is_cache_file_name(name: str, image_set: str, partial: bool = False) -> bool:
    """Whether ``name`` is a cache pickle of ``image_set`` (``HM36_<set>_w<W>xh<H>_keypoint_db_sample<N>.pkl``;
    with ``partial`` also the ``.pkl.tmp`` of an interrupted write)."""
    tail = r"(\.tmp)?" if partial else ""
    return re.match(rf"^HM36_{re.escape(image_set)}_w\d+xh\d+_keypoint_db_sample-?\d+\.pkl{tail}$", name) is not None


def find_cache(hm36_dir: str, image_set: str) -> str | None:
    """The cache pickle of ``image_set`` under ``hm36_dir`` (None if there is none).

    DataError if several candidates exist (pass the one you mean explicitly)."""
    folder = os.path.join(hm36_dir, f"HM36_{image_set}_cache")
    if not os.path.isdir(folder):
        return None
    found = sorted(f for f in os.listdir(folder) if is_cache_file_name(f, image_set))
    if not found:
        return None
    if len(found) > 1:
        raise DataError(f"several caches for set {image_set!r} in {folder}: {found}; keep only the one to use there "
                        f"(move the others away), or convert one explicitly: python data_prep/convert_h36m.py "
                        f"--sets {image_set} --cache {os.path.join(folder, found[0])}")
    return os.path.join(folder, found[0])


def reroot_image_path(path: str, image_root: str, keep: int) -> str:
    """Re-roots an image path written on another machine onto ``image_root``, keeping its last
    ``keep`` components (2 for Human3.6M ``<folder>/<file>``, 1 for MPII ``<file>``).
    Both ``/`` and ``\\`` separate components. DataError for a ``..`` component or a result
    outside ``image_root``."""
    parts = [p for p in re.split(r"[\\/]+", str(path)) if p]
    if ".." in parts:
        raise DataError(f"image path {path!r} has a '..' component (it could leave its sequence folder); "
                        f"expected .../<folder>/<file>")
    if len(parts) < keep:
        raise DataError(f"image path {path!r} has fewer than {keep} path components")
    out = os.path.join(image_root, *parts[-keep:])
    if os.path.commonpath([os.path.abspath(out), os.path.abspath(image_root)]) != os.path.abspath(image_root):
        raise DataError(f"image path {path!r} re-rooted onto {image_root!r} leaves that folder ({out!r})")
    return out


def sample_frames(num_frames: int, sample: int) -> np.ndarray:
    """Zero-based frame indices of a cache set taking ``sample`` frames per folder (evenly
    spaced, first frame included; -1 or sample >= num_frames: every frame)."""
    if sample < 0 or sample >= num_frames:
        return np.arange(num_frames)
    if sample == 0:
        return np.zeros(0, np.int64)
    return (np.arange(sample) * num_frames) // sample


def set_folders(annot_dir: str, subjects: Iterable[int]) -> list[str]:
    """Sequence folders under ``annot_dir`` whose subject is in ``subjects``, sorted."""
    subjects = set(subjects)
    if not os.path.isdir(annot_dir):
        raise DataError(f"annotation folder {annot_dir} does not exist")
    out = []
    for name in sorted(os.listdir(annot_dir)):
        if os.path.isdir(os.path.join(annot_dir, name)) and _FOLDER_RE.match(name):
            if parse_folder_name(name)[0] in subjects:
                out.append(name)
    return out


def subjects_of_set(image_set: str) -> tuple[int, ...]:
    """Subjects of one of the original's cache set names (``train*`` -> 1,5,6,7,8; ``valid*`` -> 9,11)."""
    if image_set.startswith("train"):
        return TRAIN_SUBJECTS
    if image_set.startswith("valid"):
        return VALID_SUBJECTS
    raise DataError(f"unknown Human3.6M set {image_set!r}: expected train*, valid* (e.g. train, validmin)")
