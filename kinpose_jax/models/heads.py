"""Pose heads on top of a backbone feature map [B, h, w, C] (NHWC).

* :class:`IntegralHead` — deconvolutions + 1x1 conv to volumetric heatmaps [B, H, W, J*D]
  (channel ``j*D + d``, the same channel order as the original's [B, J*D, H, W]).
* :class:`DirectHead` — global average pool + linear to joints [B, J, 3] (normalized).
* :class:`KinematicHead` — global average pool + linear to (translation, joint angles, scale),
  then forward kinematics of a :class:`~kinpose_jax.kinematics.KinematicTree` to joints [B, J, 3].

Normalized units (docs/DESIGN.md#normalized-units): x = u/W - 0.5, y = v/H - 0.5 (fractions of the 256 px patch, which
covers a 2000 mm box around the pelvis) and z = (depth - pelvis depth) / 2000 mm. All three are
therefore about ``1 / box_mm`` per mm, so the kinematic head converts mm to normalized units by
dividing by ``box_mm`` (default 2000).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kinpose_jax.kinematics import KinematicTree, forward_kinematics, rest_pose
from kinpose_jax.models.deconv import TorchConvTranspose
from kinpose_jax.models.resnet import PointwiseConv, make_norm
from kinpose_jax.skeleton import BOX_MM

#: The original's init for deconv / final conv weights: N(0, 0.001), zero bias.
head_init = nn.initializers.normal(stddev=0.001)


class IntegralHead(nn.Module):
    """features [B,h,w,C] -> heatmaps [B, h*2^L, w*2^L, J*D] float32 (L = num_deconv_layers).

    Torch equivalent: ``features = [ConvTranspose2d(k=4, s=2, p=1, bias=False), BatchNorm2d, ReLU] * L``
    then a 1x1 ``Conv2d(bias=True)``, which the original's ``DeconvHead`` appends to ``features`` (as
    ``features.{3L}``) and this repository's torch reference names ``final_layer``; Flax module
    names are ``features_{3i}`` (deconv), ``features_{3i+1}`` (BN) and ``final_layer``.
    The deconv kernel is stored like ``nn.ConvTranspose(transpose_kernel=True)``: [kh, kw, out, in]
    (torch's [in, out, kh, kw] permuted); with the CPU fast paths (``conv_impl``) it runs as 4
    phase convolutions (see :mod:`kinpose_jax.models.deconv`), which XLA:CPU differentiates much
    faster. Under mixed precision (``dtype`` bf16) the final 1x1 conv takes bf16 operands and
    accumulates and outputs float32, so the softmax over the D*H*W bins sees unrounded logits.
    """

    num_joints: int
    depth_bins: int
    filters: int
    num_layers: int
    kernel: int
    dtype: Any
    bn_axis_name: str | None
    conv_impl: str

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        norm = make_norm(train, self.dtype, self.bn_axis_name)
        for i in range(self.num_layers):
            x = TorchConvTranspose(self.filters, self.kernel, self.dtype, jnp.float32, head_init, self.conv_impl,
                                   name=f"features_{3 * i}")(x)
            x = nn.relu(norm(name=f"features_{3 * i + 1}")(x))
        return PointwiseConv(self.num_joints * self.depth_bins, use_bias=True, dtype=self.dtype,
                             param_dtype=jnp.float32, kernel_init=head_init, conv_impl=self.conv_impl,
                             out_dtype=jnp.float32, name="final_layer")(x)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[B, h, w, C] -> [B, C] (mean over space, accumulated in fp32)."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class DirectHead(nn.Module):
    """features [B,h,w,C] -> joints [B, J, 3] normalized (avg pool -> ``fc``). Torch: ``head.fc``.

    The pooling and ``fc`` always compute in float32 (``dtype`` is the backbone's compute dtype,
    kept for a uniform interface): only the backbone runs in bf16 under mixed precision.
    """

    num_joints: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        del train
        # fp32 whatever ``dtype``: the output is the prediction itself; bf16 would round it to ~3 digits
        y = nn.Dense(self.num_joints * 3, dtype=jnp.float32, param_dtype=jnp.float32, kernel_init=head_init,
                     name="fc")(global_avg_pool(x))
        return y.astype(jnp.float32).reshape(y.shape[0], self.num_joints, 3)


def upright_view_matrix(tree: KinematicTree) -> np.ndarray:
    """[3, 3] rotation taking the tree's output axes to camera axes (x right, y down, z away
    from the camera) so that the rest pose stands upright and faces the camera.

    Derived from the rest pose: person's left (``l_hip - r_hip``) -> +x, up (``neck - pelvis``)
    -> -y, forward (left x up) -> -z. Raises ValueError if the tree lacks these joints, or if its
    nose (when present) points backwards (a mirrored tree: use ``kinematic_view='identity'``).
    """
    needed = ("l_hip", "r_hip", "neck", "pelvis")
    missing = [n for n in needed if n not in tree.joint_names]
    if missing:
        raise ValueError(
            f"kinematic_view='upright' needs output joints {needed}; tree lacks {missing}. "
            "Use kinematic_view='identity' for this tree."
        )
    rest = _rest_pose(tree)
    pos = {n: rest[tree.joint_index(n)] for n in needed + (("nose",) if "nose" in tree.joint_names else ())}
    left = pos["l_hip"] - pos["r_hip"]
    left /= np.linalg.norm(left)
    up = pos["neck"] - pos["pelvis"]
    up -= up.dot(left) * left
    up /= np.linalg.norm(up)
    fwd = np.cross(left, up)
    if "nose" in pos and (pos["nose"] - pos["neck"]).dot(fwd) < 0:
        raise ValueError("the tree's nose points backwards (left x up): it looks mirrored; use kinematic_view='identity'")
    src = np.stack([left, up, fwd], axis=1)  # columns: tree axes of left, up, forward
    dst = np.asarray([[1.0, 0, 0], [0, -1.0, 0], [0, 0, -1.0]]).T  # camera axes of left, up, forward
    return dst @ src.T


@functools.lru_cache(maxsize=64)
def _rest_pose(tree: KinematicTree) -> np.ndarray:
    """[J, 3] :func:`rest_pose` in float64, by one compiled program run outside any trace (the
    head asks for it while a model is traced; evaluating it there would run FK op by op)."""
    return np.asarray(jax.jit(lambda: rest_pose(tree)).lower().compile()(), np.float64)


def view_matrix(tree: KinematicTree, view: str) -> np.ndarray:
    """``'upright'`` -> :func:`upright_view_matrix`; ``'identity'`` -> the tree's output axes as they are."""
    if view == "upright":
        return upright_view_matrix(tree)
    if view == "identity":
        return np.eye(3)
    raise ValueError(f"unknown kinematic_view {view!r}; choose 'upright' or 'identity'")


def kinematic_num_outputs(tree: KinematicTree) -> int:
    """Linear outputs of :class:`KinematicHead`: 3 translation + ``tree.num_dofs`` angles + 1 scale."""
    return 3 + tree.num_dofs + 1


def decode_kinematic(
    raw: jax.Array, tree: KinematicTree, view: np.ndarray, box_mm: float = BOX_MM
) -> dict[str, jax.Array]:
    """Turns the head's linear outputs into joints (pure function).

    Args:
      raw: [B, 3 + num_dofs + 1] = translation (normalized units, camera axes), angles (radians,
        ``tree.param_names`` order), raw scale ``s``.
      tree: skeleton with offsets in mm.
      view: [3, 3] rotation from the tree's output axes to camera axes (see :func:`view_matrix`).
      box_mm: mm covered by the normalized unit (the patch's box side).
    Returns:
      dict with ``joints`` [B, J, 3] normalized = translation + view @ FK(angles, scale),
      ``translation`` [B, 3], ``angles`` [B, num_dofs], ``scale`` [B] = (1 + s) / box_mm, the factor
      applied to the mm offsets (so s = 0 means the tree's own bone lengths).
    """
    raw = raw.astype(jnp.float32)
    n = kinematic_num_outputs(tree)
    if raw.shape[-1] != n:
        raise ValueError(f"kinematic head output must be [..., {n}] (3 + num_dofs + 1), got shape {raw.shape}")
    translation = raw[..., :3]
    angles = raw[..., 3:3 + tree.num_dofs]
    scale = (1.0 + raw[..., -1]) / box_mm
    local = forward_kinematics(tree, angles, scale=scale).joints
    joints = translation[..., None, :] + jnp.einsum("ij,...kj->...ki", jnp.asarray(view, jnp.float32), local)
    return dict(joints=joints, translation=translation, angles=angles, scale=scale)


class KinematicHead(nn.Module):
    """features [B,h,w,C] -> dict(joints [B,J,3] normalized, translation, angles, scale).

    avg pool -> ``fc`` (3 + num_dofs + 1 outputs, exactly what is used) -> :func:`decode_kinematic`.
    Pooling, ``fc`` and forward kinematics always compute in float32, whatever ``dtype`` (the
    backbone's compute dtype).
    The kernel starts at zero and the bias at zero, so the first output is the tree's rest pose at
    its own bone lengths (mm / box_mm), pelvis at the patch centre, upright and facing the camera
    (with ``view='upright'``), far from the gimbal lock of the root's z-x-y angles.
    """

    tree: KinematicTree
    view: str
    box_mm: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
        del train
        # fp32 whatever ``dtype`` (angles, translation and scale feed FK; bf16 would round them)
        raw = nn.Dense(kinematic_num_outputs(self.tree), dtype=jnp.float32, param_dtype=jnp.float32,
                       kernel_init=nn.initializers.zeros, name="fc")(global_avg_pool(x))
        return decode_kinematic(raw, self.tree, view_matrix(self.tree, self.view), self.box_mm)
