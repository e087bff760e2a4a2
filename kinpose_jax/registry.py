"""The choices of config fields the whole code base agrees on (config checks, model builder,
converter, checkpoint loader, data setup), in a module that imports nothing heavy so configs are
checked before JAX starts. The fields and their defaults are configs/default.py's."""

from __future__ import annotations

#: ``config.model.backbone`` values (torchvision's ResNet depths, and ResNet-10: one basic block
#: per stage, no ImageNet weights; see :mod:`kinpose_jax.models.resnet`).
BACKBONES: tuple[str, ...] = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")

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

#: ``config.model.kinematic_view`` (:func:`kinpose_jax.models.heads.view_matrix`): ``upright`` (rest
#: pose upright, facing the camera) or ``identity`` (tree output axes used as camera axes, as the original).
KINEMATIC_VIEWS: tuple[str, ...] = ("upright", "identity")

#: ``config.model.dtype``, the compute dtype (parameters stay float32).
DTYPES: tuple[str, ...] = ("float32", "bfloat16")

#: ``config.model.conv_impl``: how transposed and 1x1 convolutions are computed (same parameters):
#: ``auto`` (CPU fast forms on the CPU backend, the standard forms elsewhere), ``cpu_fast``, ``standard``.
CONV_IMPLS: tuple[str, ...] = ("auto", "cpu_fast", "standard")

#: ``config.model.bn_sync``: BatchNorm batch statistics over the ``global`` batch or ``per_device``.
BN_SYNC: tuple[str, ...] = ("global", "per_device")

#: ``config.data.record_layout``: shards holding the image files as they are (``full``) or
#: patch-sized JPEG crops (``crop``), :func:`kinpose_jax.data.convert.crop_layout`.
RECORD_LAYOUTS: tuple[str, ...] = ("full", "crop")
