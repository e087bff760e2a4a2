"""Independent PyTorch reference implementations, written from docs/DESIGN.md (not from kinpose_jax).

They are deliberately written the "obvious" way — explicit 4x4 matrix chains, reshape + softmax —
so that agreement with the JAX library is evidence, not tautology.
"""

from __future__ import annotations

import numpy as np
import torch

# -------------------------------------------------------------- seed forward kinematics (docs/DESIGN.md#original-model)
# Indices into the original's 29 motion parameters.
TRANS = (0, 1, 2)
ROOT_ZXY = (3, 4, 5)
PELVIS_ZXY = (8, 7, 6)  # stored as RotY, RotX, RotZ
L_HIP_ZXY, L_KNEE_X = (9, 10, 11), 12
R_HIP_ZXY, R_KNEE_X = (13, 14, 15), 16
L_SHOULDER_ZXY, L_ELBOW_X = (17, 18, 19), 20
R_SHOULDER_ZXY, R_ELBOW_X = (21, 22, 23), 24
NECK_ZXY = (25, 26, 27)

KNEE2ANKLE, HIP2KNEE, PELVIS2HIP = 300.0, 302.0, 84.7
PELVIS2TORSO, TORSO2NECK = 165.0, 161.6
NECK2NOSE_Y, NECK2NOSE_Z, NOSE2HEAD_Y = 73.46, 29.0, 66.91
ELBOW2WRIST, SHOULDER2ELBOW = 160.6, 187.16
NECK2SHOULDER_X, NECK2SHOULDER_Y = 117.0, 6.5


def _rot(axis: str, angle: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, 4, 4] counter-clockwise rotation about a basis axis (a fresh matrix)."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    if axis == "x":
        rows = [[one, zero, zero], [zero, c, -s], [zero, s, c]]
    elif axis == "y":
        rows = [[c, zero, s], [zero, one, zero], [-s, zero, c]]
    else:
        rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    m = torch.zeros(angle.shape + (4, 4), dtype=angle.dtype)
    for i in range(3):
        for j in range(3):
            m[..., i, j] = rows[i][j]
    m[..., 3, 3] = 1.0
    return m


def _trans(x, y, z, scale: torch.Tensor) -> torch.Tensor:
    """[B] scale -> [B, 4, 4] translation by scale * (x, y, z) (a fresh matrix)."""
    m = torch.eye(4, dtype=scale.dtype).repeat(scale.shape[0], 1, 1)
    m[:, 0, 3] = x * scale
    m[:, 1, 3] = y * scale
    m[:, 2, 3] = z * scale
    return m


def _zxy(motion: torch.Tensor, idx) -> torch.Tensor:
    return _rot("z", motion[:, idx[0]]) @ _rot("x", motion[:, idx[1]]) @ _rot("y", motion[:, idx[2]])


def seed_fk(motion: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The original's kinematic model with the intended semantics.

    motion: [B, 29]; scale: [B]. Returns [B, 18, 3] in the original's output order (x, z, y).
    """
    b = motion.shape[0]
    t = torch.eye(4, dtype=motion.dtype).repeat(b, 1, 1)
    t[:, 0, 3], t[:, 1, 3], t[:, 2, 3] = motion[:, 0], motion[:, 1], motion[:, 2]
    pelvis = t @ _zxy(motion, ROOT_ZXY)
    torso = pelvis @ _zxy(motion, PELVIS_ZXY) @ _trans(0, PELVIS2TORSO, 0, scale)
    neck = torso @ _trans(0, TORSO2NECK, 0, scale)
    nose = neck @ _zxy(motion, NECK_ZXY) @ _trans(0, NECK2NOSE_Y, 0, scale) @ _trans(0, 0, -NECK2NOSE_Z, scale)
    head = nose @ _trans(0, NOSE2HEAD_Y, 0, scale) @ _trans(0, 0, NECK2NOSE_Z, scale)
    legs = {}
    for side, sign, hip_idx, knee_idx in (("l", 1.0, L_HIP_ZXY, L_KNEE_X), ("r", -1.0, R_HIP_ZXY, R_KNEE_X)):
        hip = pelvis @ _trans(sign * PELVIS2HIP, 0, 0, scale)
        knee = hip @ _zxy(motion, hip_idx) @ _trans(0, -HIP2KNEE, 0, scale)
        ankle = knee @ _rot("x", motion[:, knee_idx]) @ _trans(0, -KNEE2ANKLE, 0, scale)
        legs[side] = (hip, knee, ankle)
    arms = {}
    for side, sign, sh_idx, el_idx in (("l", 1.0, L_SHOULDER_ZXY, L_ELBOW_X), ("r", -1.0, R_SHOULDER_ZXY, R_ELBOW_X)):
        shoulder = neck @ _trans(sign * NECK2SHOULDER_X, 0, 0, scale) @ _trans(0, -NECK2SHOULDER_Y, 0, scale)
        elbow = shoulder @ _zxy(motion, sh_idx) @ _trans(0, -SHOULDER2ELBOW, 0, scale)
        wrist = elbow @ _rot("x", motion[:, el_idx]) @ _trans(0, -ELBOW2WRIST, 0, scale)
        arms[side] = (shoulder, elbow, wrist)
    mats = [pelvis, *legs["r"], *legs["l"], torso, neck, nose, head, *arms["l"], *arms["r"]]
    pts = [m[:, :3, 3] for m in mats]
    pts.append(0.5 * (arms["l"][0][:, :3, 3] + arms["r"][0][:, :3, 3]))
    joints = torch.stack(pts, dim=1)
    return joints[..., [0, 2, 1]]


def seed_fk_per_sample(motion: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Original-style evaluation: a Python loop over samples (the original's bug (e) cost model)."""
    return torch.cat([seed_fk(motion[i : i + 1], scale[i : i + 1]) for i in range(motion.shape[0])], dim=0)


# ---------------------------------------------------------------- soft-argmax (docs/DESIGN.md#soft-argmax)
def softargmax_3d_nchw(heatmaps: torch.Tensor, num_joints: int, depth: int) -> torch.Tensor:
    """The original's integral: reshape, softmax over D*H*W, marginals times bin index."""
    b, _, h, w = heatmaps.shape
    p = torch.softmax(heatmaps.reshape(b, num_joints, depth * h * w), dim=2).reshape(b, num_joints, depth, h, w)
    x = (p.sum(dim=(2, 3)) * torch.arange(w, dtype=p.dtype, device=p.device)).sum(-1) / w - 0.5
    y = (p.sum(dim=(2, 4)) * torch.arange(h, dtype=p.dtype, device=p.device)).sum(-1) / h - 0.5
    z = (p.sum(dim=(3, 4)) * torch.arange(depth, dtype=p.dtype, device=p.device)).sum(-1) / depth - 0.5
    return torch.stack([x, y, z], dim=-1)


def softargmax_2d_nchw(heatmaps: torch.Tensor) -> torch.Tensor:
    b, j, h, w = heatmaps.shape
    p = torch.softmax(heatmaps.reshape(b, j, h * w), dim=2).reshape(b, j, h, w)
    x = (p.sum(dim=2) * torch.arange(w, dtype=p.dtype, device=p.device)).sum(-1) / w - 0.5
    y = (p.sum(dim=3) * torch.arange(h, dtype=p.dtype, device=p.device)).sum(-1) / h - 0.5
    return torch.stack([x, y], dim=-1)


# ---------------------------------------------------------------- losses (docs/DESIGN.md#losses)
def weighted_l1(pred, target, weight):
    return (torch.abs(pred - target) * weight).sum() / pred.shape[0]


def weighted_l2(pred, target, weight):
    return (((pred - target) ** 2) * weight).sum() / pred.shape[0]


# ---------------------------------------------------------------- Procrustes (docs/DESIGN.md#pa-mpjpe)
def procrustes(pred: torch.Tensor, gt: torch.Tensor, with_scale: bool) -> torch.Tensor:
    """Per-sample orthogonal Procrustes written with the trace formulation: R = V diag(1,1,d) U^T
    from the SVD of P^T G; scale = trace(S diag(1,1,d)) / |P|^2. pred, gt: [B, J, 3]."""
    out = []
    for p, g in zip(pred, gt):
        pc, gc = p - p.mean(0), g - g.mean(0)
        m = pc.T @ gc
        u, s, vh = torch.linalg.svd(m)
        v = vh.T
        d = torch.sign(torch.det(v @ u.T))
        fix = torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d]))
        r = v @ fix @ u.T
        sc = torch.trace(torch.diag(s) @ fix) / (pc**2).sum() if with_scale else torch.tensor(1.0, dtype=p.dtype)
        out.append(sc * pc @ r.T + g.mean(0))
    return torch.stack(out)


def to_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
