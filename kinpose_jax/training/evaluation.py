"""Evaluation: predict -> (flip test) -> decode to image space -> back-project with the true
root depth -> Protocol #1 / #2, the original's errors, PCK, per-joint-group / per-action / per-subject /
per-camera tables (docs/DESIGN.md#evaluation, :mod:`kinpose_jax.metrics`).

The device part (:func:`make_eval_fn`, jitted on full, padded batches: one compiled program
for every batch) predicts patch-pixel joints, decodes them to camera mm and computes every
per-sample metric; the host part (:class:`ErrorAccumulator`) sums the per-sample errors over
*valid* samples only, so padded evaluation batches never count a sample twice, and can keep
every prediction (:func:`save_predictions`) for :mod:`kinpose_jax.evaluate_predictions` to
recompute all numbers.
"""

from __future__ import annotations

import io
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from kinpose_jax import geometry, integral, losses, metrics, skeleton, storage
from kinpose_jax.data import augment, h36m_layout
from kinpose_jax.data.pipeline import MODEL_KEYS


def make_joints_fn(model, patch_size: int, flip_test: bool) -> Callable:
    """``joints(variables, images [B, P, P, 3]) -> {'joints': [B, J, 3]}`` in patch pixels (depth
    in patch-width units), plus ``'tree_joints'`` [B, J_tree, 3] when the model outputs them (a
    kinematic tree larger than the dataset's joint set; from the unflipped patch only).

    With ``flip_test`` the mirrored patch is run too and merged (docs/DESIGN.md#flip-test).
    """
    def to_px(x):
        return geometry.normalized_to_patch(x.astype(jnp.float32), (patch_size, patch_size))

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

    Joints as :func:`make_joints_fn`, of uint8 ``image`` [B, H, W, 3] normalized here (with
    ``gains`` [B, 3] if present). The loss is the training loss on normalized coordinates (for
    best-checkpoint selection).
    """
    loss_fn = losses.get_loss(loss_name)
    joints_fn = make_joints_fn(model, patch_size, flip_test)

    def predict(variables, batch):
        px = joints_fn(variables, augment.normalize_pixels(batch["image"], batch.get("gains")))["joints"]
        norm = geometry.patch_to_normalized(px, (patch_size, patch_size))
        per_sample = jax.vmap(lambda p, t, w: loss_fn(p[None], t[None], w[None]))(
            norm, batch["joints"], batch["joints_vis"])
        return px, per_sample

    return predict


#: The camera data of an evaluation batch that decoding and the metrics read (besides the predictions).
CAMERA_KEYS: tuple[str, ...] = ("center", "box_size", "fl", "c_p", "pelvis", "joints_cam")
#: The batch fields :func:`make_eval_fn` reads.
DEVICE_KEYS: tuple[str, ...] = MODEL_KEYS + CAMERA_KEYS


def batch_metrics(joints_px, camera: dict, patch_size: int, box_mm: float = skeleton.BOX_MM) -> dict:
    """Decodes patch-pixel predictions and computes every metric, per row (padding rows too).

    Decoding (docs/DESIGN.md#decoding), once, jax.numpy (jit-able): patch px straight to the image
    (:func:`~kinpose_jax.geometry.patch_to_image`, scale 1, no rotation), then to camera mm with
    the true root (pelvis) depth (:func:`~kinpose_jax.geometry.image_to_camera`).

    Args:
      joints_px: [B, 18, 3] patch px (depth in patch-width units).
      camera: :data:`CAMERA_KEYS` of the batch: ``center``, ``box_size``, ``fl``, ``c_p`` [B, 2]
        px, ``pelvis`` [B, 3] mm, ``joints_cam`` [B, 18, 3] mm.
    Returns:
      ``{'pred_cam': [B, 18, 3] mm, 'errors': {name: [B]}}``, the errors of
      :func:`~kinpose_jax.metrics.h36m_errors` against ``joints_cam``.
    """
    img = geometry.patch_to_image(joints_px, camera["center"], camera["box_size"], (patch_size, patch_size), box_mm,
                                  xp=jnp)
    pred_cam = geometry.image_to_camera(img, jnp.asarray(camera["pelvis"], jnp.float32)[:, 2],
                                        jnp.asarray(camera["fl"], jnp.float32), jnp.asarray(camera["c_p"], jnp.float32),
                                        xp=jnp)
    return {"pred_cam": pred_cam, "errors": metrics.h36m_errors(pred_cam, jnp.asarray(camera["joints_cam"], jnp.float32))}


def make_eval_fn(model, patch_size: int, flip_test: bool, loss_name: str = "l1",
                 box_mm: float = skeleton.BOX_MM) -> Callable:
    """``eval(variables, batch) -> {'joints_px': [B, J, 3], 'loss': [B], 'pred_cam': [B, 18, 3],
    'errors': {name: [B]}}``: :func:`make_predict_fn`, then :func:`batch_metrics`, on every row
    of ``batch`` (:data:`DEVICE_KEYS`; padding rows too: the host drops them)."""
    predict = make_predict_fn(model, patch_size, flip_test, loss_name)

    def eval_step(variables, batch):
        px, loss = predict(variables, batch)
        return {"joints_px": px, "loss": loss, **batch_metrics(px, {k: batch[k] for k in CAMERA_KEYS}, patch_size,
                                                                box_mm)}

    return eval_step


_batch_metrics_jit = jax.jit(batch_metrics, static_argnames=("patch_size", "box_mm"))
_errors_jit = jax.jit(metrics.h36m_errors)


#: Per-group tables: the column of the batch's ``sequence`` [B, 4] (subject, action, subaction,
#: camera) each is grouped by.
GROUPINGS: dict[str, int] = {"action": 1, "subject": 0, "camera": 3}
#: Metrics of the per-group tables: Protocol #1 and Protocol #2.
TABLE_METRICS: tuple[str, ...] = ("mpjpe", "pa_mpjpe")
#: Ids are two-digit numbers in folder names (``s_SS_act_AA_..._ca_CC``): a dense table per grouping.
MAX_GROUP_ID = 100
#: Per-sample arrays kept for ``save_predictions`` (and the ``.npz`` written from them).
PREDICTION_KEYS: tuple[str, ...] = ("image_index", "sequence", "frame", "pred_cam", "gt_cam", "loss")


class ErrorAccumulator:
    """Sums per-sample errors over valid samples, overall and per action / subject / camera;
    ``result()`` gives the overall means, ``tables()`` the per-group ones (mm).

    With ``keep_predictions`` every added row is kept too (``predictions()``), so a run's
    predictions can be saved and every number recomputed from them."""

    def __init__(self, keep_predictions: bool = False):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.loss_sum = 0.0
        # [grouping][id] -> sums of TABLE_METRICS, then the sample count
        self.group_sums = {g: np.zeros((MAX_GROUP_ID, len(TABLE_METRICS) + 1)) for g in GROUPINGS}
        self._rows: list[dict[str, np.ndarray]] | None = [] if keep_predictions else None

    def add(self, joints_px, per_sample_loss, batch, patch_size: int, box_mm: float = skeleton.BOX_MM
            ) -> tuple[np.ndarray, np.ndarray]:
        """Adds one batch of patch-pixel predictions [B, J, 3] (decoded and measured by
        :func:`batch_metrics`, jitted); returns (pred_cam, gt_cam) [B, 18, 3] mm."""
        out = jax.device_get(_batch_metrics_jit(joints_px, {k: batch[k] for k in CAMERA_KEYS}, patch_size, box_mm))
        pred_cam, gt_cam = np.asarray(out["pred_cam"]), np.asarray(batch["joints_cam"])
        self.add_errors(out["errors"], per_sample_loss, batch["valid"], batch["sequence"], batch["image_index"],
                        batch["frame"], pred_cam, gt_cam)
        return pred_cam, gt_cam

    def add_camera(self, pred_cam, gt_cam, valid, sequence, per_sample_loss, image_index=None, frame=None) -> None:
        """Adds camera-space joints: pred_cam, gt_cam [B, 18, 3] mm (absolute), valid [B] (0 =
        padding, ignored), sequence [B, 4] int (subject, action, subaction, camera), per_sample_loss
        [B]; image_index, frame [B] int are only kept (``keep_predictions``)."""
        errors = jax.device_get(_errors_jit(jnp.asarray(pred_cam, jnp.float32), jnp.asarray(gt_cam, jnp.float32)))
        self.add_errors(errors, per_sample_loss, valid, sequence, image_index, frame, pred_cam, gt_cam)

    def add_errors(self, errors, per_sample_loss, valid, sequence, image_index=None, frame=None, pred_cam=None,
                   gt_cam=None) -> None:
        """Adds per-sample errors ``{name: [B]}`` (:func:`~kinpose_jax.metrics.h36m_errors`, mm)
        and losses [B]; valid [B] (0 = padding, ignored), sequence [B, 4] int (subject, action,
        subaction, camera). image_index, frame [B] int and pred_cam, gt_cam [B, 18, 3] mm are
        only kept (``keep_predictions``: pred_cam and gt_cam required)."""
        valid = np.asarray(valid).astype(bool)
        sequence = np.asarray(sequence, np.int64)
        loss = np.asarray(per_sample_loss, np.float64)
        if self._rows is not None:
            if pred_cam is None or gt_cam is None:
                raise ValueError("an accumulator with keep_predictions=True needs pred_cam and gt_cam")
            b = len(valid)
            self._rows.append({
                "valid": valid.astype(np.int32), "image_index": np.asarray(image_index if image_index is not None else np.full(b, -1)),
                "sequence": sequence, "frame": np.asarray(frame if frame is not None else np.full(b, -1)),
                "pred_cam": np.asarray(pred_cam, np.float32), "gt_cam": np.asarray(gt_cam, np.float32), "loss": loss})
        if not valid.any():
            return
        # in h36m_errors' order (a jitted function returns its dict sorted by key)
        errs = {k: np.asarray(errors[k], np.float64)[valid] for k in metrics.h36m_error_names()}
        for k, v in errs.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(np.sum(v))
        self.loss_sum += float(np.sum(loss[valid]))
        self.count += int(valid.sum())
        seq = sequence[valid]
        if seq.min() < 0 or seq.max() >= MAX_GROUP_ID:
            raise ValueError(f"sequence ids must be in [0, {MAX_GROUP_ID}), got {seq.min()}..{seq.max()}")
        columns = np.stack([errs[k] for k in TABLE_METRICS] + [np.ones(len(seq))], axis=1)
        for grouping, col in GROUPINGS.items():
            np.add.at(self.group_sums[grouping], seq[:, col], columns)

    def summed_over_processes(self) -> "ErrorAccumulator":
        """A new accumulator holding the sums of every process's accumulator (multi-process
        evaluation: each process saw its own rows), and all processes' kept predictions.
        Every process must call it."""
        from jax.experimental import multihost_utils

        keys = metrics.h36m_error_names()
        groups = np.concatenate([self.group_sums[g].ravel() for g in GROUPINGS])
        local = np.concatenate([[self.sums.get(k, 0.0) for k in keys], groups, [self.loss_sum, self.count]])
        total = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, local.size).sum(axis=0)
        out = ErrorAccumulator()
        out.sums = {k: float(v) for k, v in zip(keys, total[:len(keys)])}
        size = MAX_GROUP_ID * (len(TABLE_METRICS) + 1)
        for i, g in enumerate(GROUPINGS):
            out.group_sums[g] = total[len(keys) + i * size: len(keys) + (i + 1) * size].reshape(MAX_GROUP_ID, -1)
        out.loss_sum, out.count = float(total[-2]), int(round(total[-1]))
        if self._rows is not None:  # every process holds the same number of (padded) rows
            local_rows = self._stacked_rows()
            out._rows = [{k: np.asarray(multihost_utils.process_allgather(v)).reshape(-1, *v.shape[1:])
                          for k, v in local_rows.items()}]
        return out

    def result(self) -> dict[str, float]:
        """Means over the valid samples of every :func:`~kinpose_jax.metrics.h36m_errors` entry,
        plus ``val_loss`` and ``num_samples``."""
        if not self.count:
            raise ValueError("evaluation saw no valid samples")
        out = {k: v / self.count for k, v in self.sums.items()}
        out["val_loss"] = self.loss_sum / self.count
        out["num_samples"] = float(self.count)
        return out

    def tables(self) -> dict:
        """Protocol #1 / #2 (mm) per action, subject and camera, and the overall row.

        Every group row is the mean over its frames. ``overall`` holds the mean over all frames
        and the mean over actions (each action's frame mean, then the unweighted mean over the
        actions present, as papers report Human3.6M). Actions are named as in
        :data:`~kinpose_jax.data.h36m_layout.ACTION_NAMES`, subjects ``S9``, cameras ``1``-``4``.
        """
        res = self.result()
        out: dict = {}
        for grouping in GROUPINGS:
            rows = {}
            for gid in np.flatnonzero(self.group_sums[grouping][:, -1]):
                s = self.group_sums[grouping][gid]
                rows[_group_label(grouping, int(gid))] = {
                    **{k: float(v / s[-1]) for k, v in zip(TABLE_METRICS, s[:-1])}, "num_samples": int(s[-1])}
            out[f"per_{grouping}"] = rows
        actions = out["per_action"].values()
        out["overall"] = {
            "mean_over_frames": {**{k: res[k] for k in TABLE_METRICS}, "num_samples": self.count},
            "mean_over_actions": {**{k: float(np.mean([r[k] for r in actions])) for k in TABLE_METRICS},
                                  "num_actions": len(actions)},
        }
        return out

    def _stacked_rows(self) -> dict[str, np.ndarray]:
        keys = ("valid",) + PREDICTION_KEYS
        if not self._rows:
            return {k: np.zeros((0,)) for k in keys}
        return {k: np.concatenate([r[k] for r in self._rows]) for k in keys}

    def predictions(self) -> dict[str, np.ndarray]:
        """The kept valid rows, sorted by image index: ``image_index`` [N], ``sequence`` [N, 4]
        (subject, action, subaction, camera), ``frame`` [N], ``pred_cam`` / ``gt_cam`` [N, 18, 3]
        mm, ``loss`` [N]. Needs ``keep_predictions``."""
        if self._rows is None:
            raise ValueError("this accumulator was made without keep_predictions=True")
        rows = self._stacked_rows()
        valid = rows.pop("valid").astype(bool)
        order = np.argsort(rows["image_index"][valid], kind="stable")
        return {k: v[valid][order] for k, v in rows.items()}


def _group_label(grouping: str, gid: int) -> str:
    if grouping == "action":
        return h36m_layout.ACTION_NAMES.get(gid, f"act_{gid:02d}")
    return f"S{gid}" if grouping == "subject" else str(gid)


def save_predictions(path: str, preds: dict[str, np.ndarray]) -> None:
    """Writes :meth:`ErrorAccumulator.predictions` to ``path`` (.npz), adding ``folder`` [N] str
    (``s_SS_act_AA_subact_BB_ca_CC``) and ``subject`` / ``action`` / ``subaction`` / ``camera`` [N]."""
    folders = np.asarray([h36m_layout.folder_name(*map(int, s)) for s in preds["sequence"]], dtype=str)
    extra = {name: preds["sequence"][:, i] for i, name in enumerate(("subject", "action", "subaction", "camera"))}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, folder=folders, **extra, **preds)
    target = storage.path(path)
    tmp = target.parent / (target.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())  # local or remote (storage.path); renamed when complete
    tmp.rename(target)


def load_predictions(path: str) -> dict[str, np.ndarray]:
    """Reads a file written by :func:`save_predictions`; ValueError naming a missing field."""
    with storage.path(path).open("rb") as f, np.load(io.BytesIO(f.read())) as data:
        missing = [k for k in PREDICTION_KEYS if k not in data.files]
        if missing:
            raise ValueError(f"{path}: missing field(s) {missing}; expected a predictions file written by "
                             f"evaluation with save_predictions=True (fields {list(PREDICTION_KEYS)})")
        return {k: data[k] for k in data.files}


def accumulate_predictions(preds: dict[str, np.ndarray], batch_size: int = 4096) -> ErrorAccumulator:
    """An accumulator fed with saved predictions, in chunks of ``min(batch_size, N)`` rows; the last
    chunk is padded (as invalid rows) to the same size, so the metrics compile once."""
    acc = ErrorAccumulator()
    n = len(preds["image_index"])
    size = max(1, min(batch_size, n))
    for lo in range(0, n, size):
        rows = min(size, n - lo)

        def chunk(key):
            part = np.asarray(preds[key][lo:lo + rows])
            return np.concatenate([part, np.zeros((size - rows,) + part.shape[1:], part.dtype)])

        acc.add_camera(chunk("pred_cam"), chunk("gt_cam"), np.arange(size) < rows, chunk("sequence"), chunk("loss"))
    return acc
