"""Evaluation: predict -> (flip test) -> decode to image space -> back-project with the true
root depth -> MPJPE / PA-MPJPE / rigid-aligned / per-group table (SPEC §4-§5).

The device part (:func:`make_predict_fn`) returns patch-pixel joints; the host part
(:class:`ErrorAccumulator`) sums per-sample errors over *valid* samples only, so padded
evaluation batches never count a sample twice.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kinpose_jax import integral, losses, metrics, skeleton
from kinpose_jax.data import augment


def make_joints_fn(model, patch_size: int, flip_test: bool) -> Callable:
    """``joints(variables, images [B, P, P, 3]) -> {'joints': [B, J, 3]}`` in patch pixels (depth
    in patch-width units), plus ``'tree_joints'`` [B, J_tree, 3] when the model outputs them (a
    kinematic tree larger than the dataset's joint set; from the unflipped patch only).

    With ``flip_test`` the mirrored patch is run too and merged (SPEC §4 "Flip test").
    """
    def to_px(x):
        return integral.normalized_to_patch(x.astype(jnp.float32), patch_size, patch_size)

    def joints(variables, images):
        out = model.apply(variables, images, train=False)
        px = to_px(out["joints"])
        if flip_test:
            flipped = model.apply(variables, images[:, :, ::-1, :], train=False)["joints"]
            px = integral.merge_flip_test(px, to_px(flipped), patch_size, skeleton.H36M_FLIP_PAIRS)
        result = {"joints": px}
        if "tree_joints" in out:
            result["tree_joints"] = to_px(out["tree_joints"])
        return result

    return joints


def make_predict_fn(model, patch_size: int, flip_test: bool, loss_name: str = "l1") -> Callable:
    """``predict(variables, batch) -> (joints_px [B, J, 3] patch pixels, per-sample loss [B])``.

    Joints as :func:`make_joints_fn`. The loss is the training loss on normalized coordinates
    (for best-checkpoint selection).
    """
    loss_fn = losses.get_loss(loss_name)
    joints_fn = make_joints_fn(model, patch_size, flip_test)

    def predict(variables, batch):
        px = joints_fn(variables, batch["image"])["joints"]
        norm = integral.patch_to_normalized(px, patch_size, patch_size)
        per_sample = jax.vmap(lambda p, t, w: loss_fn(p[None], t[None], w[None]))(
            norm, batch["joints"], batch["joints_vis"])
        return px, per_sample

    return predict


class ErrorAccumulator:
    """Sums per-sample errors over valid samples; ``result()`` gives means in mm."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.loss_sum = 0.0

    def add(self, joints_px, per_sample_loss, batch, patch_size: int, box_mm: float = 2000.0
            ) -> tuple[np.ndarray, np.ndarray]:
        """Adds one batch of patch-pixel predictions; returns (pred_cam, gt_cam) [B, 18, 3] mm.

        Decoding to the image (inverse patch affine, scale 1, no rotation; depth ``z * box_mm``)
        is the data pipeline's own :func:`~kinpose_jax.data.augment.normalized_to_image`.
        """
        valid = np.asarray(batch["valid"]).astype(bool)
        norm = np.asarray(integral.patch_to_normalized(np.asarray(joints_px), patch_size, patch_size))
        img = augment.normalized_to_image(norm, batch["center"], batch["box_size"], (patch_size, patch_size), box_mm)
        pelvis_depth = np.asarray(batch["pelvis"])[:, 2]
        pred_cam = np.asarray(metrics.pixel_to_camera(img, pelvis_depth, np.asarray(batch["fl"]),
                                                      np.asarray(batch["c_p"])))
        gt_cam = np.asarray(batch["joints_cam"])
        if valid.any():
            errs = metrics.h36m_errors(pred_cam[valid], gt_cam[valid])
            for k, v in errs.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(np.sum(np.asarray(v, np.float64)))
            self.loss_sum += float(np.sum(np.asarray(per_sample_loss)[valid]))
            self.count += int(valid.sum())
        return pred_cam, gt_cam

    def summed_over_processes(self) -> "ErrorAccumulator":
        """A new accumulator holding the sums of every process's accumulator (multi-process
        evaluation: each process saw its own rows). Every process must call it."""
        from jax.experimental import multihost_utils

        keys = metrics.h36m_error_names()
        local = np.asarray([self.sums.get(k, 0.0) for k in keys] + [self.loss_sum, self.count], np.float64)
        total = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, local.size).sum(axis=0)
        out = ErrorAccumulator()
        out.sums = {k: float(v) for k, v in zip(keys, total[:len(keys)])}
        out.loss_sum, out.count = float(total[-2]), int(round(total[-1]))
        return out

    def result(self) -> dict[str, float]:
        if not self.count:
            raise ValueError("evaluation saw no valid samples")
        out = {k: v / self.count for k, v in self.sums.items()}
        out["val_loss"] = self.loss_sum / self.count
        out["num_samples"] = float(self.count)
        return out
