"""The original's on-disk formats (docs/DESIGN.md#h36m-on-disk): cache pickles, ``matlab_meta.txt``, sequence folder names,
image paths — and validation of every record read from them.

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

import dataclasses
import os
import pickle
import re
from typing import Any, Iterable, Sequence

import numpy as np

from kinpose_jax import skeleton
from kinpose_jax.data import DataError

# ---------------------------------------------------------------------------------------- constants
H36M_CACHE_KEYS: tuple[str, ...] = (
    "image", "center_x", "center_y", "width", "height", "flip_pairs", "parent_ids", "joints_3d",
    "joints_3d_vis", "joints_3d_cam", "pelvis", "fl", "c_p", "bone_len",
)
MPII_CACHE_KEYS: tuple[str, ...] = (
    "image", "center_x", "center_y", "width", "height", "flip_pairs", "joints_3d", "joints_3d_vis",
)
#: Subjects of the Human3.6M splits (docs/DESIGN.md#h36m-on-disk).
TRAIN_SUBJECTS: tuple[int, ...] = (1, 5, 6, 7, 8)
VALID_SUBJECTS: tuple[int, ...] = (9, 11)
#: Frames sampled per folder by the original's cache sets (-1 = every frame).
SET_SAMPLES: dict[str, int] = {"train": 200, "validmin": 10, "valid": 40, "trainfull": -1, "validfull": -1}
BOX_MM = skeleton.BOX_MM
#: The 17 of Human3.6M's 32 mocap joints used by the original (one-based, H36M-17 order).
H36M_32_TO_17_ONE_BASED: tuple[int, ...] = (1, 2, 3, 4, 7, 8, 9, 13, 14, 15, 16, 18, 19, 20, 26, 27, 28)

_FOLDER_RE = re.compile(r"^s_(\d+)_act_(\d+)_subact_(\d+)_ca_(\d+)$")
_IMAGE_RE = re.compile(r"^(s_\d+_act_\d+_subact_\d+_ca_\d+)_(\d+)\.jpg$")
#: Human3.6M action ids (the ``act_AA`` of a folder name) and their names as papers print them.
ACTION_NAMES: dict[int, str] = {
    2: "Directions", 3: "Discussion", 4: "Eating", 5: "Greeting", 6: "Phoning", 7: "Posing", 8: "Purchases",
    9: "Sitting", 10: "SittingDown", 11: "Smoking", 12: "Photo", 13: "Waiting", 14: "Walking", 15: "WalkDog",
    16: "WalkTogether",
}


# ---------------------------------------------------------------------------------------- names
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


# ---------------------------------------------------------------------------------------- caches
class _CacheUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays/scalars (no code runs), and maps
    numpy 1.x module paths (``numpy.core``) onto numpy 2's (``numpy._core``)."""

    _ALLOWED = {
        ("builtins", "list"), ("builtins", "dict"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"), ("builtins", "slice"),
        ("collections", "OrderedDict"), ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode"), ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str):
        module = {"numpy.core.multiarray": "numpy._core.multiarray", "numpy.core.numeric": "numpy._core.numeric",
                  "__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a cache holds only lists, dicts "
                                         f"and numpy arrays)")
        return super().find_class(module, name)


def load_cache(path: str) -> list[dict]:
    """Loads a cache of the original: a pickled list of dicts (docs/DESIGN.md#cache-format), including caches written by
    Python 2.7/3.6 with numpy 1.x. Raises DataError naming the file if it is missing, not a
    pickle, not a list of dicts, or empty."""
    data, errors = None, []
    try:
        with open(path, "rb") as f:
            for encoding in ("ASCII", "latin1"):  # latin1: Python 2 pickles of numpy arrays
                f.seek(0)
                try:
                    data = _CacheUnpickler(f, encoding=encoding).load()
                    break
                except UnicodeDecodeError as err:
                    errors.append(err)
                except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
                    raise DataError(f"cache {path} is not a readable pickle: {type(err).__name__}: {err}") from err
    except OSError as err:
        raise DataError(f"cannot read cache {path}: {err}") from err
    if data is None:
        raise DataError(f"cache {path} could not be decoded: {errors[-1]}")
    if not isinstance(data, (list, tuple)):
        raise DataError(f"cache {path} holds a {type(data).__name__}, expected a list of dicts (one per frame)")
    if not data:
        raise DataError(f"cache {path} holds no records (empty list)")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"cache {path} record {i}: a {type(rec).__name__}, expected a dict")
    return list(data)


# ---------------------------------------------------------------------------------------- validation
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
        err = np.abs(project(rec["joints_cam"], rec["fl"], rec["c_p"]) - rec["joints_img"][:, :2])
        joint = int(np.argmax(err.max(axis=1)))
        if err[joint].max() > max_reprojection_px:
            raise DataError(f"{where} field 'joints_3d': joint {joint} is {err[joint].max():.1f} px from the "
                            f"projection "
                            f"of 'joints_3d_cam' with the record's fl {rec['fl'].tolist()} and c_p "
                            f"{rec['c_p'].tolist()} (limit {max_reprojection_px:g} px, option max_reprojection_px): "
                            f"the labels contradict the camera")


# ---------------------------------------------------------------------------------------- images
# Markers without a length field: TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}
#: Inside entropy-coded data, the first FF followed by a byte other than 00 (stuffing), D0-D7
#: (restart markers) or FF (fill) starts the next segment.
_SCAN_END = re.compile(rb"\xff(?=[^\x00\xd0-\xd7\xff])")


def jpeg_is_complete(data: bytes) -> bool:
    """Whether JPEG ``data`` holds a complete image: walking the marker segments from SOI (skipping
    each segment by its length, so an EXIF thumbnail inside APP1 is never mistaken for the image),
    every scan (SOS) must be followed by further segments and finally an end-of-image marker
    (EOI, ``FFD9``). Bytes after that EOI (trailing junk, padding) are allowed. A file cut
    anywhere before its final EOI is incomplete."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return False
    i = 2
    while i < n:
        if data[i] != 0xFF:
            return False  # not at a marker: corrupt structure
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return False
        marker = data[i]
        i += 1
        if marker == 0xD9:
            return True
        if marker in _STANDALONE:
            continue
        if i + 2 > n:
            return False
        length = (data[i] << 8) | data[i + 1]
        if length < 2 or i + length > n:
            return False
        i += length
        if marker == 0xDA:  # entropy-coded data runs to the next marker that is not FF00 / RSTn / fill
            m = _SCAN_END.search(data, i)
            if m is None:
                return False
            i = m.start()
    return False


def check_image_bytes(data: bytes, where: str) -> tuple[int, int]:
    """Checks that ``data`` is a complete, decodable colour image; returns (height, width).

    JPEG data must be complete (:func:`jpeg_is_complete`: an end-of-image marker after the last
    scan; trailing bytes after it are fine). A truncated file still half-decodes in OpenCV, so
    decoding alone does not catch it. DataError names ``where`` otherwise."""
    import cv2

    if not data:
        raise DataError(f"{where}: empty image file")
    if data[:2] == b"\xff\xd8" and not jpeg_is_complete(data):
        raise DataError(f"{where}: JPEG data is truncated (no end-of-image marker after the last scan; "
                        f"{len(data)} bytes)")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise DataError(f"{where}: image data cannot be decoded ({len(data)} bytes, starts {data[:4]!r})")
    return int(img.shape[0]), int(img.shape[1])


# ---------------------------------------------------------------------------------------- matlab_meta
@dataclasses.dataclass(frozen=True)
class MetaSequence:
    """One parsed ``matlab_meta.txt`` (docs/DESIGN.md#matlab-meta).

    Attributes:
      image_size: (W, H) px.
      rotation: [3, 3] world -> camera rotation R (``X_cam = R (X_world - T)``), i.e. the file's
        nine numbers read row-major and transposed.
      position: [3] camera position T, world mm.
      focal: [2] fx, fy px. center: [2] cx, cy px. radial: [3] k1..k3. tangential: [2] p1, p2.
      joint_ids: [17] one-based indices into the 32 mocap joints.
      joints_world: [F, 32, 3] world mm, one row per frame.
    """

    image_size: tuple[int, int]
    rotation: np.ndarray
    position: np.ndarray
    focal: np.ndarray
    center: np.ndarray
    radial: np.ndarray
    tangential: np.ndarray
    joint_ids: np.ndarray
    joints_world: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.joints_world.shape[0])


#: Tags of header lines 2-9 (one-based) as this project writes them; a line carrying another of
#: these tags where one belongs is a missing or misplaced header line. Other tags are not checked.
HEADER_TAGS: tuple[str, ...] = ("img_size", "R", "T", "f", "c", "k", "p", "joint_ids")


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _numbers(line: str, count: int, path: str, lineno: int, what: str, tagged: bool = True,
             tag: str | None = None) -> np.ndarray:
    """The ``count`` numbers of one ``matlab_meta.txt`` line: exactly ``tag n_1 ... n_count``
    (``tagged``) or ``n_1 ... n_count``; DataError naming the file, the (one-based) line, its tag,
    and the expected vs found field count otherwise — extra numbers are never silently dropped.
    ``tag``: the :data:`HEADER_TAGS` entry of this header line (another known tag is refused)."""
    tokens = line.split()
    found_tag = tokens[0] if tagged and tokens and not _is_number(tokens[0]) else None
    if tag is not None and found_tag in HEADER_TAGS and found_tag != tag:
        raise DataError(f"{path} line {lineno + 1} has tag {found_tag!r} where the {what} line (tag {tag!r}) "
                        f"belongs: a header line is missing or out of order")
    expected = count + int(tagged)
    label = f"{path} line {lineno + 1} ({what})"
    on_tag = f" [line tag {found_tag!r}]" if found_tag else ""
    if len(tokens) != expected:
        layout = f"a tag and {count} numbers" if tagged else f"{count} number{'s' if count > 1 else ''}"
        hint = "; is a header line missing or out of order?" if tag is not None else ""
        raise DataError(f"{label}: found {len(tokens)} fields, expected {expected} ({layout}){on_tag}{hint}")
    if tagged and found_tag is None:
        raise DataError(f"{label}: starts with the number {tokens[0]!r} where a tag belongs")
    try:
        vals = np.asarray([float(t) for t in tokens[int(tagged):]], dtype=np.float64)
    except ValueError as err:
        raise DataError(f"{label}: expected {count} numbers after the tag: {err}{on_tag}") from err
    if not np.all(np.isfinite(vals)):
        raise DataError(f"{label}: non-finite values{on_tag}")
    return vals


def _numbered_lines(path: str, limit: int | None = None) -> list[tuple[int, str]]:
    """The non-empty lines of ``path`` with their 0-based line numbers (the first ``limit``)."""
    out = []
    try:
        with open(path) as f:
            for lineno, line in enumerate(f):
                if line.strip():
                    out.append((lineno, line.rstrip("\n")))
                    if limit is not None and len(out) == limit:
                        break
    except OSError as err:
        raise DataError(f"cannot read {path}: {err}") from err
    if len(out) < 9:
        raise DataError(f"{path}: {len(out)} non-empty lines, expected at least 9 header lines")
    return out


def _parse_header(numbered: list[tuple[int, str]], path: str) -> dict:
    """Lines 1-9 of a ``matlab_meta.txt``: frame count, image size, camera (rotation as read,
    transposed), distortion, joint indices. DataError names the file and line at fault."""

    def field(k: int, count: int, what: str, tagged: bool = True) -> np.ndarray:
        lineno, line = numbered[k]
        return _numbers(line, count, path, lineno, what, tagged, tag=HEADER_TAGS[k - 1] if tagged else None)

    count = field(0, 1, "frame count", tagged=False)[0]
    if count != int(count) or count < 0:
        raise DataError(f"{path} line {numbered[0][0] + 1} (frame count): {count} is not a non-negative integer")
    # in line order, so that the first line at fault is the one named
    size = field(1, 2, "image size W H")
    rot = field(2, 9, "rotation").reshape(3, 3).T
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-4):
        raise DataError(f"{path} line {numbered[2][0] + 1} (rotation): not a rotation matrix")
    position, focal = field(3, 3, "camera position"), field(4, 2, "focal length")
    center = field(5, 2, "principal point")
    radial, tangential = field(6, 3, "radial distortion"), field(7, 2, "tangential distortion")
    ids = field(8, 17, "joint indices")
    if np.any(ids != np.round(ids)) or np.any(ids < 1) or np.any(ids > 32):
        raise DataError(f"{path} line {numbered[8][0] + 1} (joint indices): expected 17 one-based indices in 1..32")
    return dict(count=int(count), image_size=(int(size[0]), int(size[1])), rotation=rot, position=position,
                focal=focal, center=center, radial=radial, tangential=tangential, joint_ids=ids.astype(np.int64))


def parse_matlab_meta(path: str) -> MetaSequence:
    """Parses ``annot/<folder>/matlab_meta.txt`` (docs/DESIGN.md#matlab-meta). Every line must hold exactly its
    fields (line 1 the frame count alone, then a tag and 2, 9, 3, 2, 2, 3, 2, 17 numbers, then a
    tag and 96 numbers per frame); blank lines are ignored. DataError names the file and the line
    (as numbered in the file) at fault."""
    numbered = _numbered_lines(path)
    header = _parse_header(numbered, path)
    count = header.pop("count")
    num_frame_lines = len(numbered) - 9
    if num_frame_lines != count:
        raise DataError(f"{path}: {num_frame_lines} frame lines, but line {numbered[0][0] + 1} announces {count} "
                        f"frames")
    joints = (np.stack([_numbers(numbered[9 + k][1], 96, path, numbered[9 + k][0], f"frame {k} joints")
                        for k in range(count)]) if count else np.zeros((0, 96)))
    return MetaSequence(joints_world=joints.reshape(-1, 32, 3), **header)


def read_meta_camera(path: str) -> dict:
    """The camera of a ``matlab_meta.txt`` from its 9 header lines only (fast for long
    sequences): ``rotation`` [3][3] world -> camera (``X_cam = R (X_world - T)``), ``position``
    [3] world mm, ``focal`` [2], ``center`` [2] px, ``image_size`` [2] (W, H) — as lists.
    DataError as :func:`parse_matlab_meta` for a bad header."""
    h = _parse_header(_numbered_lines(path, limit=9), path)
    return {"rotation": h["rotation"].tolist(), "position": h["position"].tolist(), "focal": h["focal"].tolist(),
            "center": h["center"].tolist(), "image_size": list(h["image_size"])}


def format_matlab_meta(meta: MetaSequence) -> str:
    """Writes ``meta`` in the text layout :func:`parse_matlab_meta` reads (rotation stored
    transposed, as the real files do; %.12f for the rotation, %.6f elsewhere)."""
    f6 = lambda vals: " ".join(f"{v:.6f}" for v in np.asarray(vals).reshape(-1))  # noqa: E731
    f12 = lambda vals: " ".join(f"{v:.12f}" for v in np.asarray(vals).reshape(-1))  # noqa: E731
    values = [f"{meta.image_size[0]} {meta.image_size[1]}", f12(np.asarray(meta.rotation).T), f6(meta.position),
              f6(meta.focal), f6(meta.center), f6(meta.radial), f6(meta.tangential),
              " ".join(str(int(i)) for i in meta.joint_ids)]
    lines = [f"{meta.num_frames}"] + [f"{tag} {v}" for tag, v in zip(HEADER_TAGS, values)]
    lines += [f"frame_{k + 1} {f6(j)}" for k, j in enumerate(np.asarray(meta.joints_world))]
    return "\n".join(lines) + "\n"


def sample_frames(num_frames: int, sample: int) -> np.ndarray:
    """Zero-based frame indices of a cache set taking ``sample`` frames per folder (evenly
    spaced, first frame included; -1 or sample >= num_frames: every frame)."""
    if sample < 0 or sample >= num_frames:
        return np.arange(num_frames)
    if sample == 0:
        return np.zeros(0, np.int64)
    return (np.arange(sample) * num_frames) // sample


def project(points_cam: np.ndarray, focal: np.ndarray, center: np.ndarray) -> np.ndarray:
    """Pinhole projection without distortion: [..., 3] camera mm -> [..., 2] px."""
    return points_cam[..., :2] / points_cam[..., 2:3] * focal + center


def meta_frame_record(meta: MetaSequence, frame: int, image_path: str) -> dict:
    """The cache record (docs/DESIGN.md#cache-format keys, float64) of zero-based ``frame`` of a parsed sequence:
    17 selected joints + thorax (mean of shoulders), world -> camera, projection, 2000 mm box."""
    world17 = meta.joints_world[frame][meta.joint_ids - 1]
    world = np.concatenate([world17, world17[[11, 14]].mean(axis=0, keepdims=True)], axis=0)
    cam = (meta.rotation @ (world - meta.position).T).T
    pelvis = cam[0].copy()
    uv = project(cam, meta.focal, meta.center)
    joints_img = np.concatenate([uv, (cam[:, 2] - pelvis[2])[:, None]], axis=1)
    half = BOX_MM / 2
    corners = project(np.stack([pelvis + [-half, -half, 0.0], pelvis + [half, half, 0.0]]), meta.focal, meta.center)
    bone_len = sum(float(np.linalg.norm(cam[a] - cam[b])) for a, b in skeleton.H36M_BONES)
    return {
        "image": image_path,
        "center_x": float(corners[:, 0].mean()), "center_y": float(corners[:, 1].mean()),
        "width": float(corners[1, 0] - corners[0, 0]), "height": float(corners[1, 1] - corners[0, 1]),
        "flip_pairs": np.asarray(skeleton.H36M_FLIP_PAIRS, dtype=np.int64),
        "parent_ids": np.asarray(skeleton.H36M_PARENT_IDS, dtype=np.int64),
        "joints_3d": joints_img, "joints_3d_vis": np.ones((skeleton.H36M_NUM_JOINTS, 3)),
        "joints_3d_cam": cam, "pelvis": pelvis, "fl": meta.focal.copy(), "c_p": meta.center.copy(),
        "bone_len": bone_len,
    }


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


def records_from_annotations(hm36_dir: str, subjects: Iterable[int], sample: int) -> list[dict]:
    """Builds the cache records of a set from ``hm36_dir/annot/*/matlab_meta.txt`` (when no cache
    exists): ``sample`` frames per folder of the given subjects. Image paths are
    ``images/<folder>/<folder>_%06d.jpg`` relative to ``hm36_dir``."""
    annot = os.path.join(hm36_dir, "annot")
    folders = set_folders(annot, subjects)
    if not folders:
        raise DataError(f"no sequence folders of subjects {sorted(set(subjects))} under {annot}")
    records = []
    for folder in folders:
        meta = parse_matlab_meta(os.path.join(annot, folder, "matlab_meta.txt"))
        for frame in sample_frames(meta.num_frames, sample):
            path = os.path.join("images", folder, image_name(folder, int(frame)))
            records.append(meta_frame_record(meta, int(frame), path))
    return records


def subjects_of_set(image_set: str) -> tuple[int, ...]:
    """Subjects of one of the original's cache set names (``train*`` -> 1,5,6,7,8; ``valid*`` -> 9,11)."""
    if image_set.startswith("train"):
        return TRAIN_SUBJECTS
    if image_set.startswith("valid"):
        return VALID_SUBJECTS
    raise DataError(f"unknown Human3.6M set {image_set!r}: expected train*, valid* (e.g. train, validmin)")


def write_cache(path: str, records: list[dict]) -> None:
    """Pickles ``records`` like the original's caches (a list of dicts, protocol 3), atomically."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(records, f, protocol=3)
    os.replace(tmp, path)
