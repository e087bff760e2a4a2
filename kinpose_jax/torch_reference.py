"""The original's pose network in PyTorch, to run a checkpoint of the original next to its JAX conversion.

Optional: torch is imported only when a network is built or saved (``pip install .[torch]``).
Module structure and ``state_dict`` keys are the original's (``ResPoseNet``), so a checkpoint of the original
loads as it is:

* ``backbone``: torchvision ResNet-18/34/50/101/152 layout (``conv1``, ``bn1``,
  ``layer{1..4}.{j}.conv{1,2,3}/bn{1,2,3}/downsample.{0,1}``), stride in the 3x3 conv;
* integral ``head`` (the original's ``DeconvHead``): one module list ``features`` = L x
  [ConvTranspose2d(k, stride 2, bias=False), BatchNorm2d, ReLU] and the final 1x1 conv (with bias)
  as ``features.{3L}``; joints by soft-argmax over the [J*D, H, W] heatmap logits (docs/DESIGN.md#soft-argmax);
* direct ``head``: global average pool -> ``fc`` to J*3 (joint-major);
* kinematic ``head``: global average pool -> ``fc`` (29*18+1 outputs; the first 29 are the motion
  parameters, the last is the scale, docs/DESIGN.md#original-bugs, bug (d)) -> ``kin_layer``, holding the original's buffers
  ``M`` (4x4 identity), ``v`` (homogeneous origin [4,1]), ``reorder_idx`` (output axes (x, z, y))
  and ``shape`` (bone lengths / 300 mm, in :data:`~kinpose_jax.kinematics.presets.SEED_BONES`
  order). Its forward kinematics are the chains of docs/DESIGN.md#original-model, batched, with the original's bugs (a)-(c)
  fixed: the outputs :mod:`kinpose_jax.convert_torch` maps the original layer onto.

Every network maps images [B, 3, H, W] (normalized pixels) to ``{'joints': [B, J, 3]}`` in
normalized units (docs/DESIGN.md#normalized-units; the integral head adds ``'heatmaps'`` [B, J*D, H/4, W/4] for L = 3).

    python -m kinpose_jax.torch_reference OUT.pth.tar --backbone resnet18 --head integral

writes a randomly initialised network in the original's checkpoint format (a dict whose ``'network'``
entry is the state_dict with DataParallel ``module.`` prefixes), e.g. to try
:mod:`kinpose_jax.compare_torch` without a trained original model.
"""

from __future__ import annotations

import argparse
import functools
import sys
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np

from kinpose_jax.registry import HEADS

#: Outputs of the original's kinematic ``fc``: 29 motion parameters per joint of 18, plus the scale.
SEED_KINEMATIC_OUTPUTS = 29 * 18 + 1
#: The original's mm per unit of the kinematic layer's ``shape`` buffer.
SEED_SHAPE_NORM = 300.0


@functools.cache
def _torch_modules() -> SimpleNamespace:
    """Imports torch and defines the network modules (once)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    from kinpose_jax import skeleton
    from kinpose_jax.kinematics.presets import SEED_BONES, SEED_MOTION_NAMES
    from kinpose_jax.models.deconv import DECONV_PADDING

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
            y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

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
            return F.relu(y + (x if self.downsample is None else self.downsample(x)))

    class ResNetBackbone(nn.Module):
        """[B, 3, H, W] -> [B, C, H/32, W/32]."""

        def __init__(self, kind: str, layers: tuple[int, ...]):
            super().__init__()
            block = BasicBlock if kind == "basic" else Bottleneck
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            cin = 64
            for i, n in enumerate(layers):
                width, blocks = 64 * 2**i, []
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

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
            for i in range(4):
                x = getattr(self, f"layer{i + 1}")(x)
            return x

    def softargmax_3d(heatmaps, num_joints: int, depth_bins: int):
        """docs/DESIGN.md#soft-argmax: [B, J*D, H, W] -> softmax over D*H*W -> expected (x, y, z) -> normalized [B, J, 3]."""
        b, _, h, w = heatmaps.shape
        p = F.softmax(heatmaps.reshape(b, num_joints, depth_bins * h * w), dim=2)
        p = p.reshape(b, num_joints, depth_bins, h, w)
        x = (p.sum(dim=(2, 3)) * torch.arange(w, dtype=p.dtype)).sum(-1) / w - 0.5
        y = (p.sum(dim=(2, 4)) * torch.arange(h, dtype=p.dtype)).sum(-1) / h - 0.5
        z = (p.sum(dim=(3, 4)) * torch.arange(depth_bins, dtype=p.dtype)).sum(-1) / depth_bins - 0.5
        return torch.stack([x, y, z], dim=-1)

    class DeconvHead(nn.Module):
        def __init__(self, cin, num_layers, filters, kernel, num_joints, depth_bins):
            super().__init__()
            padding, output_padding = DECONV_PADDING[kernel]
            self.features = nn.ModuleList()
            for i in range(num_layers):
                self.features.append(nn.ConvTranspose2d(cin if i == 0 else filters, filters, kernel, 2, padding,
                                                        output_padding=output_padding, bias=False))
                self.features.append(nn.BatchNorm2d(filters))
                self.features.append(nn.ReLU(inplace=True))
            self.features.append(nn.Conv2d(filters if num_layers else cin, num_joints * depth_bins, 1, bias=True))
            self.num_joints, self.depth_bins = num_joints, depth_bins

        def forward(self, x):
            for layer in self.features:
                x = layer(x)
            return {"heatmaps": x, "joints": softargmax_3d(x, self.num_joints, self.depth_bins)}

    class DirectHead(nn.Module):
        def __init__(self, cin, num_joints):
            super().__init__()
            self.fc = nn.Linear(cin, num_joints * 3)
            self.num_joints = num_joints

        def forward(self, x):
            return {"joints": self.fc(x.mean(dim=(2, 3))).reshape(x.shape[0], self.num_joints, 3)}

    def rotation(axis: int, angle):
        """Right-handed rotation by ``angle`` [B] (rad) about basis axis 0/1/2 -> [B, 4, 4]."""
        c, s = torch.cos(angle), torch.sin(angle)
        i, j = [(1, 2), (2, 0), (0, 1)][axis]
        m = torch.eye(4, dtype=angle.dtype).repeat(angle.shape[0], 1, 1)
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        return m

    def translation(v):
        """[B, 3] -> [B, 4, 4]."""
        m = torch.eye(4, dtype=v.dtype).repeat(v.shape[0], 1, 1)
        m[:, :3, 3] = v
        return m

    bone_index = {name: i for i, name in enumerate(SEED_BONES)}

    class KinematicLayer(nn.Module):
        """[B, >= 30] (29 motion parameters first, the scale last) -> joints [B, 18, 3] (docs/DESIGN.md#original-model)."""

        def __init__(self):
            super().__init__()
            self.register_buffer("M", torch.eye(4))
            self.register_buffer("v", torch.tensor([[0.0], [0.0], [0.0], [1.0]]))
            self.register_buffer("reorder_idx", torch.tensor([0, 2, 1], dtype=torch.long))
            self.register_buffer("shape", torch.tensor(list(SEED_BONES.values()))[:, None] / SEED_SHAPE_NORM)

        def forward(self, raw):
            motion = {n: raw[:, i] for i, n in enumerate(SEED_MOTION_NAMES)}
            scale = raw[:, -1]
            bones = self.shape[:, 0] * SEED_SHAPE_NORM

            def move(x=None, y=None, z=None, sign=1.0):  # translate by sign * bone * scale along x/y/z
                v = torch.zeros(raw.shape[0], 3, dtype=raw.dtype)
                for axis, bone in enumerate((x, y, z)):
                    if bone is not None:
                        v[:, axis] = sign * bones[bone_index[bone]] * scale
                return translation(v)

            def rot_zxy(prefix):
                return (rotation(2, motion[prefix + "_RotZ"]) @ rotation(0, motion[prefix + "_RotX"])
                        @ rotation(1, motion[prefix + "_RotY"]))

            base = self.M.to(raw.dtype).expand(raw.shape[0], 4, 4)
            g = {"pelvis": base @ translation(torch.stack([motion["TransX"], motion["TransY"], motion["TransZ"]], 1))
                 @ rot_zxy("Root")}
            g["torso"] = g["pelvis"] @ rot_zxy("Pelvis") @ move(y="pelvis2torso")
            g["neck"] = g["torso"] @ move(y="torso2neck")
            g["nose"] = g["neck"] @ rot_zxy("Neck") @ move(y="neck2nose_y") @ move(z="neck2nose_z", sign=-1.0)
            g["head"] = g["nose"] @ move(y="nose2head_y") @ move(z="neck2nose_z")
            for side, sign in (("l", 1.0), ("r", -1.0)):
                s = side.upper()
                g[f"{side}_hip"] = g["pelvis"] @ move(x="pelvis2hip", sign=sign)
                g[f"{side}_knee"] = g[f"{side}_hip"] @ rot_zxy(f"{s}_Hip") @ move(y="hip2knee", sign=-1.0)
                g[f"{side}_ankle"] = (g[f"{side}_knee"] @ rotation(0, motion[f"{s}_Knee_RotX"])
                                      @ move(y="knee2ankle", sign=-1.0))
                g[f"{side}_shoulder"] = (g["neck"] @ move(x="neck2shoulder_x", sign=sign)
                                         @ move(y="neck2shoulder_y", sign=-1.0))
                g[f"{side}_elbow"] = (g[f"{side}_shoulder"] @ rot_zxy(f"{s}_Shoulder")
                                      @ move(y="shoulder2elbow", sign=-1.0))
                g[f"{side}_wrist"] = (g[f"{side}_elbow"] @ rotation(0, motion[f"{s}_Elbow_RotX"])
                                      @ move(y="elbow2wrist", sign=-1.0))
            pos = {k: (m @ self.v.to(raw.dtype))[:, :3, 0] for k, m in g.items()}
            pos["thorax"] = 0.5 * (pos["l_shoulder"] + pos["r_shoulder"])
            joints = torch.stack([pos[n] for n in skeleton.H36M_JOINT_NAMES], dim=1)
            return joints.index_select(2, self.reorder_idx)

    class KinematicHead(nn.Module):
        def __init__(self, cin, num_outputs):
            super().__init__()
            self.fc = nn.Linear(cin, num_outputs)
            self.kin_layer = KinematicLayer()

        def forward(self, x):
            return {"joints": self.kin_layer(self.fc(x.mean(dim=(2, 3))))}

    class ResPoseNet(nn.Module):
        def __init__(self, backbone, head):
            super().__init__()
            self.backbone, self.head = backbone, head

        def forward(self, x):
            return self.head(self.backbone(x))

    return SimpleNamespace(torch=torch, ResNetBackbone=ResNetBackbone, DeconvHead=DeconvHead, DirectHead=DirectHead,
                           KinematicHead=KinematicHead, ResPoseNet=ResPoseNet)


def build_network(model_config: Any, kinematic_outputs: int = SEED_KINEMATIC_OUTPUTS):
    """The original network for ``model_config`` (``config.model`` fields, see
    :func:`kinpose_jax.models.build_pose_net`: backbone, head, num_joints, depth_bins,
    deconv_filters, num_deconv_layers, deconv_kernel), in eval mode with torch's default init.
    A kinematic head needs ``num_joints`` 18 (the original's skeleton)."""
    from kinpose_jax.models import RESNET_SPECS, model_field, parse_backbone

    t = _torch_modules()
    kind, layers = RESNET_SPECS[parse_backbone(model_field(model_config, "backbone"))]
    backbone = t.ResNetBackbone(kind, tuple(layers))
    head, joints = str(model_field(model_config, "head")), int(model_field(model_config, "num_joints"))
    if head == "integral":
        net_head = t.DeconvHead(backbone.out_channels, int(model_field(model_config, "num_deconv_layers")),
                                int(model_field(model_config, "deconv_filters")),
                                int(model_field(model_config, "deconv_kernel")), joints,
                                int(model_field(model_config, "depth_bins")))
    elif head == "direct":
        net_head = t.DirectHead(backbone.out_channels, joints)
    elif head == "kinematic":
        if joints != 18:
            raise ValueError(f"the original's kinematic layer outputs 18 joints; num_joints is {joints}")
        net_head = t.KinematicHead(backbone.out_channels, kinematic_outputs)
    else:
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
    return t.ResPoseNet(backbone, net_head).eval()


def seed_layout(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``state_dict`` with ``module.`` prefixes removed and an integral head's ``head.final_layer.*``
    (this repository's torch naming) renamed to the original's ``head.features.{3L}.*``."""
    from kinpose_jax.convert_torch import strip_module_prefix

    sd = {strip_module_prefix(k): v for k, v in state_dict.items()}
    if "head.final_layer.weight" in sd:
        deconvs = {k.split(".")[2] for k in sd if k.startswith("head.features.") and k.endswith(".running_mean")}
        for leaf in ("weight", "bias"):
            if f"head.final_layer.{leaf}" in sd:
                sd[f"head.features.{3 * len(deconvs)}.{leaf}"] = sd.pop(f"head.final_layer.{leaf}")
    return sd


def load_network(state_dict: Mapping[str, np.ndarray], model_config: Any):
    """The original network for ``model_config`` holding ``state_dict`` (numpy arrays, as from
    :func:`kinpose_jax.convert_torch.load_torch_state_dict`). Raises ValueError naming the keys
    that do not fit; BatchNorm counters and kinematic-layer buffers may be absent."""
    from kinpose_jax.convert_torch import SEED_KINEMATIC_BUFFERS
    from kinpose_jax.models import model_field

    t = _torch_modules()
    sd = seed_layout(state_dict)
    fc = sd.get("head.fc.weight")
    kinematic = str(model_field(model_config, "head")) == "kinematic"
    kinematic_outputs = fc.shape[0] if kinematic and fc is not None else SEED_KINEMATIC_OUTPUTS
    net = build_network(model_config, kinematic_outputs)
    wanted = net.state_dict()
    bad = [f"{k}: checkpoint {tuple(np.shape(v))}, network {tuple(wanted[k].shape)}" for k, v in sd.items()
           if k in wanted and tuple(np.shape(v)) != tuple(wanted[k].shape)]
    missing = [k for k in wanted if k not in sd and not k.endswith("num_batches_tracked")
               and k not in SEED_KINEMATIC_BUFFERS]
    unexpected = [k for k in sd if k not in wanted]
    if bad or missing or unexpected:
        raise ValueError("the checkpoint does not fit the original network for this config: "
                         + "; ".join(f"{name}: {keys[:8]}{' ...' if len(keys) > 8 else ''}" for name, keys in
                                     (("shape mismatches", bad), ("missing", missing), ("unexpected", unexpected))
                                     if keys))
    tensors = {k: t.torch.as_tensor(np.asarray(v)).to(wanted[k].dtype) for k, v in sd.items()}
    net.load_state_dict(tensors, strict=False)
    return net.eval()


def predict(net, images: np.ndarray) -> np.ndarray:
    """images [B, H, W, 3] (NHWC, normalized pixels) -> joints [B, J, 3] float32, normalized."""
    torch = _torch_modules().torch
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        return net(x)["joints"].numpy().astype(np.float32)


class TorchPoseModel:
    """An original network behind the ``apply(variables, images, train=False)`` interface of a Flax
    pose network (``variables`` unused), so :func:`kinpose_jax.training.evaluation.make_predict_fn` can run
    it: the same flip test, decoding and loss as the JAX model (host-side, not jitted)."""

    def __init__(self, net):
        self.net = net

    def apply(self, variables, images, train: bool = False) -> dict:
        if train:
            raise ValueError("TorchPoseModel runs the network in evaluation mode only")
        return {"joints": predict(self.net, np.asarray(images))}


def save_seed_checkpoint(net, path: str, data_parallel: bool = True, **extra) -> str:
    """Saves ``net`` like the original: ``{'network': state_dict, **extra}``, keys prefixed ``module.``
    when ``data_parallel`` (the original trains inside ``DataParallel``)."""
    torch = _torch_modules().torch
    prefix = "module." if data_parallel else ""
    torch.save({"network": {prefix + k: v for k, v in net.state_dict().items()}, **extra}, path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m kinpose_jax.torch_reference",
        description="Write a randomly initialised original network (torch default init) in the original's checkpoint format.")
    p.add_argument("out", help="output file, e.g. seed.pth.tar")
    p.add_argument("--backbone", default="resnet18", help="resnet18|34|50|101|152 (default resnet18)")
    p.add_argument("--head", choices=HEADS, help="default: configs/default.py's")
    p.add_argument("--num-joints", type=int, help="default: configs/default.py's")
    p.add_argument("--depth-bins", type=int, help="integral head (default: configs/default.py's)")
    p.add_argument("--deconv-filters", type=int, help="integral head (default: configs/default.py's)")
    p.add_argument("--num-deconv-layers", type=int, help="integral head (default: configs/default.py's)")
    p.add_argument("--seed", type=int, default=0, help="torch RNG seed of the initialization")
    a = p.parse_args(argv)
    _torch_modules().torch.manual_seed(a.seed)
    from configs.default import with_defaults

    given = dict(backbone=a.backbone, head=a.head, num_joints=a.num_joints, depth_bins=a.depth_bins,
                 deconv_filters=a.deconv_filters, num_deconv_layers=a.num_deconv_layers)
    model = with_defaults({"model": {k: v for k, v in given.items() if v is not None}}).model
    save_seed_checkpoint(build_network(model), a.out)
    print(f"wrote {a.out} ({model.backbone}, {model.head} head, the original's checkpoint format)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
