"""Human3.6M ``annot/<folder>/matlab_meta.txt`` files (docs/DESIGN.md#matlab-meta): parsing, writing, and
building cache records from them when no cache exists."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable

import numpy as np

from kinpose_jax import geometry, skeleton
from kinpose_jax.data import DataError
from kinpose_jax.data.h36m_layout import image_name, sample_frames, set_folders


#: The 17 of Human3.6M's 32 mocap joints used by the original (one-based, H36M-17 order).
H36M_32_TO_17_ONE_BASED: tuple[int, ...] = (1, 2, 3, 4, 7, 8, 9, 13, 14, 15, 16, 18, 19, 20, 26, 27, 28)


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

def meta_frame_record(meta: MetaSequence, frame: int, image_path: str) -> dict:
    """The cache record (docs/DESIGN.md#cache-format keys, float64) of zero-based ``frame`` of a parsed sequence:
    17 selected joints + thorax (mean of shoulders), world -> camera, projection, 2000 mm box."""
    world17 = meta.joints_world[frame][meta.joint_ids - 1]
    world = np.concatenate([world17, world17[[11, 14]].mean(axis=0, keepdims=True)], axis=0)
    cam = geometry.world_to_camera(world, meta.rotation, meta.position)
    pelvis = cam[0].copy()
    uv = geometry.project(cam, meta.focal, meta.center)
    joints_img = np.concatenate([uv, (cam[:, 2] - pelvis[2])[:, None]], axis=1)
    half = skeleton.BOX_MM / 2
    corners = geometry.project(np.stack([pelvis + [-half, -half, 0.0], pelvis + [half, half, 0.0]]), meta.focal, meta.center)
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
