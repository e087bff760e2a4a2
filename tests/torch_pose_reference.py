"""Independent PyTorch reference of the pose networks (written from scratch; no torchvision).

Module names follow the original / torchvision ``state_dict`` layout that
:mod:`kinpose_jax.convert_torch` reads:

* backbone (torchvision ResNet v1.5): ``conv1``, ``bn1``, ``layer{1..4}.{j}.conv{1,2,3}``,
  ``.bn{1,2,3}``, ``.downsample.{0,1}``; with ``with_fc=True`` also ``fc`` (a plain ImageNet dict);
* integral head: ``head.features.{3i}`` ConvTranspose2d(4, 2, 1, bias=False),
  ``head.features.{3i+1}`` BatchNorm2d, ReLU; ``head.final_layer`` 1x1 conv (``"integral"``), or,
  as the original's ``DeconvHead`` has it, the 1x1 conv appended to the same ``features`` module list
  as ``head.features.{3L}`` (``"seed_integral"``);
* direct and kinematic heads: ``head.fc`` after global average pooling; the original's kinematic
  head also holds the buffers ``head.kin_layer.{M, v, reorder_idx, shape}``.

Forward kinematics is implemented twice, both independently of the JAX code: generically from a
tree's static description (:func:`generic_fk`, a per-joint loop over 4x4 matrices) and by hand
from the chains of docs/DESIGN.md#original-model (:func:`seed_chain_fk`, the original's model with its bugs fixed).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

SPECS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
         50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class TorchResNet(nn.Module):
    """images [B,3,H,W] -> features [B,C,H/32,W/32]; ``with_fc`` adds the ImageNet classifier."""

    def __init__(self, depth: int, with_fc: bool = False):
        super().__init__()
        kind, layers = SPECS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, n in enumerate(layers):
            width = 64 * 2**i
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if j == 0 and (stride != 1 or cin != width * block.expansion):
                    down = nn.Sequential(nn.Conv2d(cin, width * block.expansion, 1, stride, bias=False),
                                         nn.BatchNorm2d(width * block.expansion))
                blocks.append(block(cin, width, stride, down))
                cin = width * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.out_channels = cin
        self.fc = nn.Linear(cin, 1000) if with_fc else None

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
        return x


def softargmax_3d_nchw(heatmaps: torch.Tensor, num_joints: int, depth_bins: int) -> torch.Tensor:
    """docs/DESIGN.md#soft-argmax, literally: [B, J*D, H, W] -> softmax over D*H*W -> expected x, y, z -> normalized."""
    b, _, h, w = heatmaps.shape
    p = F.softmax(heatmaps.reshape(b, num_joints, depth_bins * h * w), dim=2)
    p = p.reshape(b, num_joints, depth_bins, h, w)
    px, py, pz = p.sum(dim=(2, 3)), p.sum(dim=(2, 4)), p.sum(dim=(3, 4))
    ex = (px * torch.arange(w, dtype=p.dtype, device=p.device)).sum(-1)
    ey = (py * torch.arange(h, dtype=p.dtype, device=p.device)).sum(-1)
    ez = (pz * torch.arange(depth_bins, dtype=p.dtype, device=p.device)).sum(-1)
    return torch.stack([ex / w - 0.5, ey / h - 0.5, ez / depth_bins - 0.5], dim=-1)


class IntegralHead(nn.Module):
    def __init__(self, cin, num_joints, depth_bins, filters=256, num_layers=3):
        super().__init__()
        layers = []
        for _ in range(num_layers):
            layers += [nn.ConvTranspose2d(cin, filters, 4, 2, 1, output_padding=0, bias=False),
                       nn.BatchNorm2d(filters), nn.ReLU(inplace=True)]
            cin = filters
        self.features = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(cin, num_joints * depth_bins, 1)
        self.num_joints, self.depth_bins = num_joints, depth_bins

    def forward(self, x):
        hm = self.final_layer(self.features(x))
        return dict(heatmaps=hm, joints=softargmax_3d_nchw(hm, self.num_joints, self.depth_bins))


class SeedDeconvHead(nn.Module):
    """The original's ``DeconvHead`` module structure: one ``nn.ModuleList`` ``features`` holding
    L x [ConvTranspose2d, BatchNorm2d, ReLU] and then the final 1x1 conv (``features.{3L}``)."""

    def __init__(self, cin, num_joints, depth_bins, filters=256, num_layers=3):
        super().__init__()
        self.features = nn.ModuleList()
        for i in range(num_layers):
            self.features.append(nn.ConvTranspose2d(cin if i == 0 else filters, filters, 4, 2, 1, output_padding=0,
                                                    bias=False))
            self.features.append(nn.BatchNorm2d(filters))
            self.features.append(nn.ReLU(inplace=True))
        self.features.append(nn.Conv2d(filters, num_joints * depth_bins, 1, padding=0, bias=True))
        self.num_joints, self.depth_bins = num_joints, depth_bins

    def forward(self, x):
        for layer in self.features:
            x = layer(x)
        return dict(heatmaps=x, joints=softargmax_3d_nchw(x, self.num_joints, self.depth_bins))


class DirectHead(nn.Module):
    def __init__(self, cin, num_joints):
        super().__init__()
        self.fc = nn.Linear(cin, num_joints * 3)
        self.num_joints = num_joints

    def forward(self, x):
        return dict(joints=self.fc(x.mean(dim=(2, 3))).reshape(x.shape[0], self.num_joints, 3))


# ------------------------------------------------------------------ forward kinematics (torch)
def rot_axis(axis, angle: torch.Tensor) -> torch.Tensor:
    """Right-handed rotation by ``angle`` [B] about unit ``axis`` (3 floats) -> [B, 4, 4]."""
    a = torch.as_tensor(axis, dtype=angle.dtype)
    x, y, z = a[0], a[1], a[2]
    c, s = torch.cos(angle), torch.sin(angle)
    t = 1 - c
    m = torch.zeros(angle.shape + (4, 4), dtype=angle.dtype, device=angle.device)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = t * x * x + c, t * x * y - s * z, t * x * z + s * y
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = t * x * y + s * z, t * y * y + c, t * y * z - s * x
    m[:, 2, 0], m[:, 2, 1], m[:, 2, 2] = t * x * z - s * y, t * y * z + s * x, t * z * z + c
    m[:, 3, 3] = 1
    return m


def translate(v: torch.Tensor) -> torch.Tensor:
    """[B, 3] -> [B, 4, 4]."""
    m = torch.eye(4, dtype=v.dtype, device=v.device).repeat(v.shape[0], 1, 1)
    m[:, :3, 3] = v
    return m


def generic_fk(spec: dict, angles: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Per-joint FK loop: ``G_j = G_parent @ T(scale * offset_j) @ R_axis0 @ R_axis1 @ ...``.

    ``spec`` holds a tree's static description (offsets [E,3] mm, parents, dofs, derived, hidden,
    output_axes), see :func:`tree_spec`. angles [B, num_dofs] rad, scale [B] -> joints [B, J, 3].
    """
    b = angles.shape[0]
    offsets = torch.as_tensor(np.asarray(spec["offsets"]), dtype=angles.dtype, device=angles.device)
    e = len(spec["parents"])
    first_angle, k = [], 0
    for axes in spec["dofs"]:
        first_angle.append(k)
        k += len(axes)
    g = [None] * e
    done = set()
    while len(done) < e:
        for j in range(e):
            if j in done or spec["derived"][j]:
                continue
            p = spec["parents"][j]
            if p >= 0 and p not in done:
                continue
            m = translate(offsets[j].expand(b, 3) * scale[:, None])
            if p >= 0:
                m = g[p] @ m
            for n, axis in enumerate(spec["dofs"][j]):
                m = m @ rot_axis(axis, angles[:, first_angle[j] + n])
            g[j] = m
            done.add(j)
        for j in range(e):
            if spec["derived"][j] and j not in done and all(s in done for s, _ in spec["derived"][j]):
                g[j] = translate(sum(w * g[s][:, :3, 3] for s, w in spec["derived"][j]))
                done.add(j)
    pos = torch.stack([g[j][:, :3, 3] for j in range(e) if not spec["hidden"][j]], dim=1)
    return pos[..., list(spec["output_axes"])]


def tree_spec(tree) -> dict:
    """Static description of a kinpose_jax KinematicTree as plain Python data (no JAX code used)."""
    return dict(offsets=np.asarray(tree.offsets, np.float64), parents=tree.parents, dofs=tree.dofs,
                derived=tree.derived, hidden=tree.hidden, output_axes=tree.output_axes)


#: Camera axes (x right, y down, z away) of the upright, camera-facing rest pose, written out by
#: hand for the presets: seed tree outputs (x=left, z=-forward, y=up) -> (x, -y_out[2], y_out[1]);
#: symmetric h36m18 outputs (x=left, y=up, z=forward) -> (x, -y, -z).
UPRIGHT_VIEWS = {
    "seed_h36m18": torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    "h36m18": torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]]),
    "identity": torch.eye(3),
}


class KinematicHead(nn.Module):
    """avg pool -> fc [3 translation, num_dofs angles, 1 scale] -> joints = t + V @ FK(angles,
    (1 + s) / box_mm)."""

    def __init__(self, cin, tree, view: torch.Tensor, box_mm: float = 2000.0):
        super().__init__()
        self.spec = tree_spec(tree)
        self.num_dofs = tree.num_dofs
        self.fc = nn.Linear(cin, 3 + self.num_dofs + 1)
        self.view, self.box_mm = view, box_mm

    def forward(self, x):
        raw = self.fc(x.mean(dim=(2, 3)))
        t, angles, s = raw[:, :3], raw[:, 3:3 + self.num_dofs], raw[:, -1]
        local = generic_fk(self.spec, angles, (1 + s) / self.box_mm)
        return dict(joints=t[:, None, :] + local @ self.view.to(raw.dtype).to(raw.device).T)


# The original (docs/DESIGN.md#original-model) -------------------------------------------------------------------------------
SEED_NAMES = ("TransX TransY TransZ Root_RotZ Root_RotX Root_RotY Pelvis_RotY Pelvis_RotX Pelvis_RotZ "
              "L_Hip_RotZ L_Hip_RotX L_Hip_RotY L_Knee_RotX R_Hip_RotZ R_Hip_RotX R_Hip_RotY R_Knee_RotX "
              "L_Shoulder_RotZ L_Shoulder_RotX L_Shoulder_RotY L_Elbow_RotX R_Shoulder_RotZ R_Shoulder_RotX "
              "R_Shoulder_RotY R_Elbow_RotX Neck_RotZ Neck_RotX Neck_RotY Head_RotX").split()
X, Y, Z = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)


def seed_chain_fk(motion: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The original's kinematic model written out chain by chain from docs/DESIGN.md#original-model, with bugs (a)-(c) fixed
    (translation applied, a fresh matrix per operation, both shoulders on the neck).

    motion [B, 29] (the original's order), scale [B] -> joints [B, 18, 3] in H36M order, axes (x, z, y).
    """
    m = {n: motion[:, i] for i, n in enumerate(SEED_NAMES)}

    def T(x=0.0, y=0.0, z=0.0):
        v = torch.stack([torch.full_like(scale, 1.0) * c for c in (x, y, z)], dim=1) * scale[:, None]
        return translate(v)

    def R(prefix):  # Rz . Rx . Ry
        return rot_axis(Z, m[prefix + "_RotZ"]) @ rot_axis(X, m[prefix + "_RotX"]) @ rot_axis(Y, m[prefix + "_RotY"])

    pelvis = translate(torch.stack([m["TransX"], m["TransY"], m["TransZ"]], 1)) @ R("Root")
    torso = pelvis @ R("Pelvis") @ T(y=165.0)
    neck = torso @ T(y=161.6)
    nose = neck @ R("Neck") @ T(y=73.46) @ T(z=-29.0)
    head = nose @ T(y=66.91) @ T(z=29.0)
    joints = {"pelvis": pelvis, "torso": torso, "neck": neck, "nose": nose, "head": head}
    for side, sign in (("L", 1.0), ("R", -1.0)):
        hip = pelvis @ T(x=sign * 84.7)
        knee = hip @ R(f"{side}_Hip") @ T(y=-302.0)
        ankle = knee @ rot_axis(X, m[f"{side}_Knee_RotX"]) @ T(y=-300.0)
        shoulder = neck @ T(x=sign * 117.0) @ T(y=-6.5)
        elbow = shoulder @ R(f"{side}_Shoulder") @ T(y=-187.16)
        wrist = elbow @ rot_axis(X, m[f"{side}_Elbow_RotX"]) @ T(y=-160.6)
        s = side.lower()
        joints.update({f"{s}_hip": hip, f"{s}_knee": knee, f"{s}_ankle": ankle, f"{s}_shoulder": shoulder,
                       f"{s}_elbow": elbow, f"{s}_wrist": wrist})
    pos = {k: v[:, :3, 3] for k, v in joints.items()}
    pos["thorax"] = 0.5 * (pos["l_shoulder"] + pos["r_shoulder"])
    order = ["pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "torso", "neck", "nose", "head",
             "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist", "thorax"]
    out = torch.stack([pos[k] for k in order], dim=1)
    return out[..., [0, 2, 1]]


class SeedKinematicLayer(nn.Module):
    """Holds the buffers of the original's kinematic layer under its names (identity ``M`` [4,4],
    homogeneous origin ``v`` [4,1], axis order ``reorder_idx`` [3] int64, bone lengths / 300
    ``shape`` [12,1]); they are constants, so they are part of the state_dict but not learned."""

    def __init__(self):
        super().__init__()
        bones = [300.0, 302.0, 84.7, 165.0, 161.6, 73.46, 29.0, 66.91, 160.6, 187.16, 117.0, 6.5]
        self.register_buffer("M", torch.eye(4))
        self.register_buffer("v", torch.tensor([[0.0], [0.0], [0.0], [1.0]]))
        self.register_buffer("reorder_idx", torch.tensor([0, 2, 1], dtype=torch.long))
        self.register_buffer("shape", torch.tensor(bones)[:, None] / 300.0)


class SeedKinematicHead(nn.Module):
    """The original's head layout: avg pool -> ``fc`` with 29*18+1 outputs of which the first 29 (motion)
    and the last (scale) are used (bug (d)), then ``kin_layer``; joints = :func:`seed_chain_fk`."""

    def __init__(self, cin, num_outputs: int = 29 * 18 + 1):
        super().__init__()
        self.fc = nn.Linear(cin, num_outputs)
        self.kin_layer = SeedKinematicLayer()

    def forward(self, x):
        raw = self.fc(x.mean(dim=(2, 3)))
        return dict(joints=seed_chain_fk(raw[:, :29], raw[:, -1]))


class TorchPoseNet(nn.Module):
    """``backbone`` + ``head``; images [B,3,H,W] -> dict(joints [B,J,3], heatmaps [B,J*D,h,w]?)."""

    def __init__(self, backbone: TorchResNet, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x):
        return self.head(self.backbone(x))


def build(depth: int, head: str, num_joints=18, depth_bins=8, filters=32, num_layers=3, tree=None,
          view="identity", box_mm=2000.0) -> TorchPoseNet:
    backbone = TorchResNet(depth)
    c = backbone.out_channels
    if head == "integral":
        h = IntegralHead(c, num_joints, depth_bins, filters, num_layers)
    elif head == "seed_integral":
        h = SeedDeconvHead(c, num_joints, depth_bins, filters, num_layers)
    elif head == "direct":
        h = DirectHead(c, num_joints)
    elif head == "kinematic":
        h = KinematicHead(c, tree, UPRIGHT_VIEWS[view], box_mm)
    elif head == "seed_kinematic":
        h = SeedKinematicHead(c)
    else:
        raise ValueError(head)
    return TorchPoseNet(backbone, h)


@torch.no_grad()
def randomize(model: TorchPoseNet, seed: int = 0, calib_size: int = 64, out_std: float = 0.3,
              logit_std: float = 1.0) -> TorchPoseNet:
    """Gives ``model`` non-trivial, well-scaled parameters and BatchNorm statistics.

    BN running stats are first calibrated on a random batch (so activations keep a sane scale
    through the net), then perturbed (mean shifted, variance scaled by U(0.7, 1.3)); BN weight is
    U(0.5, 1.5) (U(0.1, 0.4) for the last BN of a residual branch) and bias N(0, 0.2). Deconvs get N(0, 0.05) weights. The last layer is rescaled
    so its outputs have a realistic size: ``out_std`` for linear heads (normalized joints /
    radians), ``logit_std`` for heatmap logits (the original's N(0, 0.001) would make them flat).
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith("head.") and p.ndim > 1:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
        elif name.startswith("head.") and name.endswith("bias"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    # the last BN of each residual branch gets a small scale (as in trained ResNets) so the
    # residual stream does not grow through the blocks; fp32 error grows with activation size
    # (residual blocks are recognised by their module names, so any torchvision-layout ResNet works)
    last_bns = {id(getattr(b, "bn3", getattr(b, "bn2", None))) for b in model.modules()
                if hasattr(b, "downsample") and hasattr(b, "bn2")}
    for bn in bns:
        low, width = (0.1, 0.3) if id(bn) in last_bns else (0.5, 1.0)
        bn.weight.copy_(low + width * torch.rand(bn.weight.shape, generator=g))
        bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=g))
        bn.momentum = None  # cumulative average during calibration
        bn.reset_running_stats()
    x = torch.randn(2, 3, calib_size, calib_size, generator=g)
    model.train()
    model(x)
    for bn in bns:
        bn.momentum = 0.1
        bn.running_mean.add_(0.1 * torch.randn(bn.running_mean.shape, generator=g) * bn.running_var.sqrt())
        bn.running_var.mul_(0.7 + 0.6 * torch.rand(bn.running_var.shape, generator=g))
    model.eval()
    feats = model.backbone(x)
    head = model.head
    if hasattr(head, "final_layer"):
        h = head.features(feats)
        w = head.final_layer.weight
    elif isinstance(getattr(head, "features", None), nn.ModuleList):  # the original's DeconvHead
        h = feats
        for layer in head.features[:-1]:
            h = layer(h)
        w = head.features[-1].weight
    if hasattr(head, "features"):
        w.copy_(torch.randn(w.shape, generator=g) * logit_std / (h.pow(2).mean().sqrt() * w.shape[1] ** 0.5))
    else:
        pooled = feats.mean(dim=(2, 3))
        w = head.fc.weight
        w.copy_(torch.randn(w.shape, generator=g) * out_std / (pooled.pow(2).mean().sqrt() * w.shape[1] ** 0.5))
    return model
