"""Semantic checks of an experiment config, with messages that name the field."""

from __future__ import annotations

import ml_collections

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
HEADS = ("integral", "direct", "kinematic")


def _fail(field: str, value, expected: str):
    raise ValueError(f"config.{field} = {value!r} is invalid: expected {expected}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises ValueError naming the first bad field; returns the config unchanged."""
    from kinpose_jax.kinematics.presets import PRESETS
    from kinpose_jax.models.resnet import CONV_IMPLS
    from kinpose_jax.parallel import BN_SYNC

    m = config.model
    if m.backbone not in BACKBONES:
        _fail("model.backbone", m.backbone, f"one of {BACKBONES}")
    if m.head not in HEADS:
        _fail("model.head", m.head, f"one of {HEADS}")
    if m.head == "kinematic" and m.kinematic_tree not in PRESETS:
        _fail("model.kinematic_tree", m.kinematic_tree, f"one of {sorted(PRESETS)}")
    if m.dtype not in ("float32", "bfloat16"):
        _fail("model.dtype", m.dtype, "'float32' or 'bfloat16'")
    if m.get("conv_impl", "auto") not in CONV_IMPLS:
        _fail("model.conv_impl", m.conv_impl, f"one of {CONV_IMPLS}")
    if m.get("bn_sync", "global") not in BN_SYNC:
        _fail("model.bn_sync", m.bn_sync, f"one of {BN_SYNC}")
    if m.depth_bins < 1:
        _fail("model.depth_bins", m.depth_bins, "a positive integer")
    if config.loss not in ("l1", "l2"):
        _fail("loss", config.loss, "'l1' or 'l2'")
    for field in ("num_epochs", "per_device_batch_size", "log_every_steps", "checkpoint_every_steps",
                  "keep_checkpoints", "eval_every_epochs"):
        if config[field] < 1:
            _fail(field, config[field], "an integer >= 1")
    if config.data.patch_size < 32 or config.data.patch_size % 32:
        _fail("data.patch_size", config.data.patch_size, "a multiple of 32 (the ResNet stride), >= 32")
    if not 0.0 <= config.data.mpii_fraction < 1.0:
        _fail("data.mpii_fraction", config.data.mpii_fraction, "a fraction in [0, 1)")
    if config.optim.learning_rate <= 0:
        _fail("optim.learning_rate", config.optim.learning_rate, "> 0")
    if list(config.optim.lr_decay_epochs) != sorted(config.optim.lr_decay_epochs):
        _fail("optim.lr_decay_epochs", config.optim.lr_decay_epochs, "increasing epochs")
    if not 0.0 < config.optim.lr_decay_factor <= 1.0:
        _fail("optim.lr_decay_factor", config.optim.lr_decay_factor, "a factor in (0, 1]")
    for field in ("weight_decay", "grad_clip_norm"):
        if config.optim[field] < 0:
            _fail(f"optim.{field}", config.optim[field], ">= 0 (0 disables it)")
    if config.max_eval_batches == 0 or config.max_eval_batches < -1:
        _fail("max_eval_batches", config.max_eval_batches, "-1 (the whole evaluation set) or an integer >= 1")
    if config.steps_per_epoch == 0 or config.steps_per_epoch < -1:
        _fail("steps_per_epoch", config.steps_per_epoch, "-1 (dataset size // global batch) or an integer >= 1")
    if config.num_vis_samples < 0:
        _fail("num_vis_samples", config.num_vis_samples, "an integer >= 0")
    return config
