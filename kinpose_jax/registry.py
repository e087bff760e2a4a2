"""The model choices the whole code base agrees on (config checks, model builder, converter,
checkpoint loader), in a module that imports nothing heavy so configs are checked before JAX starts."""

from __future__ import annotations

#: ``config.model.backbone`` values (torchvision ResNet depths).
BACKBONES: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

#: Head -> the ``config.model`` fields its parameters depend on besides backbone, head and
#: num_joints: what a converted checkpoint of that head fixes (docs/DESIGN.md#converted-weights).
HEAD_FIELDS: dict[str, tuple[str, ...]] = {
    "integral": ("depth_bins", "num_deconv_layers", "deconv_filters", "deconv_kernel"),
    "direct": (),
    "kinematic": ("kinematic_tree", "kinematic_view", "box_mm"),
}

#: ``config.model.head`` values: integral (3D heatmap + soft-argmax), direct (joint regression),
#: kinematic (angles + scale -> forward kinematics).
HEADS: tuple[str, ...] = tuple(HEAD_FIELDS)

#: ``config.model.conv_impl``: how transposed and 1x1 convolutions are computed (same parameters):
#: ``auto`` (CPU fast forms on the CPU backend, the standard forms elsewhere), ``cpu_fast``, ``standard``.
CONV_IMPLS: tuple[str, ...] = ("auto", "cpu_fast", "standard")

#: ``config.model.bn_sync``: BatchNorm batch statistics over the ``global`` batch or ``per_device``.
BN_SYNC: tuple[str, ...] = ("global", "per_device")
