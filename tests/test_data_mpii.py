"""MPII + Human3.6M mixing end to end: an MPII cache in the original's format (docs/DESIGN.md#mpii-cache) with its
images -> converter -> training iterator with ``mpii_fraction > 0``. Checked against numbers
computed here: the share of MPII samples, their weights (depth 0; torso and nose, which MPII
lacks, 0) and their x/y targets (docs/DESIGN.md#mpii-coco and docs/DESIGN.md#training-sample,
written independently)."""

from __future__ import annotations

import os
import pickle

import cv2
import numpy as np
import pytest

from kinpose_jax.data import augment, convert, pipeline, records
from tests.test_data_fixtures import synthetic_root
from tests.test_data_pipeline import device_normalized, reference_sample
from tests.tiny_problem import crop_layout, pipeline_config

QUIET = dict(progress=False, log=lambda *_: None, num_workers=0)
#: docs/DESIGN.md#mpii-coco, per H36M joint: the MPII joint it comes from (-1: none).
MPII_FOR_H36M = [6, 2, 1, 0, 3, 4, 5, -1, 8, -1, 9, 13, 14, 15, 12, 11, 10, 7]
MPII_FLIP = [[0, 5], [1, 4], [2, 3], [10, 15], [11, 14], [12, 13]]
NUM_MPII = 8


def _write_mpii(root: str) -> list[dict]:
    """NUM_MPII records (16 joints, 2D, some unlabelled) with 96 x 72 px JPEGs under
    ``root/mpii/images``; the cache (protocol 4) names the images under another machine's path."""
    rng = np.random.default_rng(11)
    images = os.path.join(root, "mpii", "images")
    os.makedirs(images)
    recs = []
    for k in range(NUM_MPII):
        img = cv2.resize(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8), (96, 72), interpolation=cv2.INTER_LINEAR)
        name = f"{k:09d}.jpg"
        cv2.imwrite(os.path.join(images, name), img)
        joints = np.zeros((16, 3))
        joints[:, 0], joints[:, 1] = rng.uniform(20, 76, 16), rng.uniform(12, 60, 16)
        vis = np.zeros((16, 3))
        vis[:, :2] = 1.0
        vis[rng.choice(16, 2, replace=False), :2] = 0.0  # unlabelled joints
        recs.append({"image": f"/data/other_machine/mpii/images/{name}", "center_x": float(rng.uniform(44, 52)),
                     "center_y": float(rng.uniform(32, 40)), "width": float(rng.uniform(50, 70)),
                     "height": float(rng.uniform(50, 70)), "flip_pairs": MPII_FLIP, "joints_3d": joints,
                     "joints_3d_vis": vis})
    cache = os.path.join(root, "mpii", "mpii_train_cache", "mpii_train_cache.pkl")
    os.makedirs(os.path.dirname(cache))
    with open(cache, "wb") as f:
        pickle.dump(recs, f, protocol=4)
    return recs


def test_mpii_mixing_end_to_end(tmp_path):
    out = str(tmp_path / "records")
    h36m = convert.convert_h36m(synthetic_root(), "train", out, **QUIET)
    raw = _write_mpii(str(tmp_path))
    info = convert.convert_mpii(str(tmp_path), "train", out, **QUIET)
    assert info["num_records"] == NUM_MPII and h36m["num_records"] == 16

    cfg = pipeline_config(records_dir=out, mpii_fraction=1.0 / 3.0, patch_size=32, global_batch_size=4,
                          seed=9, read_threads=0, process_index=0, process_count=1)
    plan, _ = pipeline.train_plan(cfg)
    # 1/3 MPII: all 8 MPII records + 16 Human3.6M records per epoch, 24 samples = 6 batches of 4
    assert plan.steps_per_epoch == 6
    it = pipeline.make_train_iterator(cfg)
    batches = [next(it) for _ in range(plan.steps_per_epoch)]
    vis = np.concatenate([b["joints_vis"] for b in batches])
    joints = np.concatenate([b["joints"] for b in batches])
    images = np.concatenate([device_normalized(b["image"], b["gains"]) for b in batches])  # normalized
    assert vis.shape == (24, 18, 3)
    # Human3.6M samples train depth (weight 1 everywhere), MPII samples never do
    is_mpii = np.all(vis[:, :, 2] == 0, axis=1)
    assert np.all(vis[~is_mpii] == 1)
    assert is_mpii.sum() == NUM_MPII  # exactly the expected third of the epoch
    entries = plan.epoch_entries(0)
    np.testing.assert_array_equal(entries[:, 0] == pipeline.MPII, is_mpii)
    assert sorted(entries[is_mpii, 1].tolist()) == list(range(NUM_MPII))  # each MPII record once

    flips = []
    for row in np.flatnonzero(is_mpii):
        index, draw = int(entries[row, 1]), int(entries[row, 2])
        rec = raw[index]
        # docs/DESIGN.md#mpii-coco mapping to the 18 H36M joints, written here
        j18, v18 = np.zeros((18, 3)), np.zeros((18, 3))
        for h, m in enumerate(MPII_FOR_H36M):
            if m >= 0:
                j18[h, :2], v18[h, :2] = rec["joints_3d"][m, :2], rec["joints_3d_vis"][m, :2]
        aug = augment.draw_augmentation(augment.record_rng(cfg.seed, 0, pipeline.MPII, index, draw), cfg.aug)
        flips.append(aug.flip)
        img = cv2.imread(str(tmp_path / "mpii" / "images" / os.path.basename(rec["image"])), cv2.IMREAD_COLOR)
        ref_img, ref_joints, ref_vis = reference_sample(img, rec["center_x"], rec["center_y"], rec["width"],
                                                        rec["height"], j18, v18, aug.scale, aug.rotation, aug.flip,
                                                        aug.gains, 32)
        np.testing.assert_array_equal(vis[row], ref_vis)
        assert np.all(vis[row][[7, 9]] == 0)  # torso and nose: no MPII source
        mapped = [h for h, m in enumerate(MPII_FOR_H36M) if m >= 0]
        np.testing.assert_allclose(joints[row, mapped, :2], ref_joints[mapped, :2], atol=2e-5)
        assert np.abs(images[row] - ref_img).mean() < 2e-3
    assert any(flips) and not all(flips)  # both branches of the flip exercised
    # x/y weight 0: torso, nose and the two unlabelled joints of every MPII record
    assert (vis[is_mpii][:, :, :2] == 0).sum() == (2 + 2) * 2 * NUM_MPII


@pytest.mark.parametrize("resample, bound", [(True, 10), (False, 3)])
def test_mpii_crop_records_give_the_full_image_samples(tmp_path, resample, bound):
    """MPII (and Human3.6M) converted to patch-sized crops: the mixed training batches have the
    full-image layout's labels, weights and gains, and patches within resampling/JPEG noise
    (resampled crops are anti-aliased where the direct warp aliases; unresampled ones differ by
    the crop's JPEG re-encoding only)."""
    _write_mpii(str(tmp_path))
    full_dir, crop_dir = str(tmp_path / "full"), str(tmp_path / "crop")
    crop = crop_layout(patch_size=32, resample=resample)
    for out, layout in ((full_dir, None), (crop_dir, crop)):
        convert.convert_h36m(synthetic_root(), "train", out, crop=layout, **QUIET)
        info = convert.convert_mpii(str(tmp_path), "train", out, crop=layout, **QUIET)
    assert info["layout"] == "crop" and info["num_records"] == NUM_MPII
    src = records.ShardedRecords(os.path.join(crop_dir, "mpii_train"))
    stored = [len(src[k]["image"]) for k in range(NUM_MPII)]
    files = [os.path.getsize(os.path.join(tmp_path, "mpii", "images", f"{k:09d}.jpg")) for k in range(NUM_MPII)]
    assert stored != files  # the crops, not the image files

    def batches(records_dir):
        cfg = pipeline_config(records_dir=records_dir, mpii_fraction=1.0 / 3.0, patch_size=32,
                              global_batch_size=4, seed=9, read_threads=0, process_index=0, process_count=1)
        it = pipeline.make_train_iterator(cfg)
        return [next(it) for _ in range(pipeline.train_plan(cfg)[0].steps_per_epoch)]

    full, cropped = batches(full_dir), batches(crop_dir)
    for a, b in zip(full, cropped):
        for k in ("gains", "joints", "joints_vis", "valid"):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    vis = np.concatenate([b["joints_vis"] for b in full])
    is_mpii = np.all(vis[:, :, 2] == 0, axis=1)
    assert is_mpii.sum() == NUM_MPII
    diff = np.abs(np.concatenate([a["image"] for a in full]).astype(int)
                  - np.concatenate([b["image"] for b in cropped]).astype(int))
    # measured on the MPII rows: 5.4 grey levels resampled, 2.0 not (Human3.6M's: tests/test_data_pipeline.py)
    assert diff[is_mpii].mean() < bound, diff[is_mpii].mean()
