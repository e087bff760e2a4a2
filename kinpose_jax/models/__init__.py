"""Pose networks (Flax linen): ResNet backbone + integral / direct / kinematic head.

>>> from kinpose_jax.models import build_pose_net, init_variables
>>> model = build_pose_net(config.model)           # see build_pose_net for the fields read
>>> variables = init_variables(model, jax.random.key(0), 256)
>>> out = model.apply(variables, images, train=False)   # images [B, 256, 256, 3]
>>> out["joints"]                                       # [B, J, 3] normalized (docs/DESIGN.md#normalized-units)

Importing this package never imports torch; see :mod:`kinpose_jax.convert_torch` for loading
PyTorch (seed / torchvision) weights.
"""

from kinpose_jax.models.deconv import TorchConvTranspose, conv_transpose_stride2, torch_deconv_padding
from kinpose_jax.models.heads import (
    DirectHead, IntegralHead, KinematicHead, decode_kinematic, global_avg_pool, kinematic_num_outputs,
    upright_view_matrix, view_matrix,
)
from kinpose_jax.models.pose_net import (
    MODEL_FIELDS, PoseNet, build_pose_net, dataset_joint_indices, init_variables, model_field, parse_backbone,
    variable_shapes,
)
from kinpose_jax.models.resnet import RESNET_SPECS, BasicBlock, Bottleneck, PointwiseConv, ResNet, resnet_out_channels

__all__ = [
    "PoseNet", "build_pose_net", "init_variables", "variable_shapes", "parse_backbone", "MODEL_FIELDS", "model_field",
    "dataset_joint_indices",
    "ResNet", "BasicBlock", "Bottleneck", "RESNET_SPECS", "resnet_out_channels",
    "IntegralHead", "DirectHead", "KinematicHead", "decode_kinematic", "kinematic_num_outputs",
    "global_avg_pool", "torch_deconv_padding", "upright_view_matrix", "view_matrix",
    "TorchConvTranspose", "conv_transpose_stride2", "PointwiseConv",
]
