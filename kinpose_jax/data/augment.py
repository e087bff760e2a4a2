"""One training/evaluation sample, exactly as the original makes it (docs/DESIGN.md#training-sample).

Pipeline for one record, on the host (numpy + OpenCV, in the grain workers): decode (BGR) ->
augmentation draw -> optional horizontal flip of the image and labels -> affine warp of the
(scaled, rotated) box onto the patch (bilinear) -> BGR to RGB, kept uint8 -> joints through the
same affine, depth ``z / (box_mm * s) * pw`` -> normalized targets ``x/pw - 0.5, y/ph - 0.5, z/pw``.
On the device, inside the jitted step (:func:`normalize_pixels`, jax.numpy): per-channel gain,
clip to [0, 255] -> ``(x - mean) / std``. A uint8 patch is 4x smaller than the float32 one in
the workers' shared memory and on the host-to-device copy.

Units: image/patch coordinates in pixels, depth in mm until normalized, angles in degrees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import cv2
import numpy as np

from kinpose_jax import geometry
from kinpose_jax.skeleton import BOX_MM


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation parameters (docs/DESIGN.md#augmentation), the ``config.data`` fields of the
    same names (configs/default.py holds their defaults, the original's): :meth:`from_config`."""

    scale_factor: float  # s = 1 + scale_factor * clip(N(0,1), -1, 1)
    rotation_factor: float  # degrees: r = rotation_factor * clip(N(0,1), -2, 2)
    rotation_prob: float  # probability that r is applied (else 0)
    flip_prob: float  # probability of a horizontal flip
    color_factor: float  # per-channel gain ~ U(1 - f, 1 + f)

    @classmethod
    def from_config(cls, data_config, **overrides) -> AugmentConfig:
        """From ``config.data`` (a ConfigDict or mapping with every field), ``overrides`` winning."""
        values = {f.name: float(data_config[f.name]) for f in dataclasses.fields(cls)}
        return cls(**dict(values, **overrides))


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One draw: scale s, rotation r (degrees), flip, RGB gains [3]."""

    scale: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    gains: tuple[float, float, float] = (1.0, 1.0, 1.0)


NO_AUGMENTATION = Augmentation()


def draw_augmentation(rng: np.random.Generator, cfg: AugmentConfig) -> Augmentation:
    """Draws one augmentation in the original's order: scale normal, rotation normal, rotation coin,
    flip coin, three gains."""
    scale = 1.0 + cfg.scale_factor * float(np.clip(rng.standard_normal(), -1.0, 1.0))
    rot = cfg.rotation_factor * float(np.clip(rng.standard_normal(), -2.0, 2.0))
    if rng.random() >= cfg.rotation_prob:
        rot = 0.0
    flip = bool(rng.random() < cfg.flip_prob)
    gains = tuple(float(g) for g in rng.uniform(1.0 - cfg.color_factor, 1.0 + cfg.color_factor, 3))
    return Augmentation(scale, rot, flip, gains)  # type: ignore[arg-type]


def record_rng(seed: int, epoch: int, dataset_id: int, index: int, draw: int = 0) -> np.random.Generator:
    """The per-record generator: a pure function of (seed, epoch, dataset, record index, draw)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, dataset_id, index, draw])))


def flip_joints(joints: np.ndarray, vis: np.ndarray, image_width: int,
                flip_pairs: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip of image-space joints [J, 3] (:func:`kinpose_jax.geometry.flip_horizontal`:
    ``u <- W - u - 1`` and left/right swap), weights swapped alike. Returns new float64 arrays."""
    joints = geometry.flip_horizontal(np.asarray(joints, np.float64), image_width, flip_pairs)
    vis = np.asarray(vis, np.float64)[geometry.flip_permutation(len(joints), flip_pairs)]
    return joints, vis


def flip_box_center(center: np.ndarray, image_width: int) -> np.ndarray:
    """Box centre [2] px after a horizontal flip (:func:`kinpose_jax.geometry.flip_horizontal`)."""
    return geometry.flip_horizontal(np.asarray(center, np.float64), image_width)


def warp_patch(image_bgr: np.ndarray, affine: np.ndarray, patch_size: tuple[int, int]) -> np.ndarray:
    """Bilinear warp (OpenCV, constant black border) of an HxWx3 uint8 image -> [ph, pw, 3] uint8."""
    return cv2.warpAffine(image_bgr, affine, (int(patch_size[0]), int(patch_size[1])), flags=cv2.INTER_LINEAR)


def normalize_pixels(images, gains=None):
    """uint8 RGB patches [..., H, W, 3] (0..255) -> float32 ``(clip(x * gain, 0, 255) - mean) / std``
    (docs/DESIGN.md#pixel-normalization), in jax.numpy (runs inside the jitted step / predict).

    gains: per-channel colour gains [..., 3] (one row per image; None = no gain). The network's
    only pixel normalization: the pipelines deliver uint8 ``image`` and float32 ``gains``.
    """
    import jax.numpy as jnp

    if jnp.issubdtype(images.dtype, jnp.floating):
        raise TypeError(f"normalize_pixels expects uint8 pixel values 0..255 (the pipelines' 'image'), got "
                        f"{images.dtype}: already normalized?")
    x = jnp.asarray(images, jnp.float32)
    if gains is not None:
        x = jnp.clip(x * jnp.asarray(gains, jnp.float32)[..., None, None, :], 0.0, 255.0)
    return (x - jnp.asarray(geometry.PIXEL_MEAN)) / jnp.asarray(geometry.PIXEL_STD)


@dataclasses.dataclass(frozen=True)
class Crop:
    """Where a stored crop sits in its image: crop px = ``scale * (image px - origin + 0.5) - 0.5``
    per axis (pixel centres map to pixel centres, as ``cv2.resize`` samples).

    origin: (x0, y0) integer image px of the crop's first (unresampled) pixel; size: (w, h) of the
    region before resampling, px; scale: (sx, sy) crop px per image px (<= 1: never upsampled)."""

    origin: tuple[int, int]
    size: tuple[int, int]
    scale: tuple[float, float]

    def to_crop(self) -> np.ndarray:
        """[2, 3] affine image px -> crop px."""
        sx, sy = self.scale
        return np.array([[sx, 0.0, sx * (0.5 - self.origin[0]) - 0.5],
                         [0.0, sy, sy * (0.5 - self.origin[1]) - 0.5]])

    def resampled_size(self) -> tuple[int, int]:
        """(w, h) of the stored crop, px."""
        return (int(round(self.size[0] * self.scale[0])), int(round(self.size[1] * self.scale[1])))


def crop_geometry(center: Sequence[float], box_size: Sequence[float], patch_size: tuple[int, int],
                  aug: AugmentConfig, resample: bool = True) -> Crop:
    """The smallest stored crop from which every draw of ``aug`` samples the patch as from the image.

    Region: the box scaled by the largest draw ``1 + scale_factor``, and, when rotations are drawn,
    the circle through its corners (any angle), plus one pixel for bilinear sampling; it is the
    same for the flipped draw (symmetric about the box centre). Resolution: what a scale-1 patch
    samples, ``max(pw / w, ph / h)`` crop px per image px, never above 1 (a zoomed-in draw then
    upsamples by at most ``1 / (1 - scale_factor)``); ``resample=False`` keeps the image's
    resolution (patches then equal the whole image's up to OpenCV's 1/32 px rounding; resampled
    ones are anti-aliased where the direct warp aliases). Parts outside the image are black, as
    the warp's border."""
    w, h = float(box_size[0]), float(box_size[1])
    s_max = 1.0 + aug.scale_factor
    if aug.rotation_factor != 0.0 and aug.rotation_prob > 0.0:
        half = np.full(2, s_max * math.hypot(w, h) / 2.0)
    else:
        half = np.array([s_max * w / 2.0, s_max * h / 2.0])
    c = np.asarray(center, np.float64)
    lo = np.floor(c - half - 1.0).astype(np.int64)
    hi = np.ceil(c + half + 1.0).astype(np.int64) + 1
    size = hi - lo
    k = min(1.0, max(patch_size[0] / w, patch_size[1] / h)) if resample else 1.0
    out = np.maximum(np.round(size * k), 1.0)
    return Crop((int(lo[0]), int(lo[1])), (int(size[0]), int(size[1])),
                (float(out[0] / size[0]), float(out[1] / size[1])))


def cut_crop(image_bgr: np.ndarray, crop: Crop) -> np.ndarray:
    """The stored crop of an HxWx3 uint8 image: the region (black outside the image), area-resampled
    to :meth:`Crop.resampled_size`."""
    (x0, y0), (cw, ch) = crop.origin, crop.size
    height, width = image_bgr.shape[:2]
    region = np.zeros((ch, cw, 3), np.uint8)
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + cw, width), min(y0 + ch, height)
    if xa < xb and ya < yb:
        region[ya - y0:yb - y0, xa - x0:xb - x0] = image_bgr[ya:yb, xa:xb]
    size = crop.resampled_size()
    if size == (cw, ch):
        return region
    return cv2.resize(region, size, interpolation=cv2.INTER_AREA)


def decode_image(data: bytes) -> np.ndarray:
    """JPEG (or any OpenCV format) bytes -> HxWx3 uint8 BGR, like ``cv2.imread`` in the original."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError(f"image data cannot be decoded ({len(data)} bytes)")
    return img


def crop_patch(image_bgr: np.ndarray, center: Sequence[float], box_size: Sequence[float], patch_size: tuple[int, int],
               aug: Augmentation = NO_AUGMENTATION) -> tuple[np.ndarray, np.ndarray]:
    """The network input for one box (no flip: flip the image first): affine warp of the scaled,
    rotated box, BGR -> RGB, gains, normalization (docs/DESIGN.md#patch-affine,
    docs/DESIGN.md#pixel-normalization).

    Returns (patch [ph, pw, 3] float32 normalized RGB, affine [2, 3] float64 image px -> patch px).
    """
    affine = geometry.patch_affine(center, box_size, patch_size, aug.scale, aug.rotation)
    patch = cv2.cvtColor(warp_patch(image_bgr, affine, patch_size), cv2.COLOR_BGR2RGB)
    return np.asarray(normalize_pixels(patch, np.asarray(aug.gains, np.float32))), affine


def make_sample(image_bgr: np.ndarray, center: np.ndarray, box_size: np.ndarray, joints_img: np.ndarray,
                joints_vis: np.ndarray, aug: Augmentation, patch_size: tuple[int, int],
                flip_pairs: Sequence[tuple[int, int]], box_mm: float = BOX_MM, crop: Crop | None = None,
                image_width: int | None = None) -> dict[str, np.ndarray]:
    """docs/DESIGN.md#training-sample for one decoded image.

    Args:
      image_bgr: HxWx3 uint8 (OpenCV channel order): the whole image, or with ``crop`` its stored
        crop (:func:`cut_crop`; then ``image_width`` is the whole image's width, for the flip).
      center: [2] box centre px; box_size: [2] box width, height px.
      joints_img: [J, 3] u px, v px, depth - pelvis depth mm; joints_vis: [J, 3] weights.
      aug: the draw (:data:`NO_AUGMENTATION` for evaluation).
      patch_size: (pw, ph).
    Returns:
      image [ph, pw, 3] uint8 RGB; gains [3] float32 colour gains of ``aug`` (applied on the
      device by :func:`normalize_pixels`); joints [J, 3] float32 normalized targets;
      joints_vis [J, 3] float32 weights; affine [2, 3] float64 (image px -> patch px of the
      *flipped* image when ``aug.flip``).
    """
    center = np.asarray(center, np.float64)
    joints, vis = np.asarray(joints_img, np.float64), np.asarray(joints_vis, np.float64)
    if crop is None:
        width = image_bgr.shape[1]
        if aug.flip:
            image_bgr = cv2.flip(image_bgr, 1)  # mirror (as a numpy [:, ::-1] copy, but much faster)
            center = flip_box_center(center, width)
            joints, vis = flip_joints(joints, vis, width, flip_pairs)
        affine = geometry.patch_affine(center, box_size, patch_size, aug.scale, aug.rotation)
        sample_affine = affine
    else:
        width = int(image_width)
        mirror = np.eye(3)
        if aug.flip:  # the mirror goes into the affine: geometry.flip_horizontal as a matrix
            mirror = np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
            center = flip_box_center(center, width)
            joints, vis = flip_joints(joints, vis, width, flip_pairs)
        affine = geometry.patch_affine(center, box_size, patch_size, aug.scale, aug.rotation)
        from_crop = np.linalg.inv(np.vstack([crop.to_crop(), [0.0, 0.0, 1.0]]))
        sample_affine = (np.vstack([affine, [0.0, 0.0, 1.0]]) @ mirror @ from_crop)[:2]
    patch = cv2.cvtColor(warp_patch(image_bgr, sample_affine, patch_size), cv2.COLOR_BGR2RGB)
    target = geometry.patch_to_normalized(geometry.image_to_patch(joints, affine, aug.scale, patch_size[0], box_mm),
                                          patch_size)
    return {
        "image": patch,
        "gains": np.asarray(aug.gains, np.float32),
        "joints": target.astype(np.float32),
        "joints_vis": vis.astype(np.float32),
        "affine": affine,
    }
