"""The full network: ResNet backbone + one pose head, and its construction from a config."""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from kinpose_jax import integral, skeleton
from kinpose_jax.registry import CONV_IMPLS, DTYPES, HEADS
from kinpose_jax.kinematics import KinematicTree, get_tree
from kinpose_jax.models.heads import DirectHead, IntegralHead, KinematicHead
from kinpose_jax.models.resnet import RESNET_SPECS, ResNet


class PoseNet(nn.Module):
    """images [B, H, W, 3] (normalized pixels, docs/DESIGN.md#pixel-normalization) -> dict of outputs.

    Always ``joints`` [B, J, 3] float32 in normalized units (docs/DESIGN.md#normalized-units), J = ``num_joints``, the
    dataset's joints. The integral head adds ``heatmaps`` [B, H/4, W/4, J*D] float32 logits (for 3
    deconv layers; channel ``j*D + d``); the kinematic head adds ``translation`` [B,3], ``angles``
    [B,num_dofs] (rad) and ``scale`` [B], and, for a tree with more output joints than the dataset
    (see :func:`dataset_joint_indices`), ``tree_joints`` [B, tree.num_joints, 3] (all of them, in
    tree order; ``joints`` is then the dataset's joints picked by name).

    ``dtype`` is the compute dtype of the backbone and the integral head's convolutions; the
    direct / kinematic heads' final linear layer (and forward kinematics) always run in float32.
    The integral head's heatmap logits, the soft-argmax and all BatchNorm reductions are float32.
    Parameters are float32 whatever ``dtype`` is; BatchNorm statistics are
    float32 and live in the ``batch_stats`` collection (call with ``mutable=['batch_stats']`` when
    ``train=True``). ``conv_impl``: ``'auto'`` | ``'cpu_fast'`` | ``'standard'``, the form of the 1x1 /
    transposed convolutions and the stem pool's gradient (see :mod:`kinpose_jax.models.resnet`).
    The fields mirror ``config.model`` (configs/default.py); build it with :func:`build_pose_net`.
    ``tree`` is None unless ``head='kinematic'``; ``bn_axis_name`` is not a config field (see
    :func:`build_pose_net`).
    """

    backbone_depth: int
    head: str
    num_joints: int
    depth_bins: int
    deconv_filters: int
    num_deconv_layers: int
    deconv_kernel: int
    tree: KinematicTree | None
    kinematic_view: str
    box_mm: float
    dtype: Any
    conv_impl: str
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3] (NHWC), got shape {images.shape}")
        feats = ResNet(self.backbone_depth, self.dtype, self.bn_axis_name, self.conv_impl,
                       name="backbone")(images, train)
        if self.head == "integral":
            heatmaps = IntegralHead(
                self.num_joints, self.depth_bins, self.deconv_filters, self.num_deconv_layers, self.deconv_kernel,
                self.dtype, self.bn_axis_name, self.conv_impl, name="head",
            )(feats, train)
            joints = integral.softargmax_3d(heatmaps, self.num_joints, self.depth_bins, layout="NHWC")
            return dict(joints=joints.astype(jnp.float32), heatmaps=heatmaps)
        if self.head == "direct":
            return dict(joints=DirectHead(self.num_joints, self.dtype, name="head")(feats, train))
        if self.head == "kinematic":
            if self.tree is None:
                raise ValueError("head='kinematic' needs a kinematic tree")
            index = dataset_joint_indices(self.tree, self.num_joints)
            out = KinematicHead(self.tree, self.kinematic_view, self.box_mm, self.dtype, name="head")(feats, train)
            if index is not None:  # a larger tree: the dataset's joints by name, every tree joint kept apart
                out = dict(out, joints=out["joints"][:, index, :], tree_joints=out["joints"])
            return out
        raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")


def dataset_joint_indices(tree: KinematicTree, num_joints: int) -> tuple[int, ...] | None:
    """Which tree output joints are the ``num_joints`` dataset joints.

    None (all, in tree order) when the tree has exactly ``num_joints`` output joints (the presets).
    A larger tree must contain every Human3.6M joint (``skeleton.H36M_JOINT_NAMES``, num_joints
    = 18) by name: returns their tree output indices in H36M order; its other joints are predicted
    but not supervised. Raises ValueError otherwise.
    """
    if tree.num_joints == num_joints:
        return None
    if num_joints != skeleton.H36M_NUM_JOINTS or tree.num_joints < num_joints:
        raise ValueError(f"kinematic tree has {tree.num_joints} output joints but num_joints={num_joints}; a larger "
                         f"tree needs num_joints={skeleton.H36M_NUM_JOINTS} (the Human3.6M joints, mapped by name)")
    missing = [n for n in skeleton.H36M_JOINT_NAMES if n not in tree.joint_names]
    if missing:
        raise ValueError(f"kinematic tree lacks the dataset joints {missing} (its output joints must include every "
                         f"Human3.6M joint by name: {list(skeleton.H36M_JOINT_NAMES)})")
    return tuple(tree.joint_names.index(n) for n in skeleton.H36M_JOINT_NAMES)


#: The ``config.model`` fields :func:`build_pose_net` reads (configs/default.py defines them).
MODEL_FIELDS: tuple[str, ...] = ("backbone", "head", "num_joints", "depth_bins", "deconv_filters", "num_deconv_layers",
                                 "deconv_kernel", "kinematic_tree", "kinematic_view", "box_mm", "dtype", "conv_impl")


def model_field(model_config: Any, key: str) -> Any:
    """``model_config[key]`` (a ConfigDict, dict or object with that attribute); ValueError naming
    ``config.model.<key>`` when it is missing (complete an older saved config with
    ``configs.default.with_defaults``)."""
    missing = object()
    if isinstance(model_config, Mapping) or hasattr(model_config, "get"):
        value = model_config.get(key, missing)
    else:
        value = getattr(model_config, key, missing)
    if value is missing:
        raise ValueError(f"config.model.{key} is missing from the model config (every field of "
                         f"configs/default.py's config.model is needed; configs.default.with_defaults fills them)")
    return value


def parse_backbone(name: str | int) -> int:
    """``'resnet50'`` / ``'50'`` / ``50`` -> 50."""
    s = str(name).lower().removeprefix("resnet")
    if not s.isdigit() or int(s) not in RESNET_SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {['resnet%d' % d for d in sorted(RESNET_SPECS)]}")
    return int(s)


def build_pose_net(model_config: Any, bn_axis_name: str | None = None) -> PoseNet:
    """Builds :class:`PoseNet` from ``config.model`` (an ml_collections ConfigDict or a dict holding
    every field of :data:`MODEL_FIELDS`, configs/default.py documents them; ValueError naming a
    missing or unknown one).

    ``kinematic_tree`` may also be a KinematicTree (a preset name or ``'module.path:function'``
    otherwise); a tree with more output joints than num_joints is mapped by name
    (:func:`dataset_joint_indices`). ``bn_axis_name``: the mapped axis over which BatchNorm averages
    batch statistics in training (None = the batch the model sees).
    """
    def get(key):
        return model_field(model_config, key)

    dtype_name = str(get("dtype"))
    if dtype_name not in DTYPES:
        raise ValueError(f"unknown model dtype {dtype_name!r}; choose one of {DTYPES}")
    head = str(get("head"))
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
    conv_impl = str(get("conv_impl"))
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; choose one of {CONV_IMPLS}")
    tree = get("kinematic_tree")
    tree = (get_tree(tree) if isinstance(tree, str) else tree) if head == "kinematic" else None
    return PoseNet(
        backbone_depth=parse_backbone(get("backbone")),
        head=head,
        num_joints=int(get("num_joints")),
        depth_bins=int(get("depth_bins")),
        deconv_filters=int(get("deconv_filters")),
        num_deconv_layers=int(get("num_deconv_layers")),
        deconv_kernel=int(get("deconv_kernel")),
        tree=tree,
        kinematic_view=str(get("kinematic_view")),
        box_mm=float(get("box_mm")),
        dtype=getattr(jnp, dtype_name),
        conv_impl=conv_impl,
        bn_axis_name=bn_axis_name,
    )


def init_variables(model: PoseNet, rng: jax.Array, image_size: int | tuple[int, int]) -> dict:
    """Initial ``{'params', 'batch_stats'}`` for ``model`` (one dummy image of the given size).
    One jitted program per (model, size): equal models (equal configs) share it within a process."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    return dict(_init(model, rng, int(h), int(w)))


def variable_shapes(model: PoseNet, image_size: int | tuple[int, int]) -> dict:
    """The ShapeDtypeStructs of :func:`init_variables`' result, without compiling or running the
    initializers: the target to restore or load weights into when every leaf comes from them."""
    return jax.eval_shape(lambda: init_variables(model, jax.random.key(0), image_size))


@functools.partial(jax.jit, static_argnums=(0, 2, 3))
def _init(model: PoseNet, rng: jax.Array, h: int, w: int) -> dict:
    return model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32), train=False)
