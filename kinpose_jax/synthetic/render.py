"""A tiny painter's-algorithm renderer for the synthetic Human3.6M: a person as shaded capsules
and spheres, one colour per body part, on a textured background with a perspective floor grid.

Left and right limbs share colours on purpose: horizontal-flip augmentation (docs/DESIGN.md#flip) swaps the
left/right *labels* of a mirrored image, which is only consistent if appearance is left/right
symmetric — as for real people. Which side is left is told by geometry instead: a face marker and
a chest marker on the front of the body, feet pointing forward, and depth ordering.

Projection uses OpenCV's ``cv2.projectPoints`` from world coordinates: deliberately not
:func:`kinpose_jax.geometry.project`, so that the data written from the camera-space formulas
(:func:`kinpose_jax.data.matlab_meta.meta_frame_record`) can be checked against the drawn images
(tests/test_data_convert.py, tests/test_geometry.py). Units: world/camera mm, image px.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from kinpose_jax import geometry

# Body parts (index into PALETTE, 0 = background). Colours are BGR.
PART_NAMES = ("background", "torso", "hip_girdle", "thigh", "shin", "foot", "shoulder_girdle", "upper_arm", "forearm",
              "hand", "neck", "head", "face_marker", "chest_marker")
PALETTE = np.array([
    (0, 0, 0), (170, 95, 35), (125, 55, 150), (50, 175, 60), (35, 205, 215), (25, 60, 120), (185, 135, 70),
    (30, 120, 240), (45, 45, 215), (150, 210, 250), (120, 150, 195), (140, 175, 235), (235, 35, 235),
    (250, 250, 250),
], np.float64)
P = {name: i for i, name in enumerate(PART_NAMES)}

# Capsules: (joint a, joint b, radius a mm, radius b mm, part); H36M-18 joint indices (docs/DESIGN.md#joints).
CAPSULES = (
    (0, 7, 115, 105, P["torso"]), (7, 17, 105, 110, P["torso"]), (17, 8, 70, 60, P["neck"]),
    (0, 1, 95, 80, P["hip_girdle"]), (0, 4, 95, 80, P["hip_girdle"]),
    (1, 2, 78, 58, P["thigh"]), (4, 5, 78, 58, P["thigh"]), (2, 3, 55, 42, P["shin"]), (5, 6, 55, 42, P["shin"]),
    (17, 11, 62, 55, P["shoulder_girdle"]), (17, 14, 62, 55, P["shoulder_girdle"]),
    (11, 12, 50, 42, P["upper_arm"]), (14, 15, 50, 42, P["upper_arm"]),
    (12, 13, 40, 33, P["forearm"]), (15, 16, 40, 33, P["forearm"]), (8, 9, 48, 48, P["neck"]),
)
#: Parts whose surface contains each H36M joint (for checking labels against renders).
JOINT_PARTS: tuple[tuple[int, ...], ...] = (
    (P["torso"], P["hip_girdle"]), (P["hip_girdle"], P["thigh"]), (P["thigh"], P["shin"]), (P["shin"], P["foot"]),
    (P["hip_girdle"], P["thigh"]), (P["thigh"], P["shin"]), (P["shin"], P["foot"]), (P["torso"], P["chest_marker"]),
    (P["neck"], P["torso"], P["shoulder_girdle"], P["head"]), (P["neck"], P["head"], P["face_marker"]),
    (P["head"],), (P["shoulder_girdle"], P["upper_arm"]), (P["upper_arm"], P["forearm"]), (P["forearm"], P["hand"]),
    (P["shoulder_girdle"], P["upper_arm"]), (P["upper_arm"], P["forearm"]), (P["forearm"], P["hand"]),
    (P["torso"], P["shoulder_girdle"], P["neck"]),
)

_SHIFT = 4  # sub-pixel bits for OpenCV drawing
_ONE = 1 << _SHIFT


@dataclasses.dataclass(frozen=True)
class Camera:
    """Pinhole camera: ``X_cam = R (X_world - T)``; K from fx, fy, cx, cy (px); no distortion."""

    rotation: np.ndarray  # [3, 3] world -> camera
    position: np.ndarray  # [3] world mm
    focal: np.ndarray  # [2] px
    center: np.ndarray  # [2] px
    image_size: tuple[int, int]  # (W, H)

    @property
    def matrix(self) -> np.ndarray:
        return np.array([[self.focal[0], 0, self.center[0]], [0, self.focal[1], self.center[1]], [0, 0, 1.0]])

    def to_camera(self, world: np.ndarray) -> np.ndarray:
        """[..., 3] world mm -> camera mm (:func:`kinpose_jax.geometry.world_to_camera`)."""
        return geometry.world_to_camera(np.asarray(world), self.rotation, self.position)

    def project(self, world: np.ndarray) -> np.ndarray:
        """[N, 3] world mm -> [N, 2] px with ``cv2.projectPoints``."""
        rvec, _ = cv2.Rodrigues(self.rotation)
        tvec = -self.rotation @ self.position
        pts, _ = cv2.projectPoints(np.asarray(world, np.float64).reshape(-1, 1, 3), rvec, tvec, self.matrix, None)
        return pts.reshape(-1, 2)


def look_at_camera(position: np.ndarray, target: np.ndarray, focal: np.ndarray, center: np.ndarray,
                   image_size: tuple[int, int]) -> Camera:
    """A camera at ``position`` looking at ``target`` with world +z up (image y down)."""
    z = np.asarray(target, np.float64) - position
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return Camera(np.stack([x, y, z]), np.asarray(position, np.float64), np.asarray(focal, np.float64),
                  np.asarray(center, np.float64), image_size)


def background(rng: np.random.Generator, camera: Camera) -> np.ndarray:
    """A textured HxWx3 uint8 backdrop: muted low-frequency colour, blocky noise, clutter shapes
    and the projected floor grid (world z = 0)."""
    w, h = camera.image_size
    low = cv2.resize(rng.uniform(50, 190, (5, 5, 3)), (w, h), interpolation=cv2.INTER_CUBIC)
    grey = low.mean(axis=2, keepdims=True)
    img = 0.45 * low + 0.55 * grey
    blocks = rng.normal(0, 10, (max(1, h // 6), max(1, w // 6), 1))
    img += cv2.resize(blocks, (w, h), interpolation=cv2.INTER_NEAREST)[..., None]
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(14):
        colour = tuple(int(c) for c in (rng.uniform(70, 170) + rng.uniform(-25, 25, 3)))
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h * 0.6)))
        size = (int(rng.uniform(8, w / 6)), int(rng.uniform(8, h / 6)))
        if rng.random() < 0.5:
            cv2.rectangle(img, (c[0] - size[0], c[1] - size[1]), (c[0] + size[0], c[1] + size[1]), colour, -1)
        else:
            cv2.ellipse(img, c, size, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    _floor_grid(img, camera, rng)
    return img


def _floor_grid(img: np.ndarray, camera: Camera, rng: np.random.Generator) -> None:
    colour = tuple(int(c) for c in rng.uniform(40, 90, 3))
    ticks = np.arange(-4000.0, 4001.0, 500.0)
    steps = np.linspace(-4000.0, 4000.0, 33)
    for t in ticks:
        for line in (np.stack([np.full_like(steps, t), steps, np.zeros_like(steps)], 1),
                     np.stack([steps, np.full_like(steps, t), np.zeros_like(steps)], 1)):
            depth = camera.to_camera(line)[:, 2]
            uv = camera.project(line)
            for a in range(len(line) - 1):
                if depth[a] > 300 and depth[a + 1] > 300:
                    p0, p1 = np.round(uv[a] * _ONE).astype(int), np.round(uv[a + 1] * _ONE).astype(int)
                    if np.all(np.abs(np.concatenate([p0, p1])) < 10000 * _ONE):
                        cv2.line(img, tuple(p0), tuple(p1), colour, 1, cv2.LINE_AA, _SHIFT)


def _body_frame(joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, up) unit vectors of the pelvis from world joints [18, 3] (x = left, y = up,
    z = forward = left x up)."""
    left = joints[4] - joints[1]
    up = joints[8] - joints[0]
    fwd = np.cross(left, up)
    fwd /= max(np.linalg.norm(fwd), 1e-9)
    up = up / max(np.linalg.norm(up), 1e-9)
    return fwd, up


def primitives(joints: np.ndarray, scale: float = 1.0) -> list[tuple]:
    """Capsules ``("capsule", a, b, ra, rb, part)`` and spheres ``("sphere", p, r, part)`` in world
    mm for world joints [18, 3] (H36M order); radii scaled by ``scale``."""
    fwd, up = _body_frame(joints)
    out = [("capsule", joints[a], joints[b], ra * scale, rb * scale, part) for a, b, ra, rb, part in CAPSULES]
    head_c = 0.5 * (joints[9] + joints[10])
    head_r = 0.5 * np.linalg.norm(joints[10] - joints[9]) + 45.0 * scale
    face = joints[9] - joints[8]
    axis = joints[10] - joints[8]
    axis /= max(np.linalg.norm(axis), 1e-9)
    face = face - axis * (face @ axis)
    face = face / np.linalg.norm(face) if np.linalg.norm(face) > 1e-6 else fwd
    out.append(("sphere", head_c, head_r, P["head"]))
    out.append(("sphere", head_c + face * head_r * 0.92, 30.0 * scale, P["face_marker"]))
    chest = 0.5 * (joints[7] + joints[17]) + fwd * 100.0 * scale
    out.append(("sphere", chest, 45.0 * scale, P["chest_marker"]))
    for wrist in (13, 16):
        out.append(("sphere", joints[wrist] + (joints[wrist] - joints[wrist - 1]) * 0.25, 45.0 * scale, P["hand"]))
    for ankle in (3, 6):
        toe = joints[ankle] + fwd * 150.0 * scale - up * 50.0 * scale
        out.append(("capsule", joints[ankle], toe, 40.0 * scale, 35.0 * scale, P["foot"]))
    return out


def _capsule_px(p0, p1, r0, r1, offset=(0.0, 0.0)):
    p0, p1 = np.asarray(p0) + offset, np.asarray(p1) + offset
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / max(np.linalg.norm(d), 1e-9)
    quad = np.stack([p0 + n * r0, p1 + n * r1, p1 - n * r1, p0 - n * r0])
    return p0, p1, quad


def _draw_capsule(img, p0, p1, r0, r1, colour, line_type):
    p0, p1, quad = _capsule_px(p0, p1, r0, r1)
    cv2.fillConvexPoly(img, np.round(quad * _ONE).astype(np.int32), colour, line_type, _SHIFT)
    for p, r in ((p0, r0), (p1, r1)):
        cv2.circle(img, tuple(np.round(p * _ONE).astype(int)), max(int(round(r * _ONE)), 1), colour, -1, line_type,
                   _SHIFT)


def render_person(image: np.ndarray, joints_world: np.ndarray, camera: Camera, scale: float = 1.0,
                  layers: int = 4, with_maps: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Draws the person over ``image`` (HxWx3 uint8 BGR, not modified).

    Returns (image, part map [H, W] uint8 of the front-most part per pixel, z-buffer [H, W]
    float32 camera depth mm of that part's primitive, inf where background); the maps are None
    unless ``with_maps``.
    Primitives are drawn far to near (painter's algorithm); each is shaded with ``layers``
    nested, progressively lighter outlines offset towards an upper-left light.
    """
    img = image.copy()
    h, w = img.shape[:2]
    parts = np.zeros((h, w), np.uint8) if with_maps else None
    zbuf = np.full((h, w), np.inf, np.float32) if with_maps else None
    f = float(np.mean(camera.focal))
    items = []
    for prim in primitives(np.asarray(joints_world, np.float64), scale):
        if prim[0] == "capsule":
            _, a, b, ra, rb, part = prim
            cam = camera.to_camera(np.stack([a, b]))
            uv = camera.project(np.stack([a, b]))
            items.append((float(cam[:, 2].mean()), "capsule", uv, (ra * f / cam[0, 2], rb * f / cam[1, 2]), part))
        else:
            _, p, r, part = prim
            cam = camera.to_camera(p[None])[0]
            uv = camera.project(p[None])
            items.append((float(cam[2]), "sphere", uv, (r * f / cam[2],), part))
    items.sort(key=lambda it: -it[0])
    light = np.array([-0.5, -0.6])
    for depth, kind, uv, radii, part in items:
        base = PALETTE[part]
        for target, value in ((parts, part), (zbuf, depth)) if with_maps else ():  # exact (aliased) maps
            if kind == "capsule":
                _draw_capsule(target, uv[0], uv[1], radii[0], radii[1], value, cv2.LINE_8)
            else:
                cv2.circle(target, tuple(np.round(uv[0] * _ONE).astype(int)), max(int(round(radii[0] * _ONE)), 1),
                           value, -1, cv2.LINE_8, _SHIFT)
        for k in range(layers):
            frac = 1.0 - 0.65 * k / layers
            shade = 0.55 + 0.6 * k / max(layers - 1, 1)
            colour = tuple(float(c) for c in np.clip(base * shade, 0, 255))
            r_max = max(radii)
            off = light * r_max * (1.0 - frac) * 0.6
            if kind == "capsule":
                _draw_capsule(img, uv[0] + off, uv[1] + off, radii[0] * frac, radii[1] * frac, colour, cv2.LINE_AA)
            else:
                cv2.circle(img, tuple(np.round((uv[0] + off) * _ONE).astype(int)),
                           max(int(round(radii[0] * frac * _ONE)), 1), colour, -1, cv2.LINE_AA, _SHIFT)
    return img, parts, zbuf
