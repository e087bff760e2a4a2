"""Semantic checks of an experiment config, with messages that name the field.

Imports neither JAX nor the model code: ``main.py`` runs :func:`validate` before JAX starts.
"""

from __future__ import annotations

import math
import numbers
import re

import ml_collections

from kinpose_jax.registry import BACKBONES, BN_SYNC, CONV_IMPLS, DTYPES, HEADS, KINEMATIC_VIEWS, RECORD_LAYOUTS
from kinpose_jax.skeleton import H36M_NUM_JOINTS

#: Names of ``kinpose_jax.kinematics.presets.PRESETS`` (kept jax-free here; a test checks they agree).
KINEMATIC_TREES = ("h36m17", "h36m18", "mpii16", "seed_h36m18")
#: ``model.kinematic_tree`` naming a function that returns a KinematicTree.
TREE_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
#: Joints of the data (H36M-18).
NUM_JOINTS = H36M_NUM_JOINTS
#: Largest finite float32: the learning rate is applied in float32.
FLOAT32_MAX = 3.4028234663852886e38


def _fail(field: str, value, expected: str):
    raise ValueError(f"config.{field} = {value!r} is invalid: expected {expected}")


def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _number(config, field: str, low=None, high=None, low_open=False, high_open=False, integer=False,
            expected: str | None = None):
    """Checks ``config.<field>`` is a (finite) number in the given range."""
    value = config
    for part in field.split("."):
        value = value[part]
    ok = _is_number(value) and math.isfinite(value) and (not integer or float(value) == int(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if expected is None:
            kind = "an integer" if integer else "a number"
            lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
            hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
            expected = f"{kind} {' and '.join(b for b in (lo, hi) if b)}".strip()
        _fail(field, value, expected)


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises ValueError naming the first bad field and the allowed values; returns the config
    unchanged. Checks every field the training driver reads (configs/default.py)."""
    m, d, o = config.model, config.data, config.optim
    if m.backbone not in BACKBONES:
        _fail("model.backbone", m.backbone, f"one of {BACKBONES}")
    if m.head not in HEADS:
        _fail("model.head", m.head, f"one of {HEADS}")
    if m.kinematic_tree not in KINEMATIC_TREES and not TREE_FUNCTION.fullmatch(str(m.kinematic_tree)):
        _fail("model.kinematic_tree", m.kinematic_tree,
              f"one of {list(KINEMATIC_TREES)} or 'module.path:function' returning a KinematicTree")
    if m.kinematic_view not in KINEMATIC_VIEWS:
        _fail("model.kinematic_view", m.kinematic_view, f"one of {KINEMATIC_VIEWS}")
    if m.head == "kinematic" and m.kinematic_tree not in KINEMATIC_TREES:
        _check_kinematic_tree(m.kinematic_tree, m.num_joints)  # imports the user's tree function
    if m.dtype not in DTYPES:
        _fail("model.dtype", m.dtype, f"one of {DTYPES}")
    if m.conv_impl not in CONV_IMPLS:
        _fail("model.conv_impl", m.conv_impl, f"one of {CONV_IMPLS}")
    if m.bn_sync not in BN_SYNC:
        _fail("model.bn_sync", m.bn_sync, f"one of {BN_SYNC}")
    if m.num_joints != NUM_JOINTS:
        _fail("model.num_joints", m.num_joints, f"{NUM_JOINTS} (the H36M-18 joints of the data)")
    _number(config, "model.depth_bins", 1, integer=True)
    _number(config, "model.deconv_filters", 1, integer=True)
    _number(config, "model.num_deconv_layers", 0, integer=True)
    _number(config, "model.deconv_kernel", 1, integer=True)
    _number(config, "model.box_mm", 0, low_open=True, expected="a length in mm > 0")
    if config.loss not in ("l1", "l2"):
        _fail("loss", config.loss, "'l1' or 'l2'")
    for field in ("num_epochs", "per_device_batch_size", "log_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints", "eval_every_epochs"):
        _number(config, field, 1, integer=True, expected="an integer >= 1")
    _number(config, "seed", 0, integer=True)
    if d.patch_size < 32 or d.patch_size % 32:
        _fail("data.patch_size", d.patch_size, "a multiple of 32 (the ResNet stride), >= 32")
    _number(config, "data.mpii_fraction", 0.0, 1.0, high_open=True, expected="a fraction in [0, 1)")
    _number(config, "data.worker_count", -1, integer=True,
            expected="an integer >= -1 (-1 = auto, 0 = in the main process)")
    _number(config, "data.read_threads", 1, integer=True)
    if d.record_layout not in RECORD_LAYOUTS:
        _fail("data.record_layout", d.record_layout, f"one of {RECORD_LAYOUTS}")
    _number(config, "data.worker_buffer_size", 1, integer=True)
    _number(config, "data.scale_factor", 0.0, 1.0, high_open=True,
            expected="a factor in [0, 1) (scales 1 +- factor must stay > 0)")
    _number(config, "data.rotation_factor", 0.0, expected="degrees >= 0")
    for field in ("rotation_prob", "flip_prob"):
        _number(config, f"data.{field}", 0.0, 1.0, expected="a probability in [0, 1]")
    _number(config, "data.color_factor", 0.0, 1.0, expected="a factor in [0, 1]")
    if d.synthetic:
        from kinpose_jax.synthetic.h36m import MIN_IMAGE_SIZE  # numpy/OpenCV only

        _number(config, "data.synthetic_train_folders", 1, integer=True)
        _number(config, "data.synthetic_frames_per_folder", 1, integer=True)
        _number(config, "data.synthetic_image_size", MIN_IMAGE_SIZE, integer=True,
                expected=f"an image side in px >= {MIN_IMAGE_SIZE}")
    _number(config, "optim.learning_rate", 0.0, FLOAT32_MAX, low_open=True,
            expected="a learning rate > 0 that is finite in float32 (<= 3.4e38)")
    epochs = tuple(o.lr_decay_epochs)
    if not all(_is_number(e) and math.isfinite(e) and e > 0 for e in epochs) or list(epochs) != sorted(epochs):
        _fail("optim.lr_decay_epochs", o.lr_decay_epochs, "increasing epochs > 0, e.g. (270, 290)")
    _number(config, "optim.lr_decay_factor", 0.0, 1.0, low_open=True, expected="a factor in (0, 1]")
    for field in ("weight_decay", "grad_clip_norm"):
        _number(config, f"optim.{field}", 0.0, expected=">= 0 (0 disables it)")
    if config.max_eval_batches == 0 or config.max_eval_batches < -1:
        _fail("max_eval_batches", config.max_eval_batches, "-1 (the whole evaluation set) or an integer >= 1")
    if config.steps_per_epoch == 0 or config.steps_per_epoch < -1:
        _fail("steps_per_epoch", config.steps_per_epoch, "-1 (dataset size // global batch) or an integer >= 1")
    _number(config, "num_vis_samples", 0, integer=True)
    return config


def _check_kinematic_tree(name: str, num_joints: int) -> None:
    """``model.kinematic_tree``: a preset or ``module.path:function`` returning a tree that holds
    the dataset's joints (kinpose_jax.models.dataset_joint_indices)."""
    from kinpose_jax.kinematics.presets import PRESETS, get_tree
    from kinpose_jax.models import dataset_joint_indices

    expected = f"one of {sorted(PRESETS)} or 'module.path:function' returning a KinematicTree"
    if name not in PRESETS and ":" not in name:
        _fail("model.kinematic_tree", name, expected)
    try:
        dataset_joint_indices(get_tree(name), num_joints)
    except ValueError as err:
        _fail("model.kinematic_tree", name, f"{expected} ({err})")
