"""Samples (docs/DESIGN.md#training-sample) against an independent numpy/OpenCV implementation written here; the grain
pipeline's determinism, resumption, epochs, MPII mixing, evaluation padding and multi-process
layout; decoding predictions back to the image."""

from __future__ import annotations

import dataclasses
import math
import os

import cv2
import numpy as np
import pytest

from kinpose_jax import geometry, skeleton
from kinpose_jax.data import augment, h36m_layout, pipeline, records
from tests.test_data_fixtures import synthetic_root
from tests.tiny_problem import augment_config, crop_layout, pipeline_config

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])


# -------------------------------------------------------------- independent reference of docs/DESIGN.md#training-sample
def reference_sample(img_bgr, cx, cy, bw, bh, joints, vis, scale, rot_deg, flip, gains, patch):
    """docs/DESIGN.md#training-sample steps 3-6 written from the text: three point correspondences solved by
    cv2.getAffineTransform, like the original; returns (image [P, P, 3], targets [J, 3], weights)."""
    joints = np.array(joints, np.float64)
    vis = np.array(vis, np.float64)
    img = img_bgr
    width = img.shape[1]
    if flip:
        img = img[:, ::-1, :].copy()
        cx = width - cx - 1
        joints[:, 0] = width - joints[:, 0] - 1
        for a, b in skeleton.H36M_FLIP_PAIRS:
            joints[[a, b]] = joints[[b, a]]
            vis[[a, b]] = vis[[b, a]]
    t = math.radians(rot_deg)

    def rotate(x, y):
        return np.array([x * math.cos(t) - y * math.sin(t), x * math.sin(t) + y * math.cos(t)])

    c = np.array([cx, cy])
    src = np.float32([c, c + rotate(0, bh * scale / 2), c + rotate(bw * scale / 2, 0)])
    dst = np.float32([[patch / 2, patch / 2], [patch / 2, patch], [patch, patch / 2]])
    trans = cv2.getAffineTransform(src, dst)
    warped = cv2.warpAffine(img, trans, (patch, patch), flags=cv2.INTER_LINEAR)
    rgb = warped[:, :, ::-1].astype(np.float64)
    for ch in range(3):
        rgb[:, :, ch] = (np.clip(rgb[:, :, ch] * gains[ch], 0, 255) - MEAN[ch]) / STD[ch]
    out = np.zeros_like(joints)
    for j in range(len(joints)):
        u, v = trans @ np.array([joints[j, 0], joints[j, 1], 1.0])
        z = joints[j, 2] / (2000.0 * scale) * patch
        out[j] = [u / patch - 0.5, v / patch - 0.5, z / patch]
    return rgb, out, vis


def device_normalized(images, gains):
    """The device's pixel normalization (jitted) of uint8 patches [B, H, W, 3] with gains [B, 3]."""
    import jax

    return np.asarray(jax.jit(augment.normalize_pixels)(images, gains))


def _on_device(image, gains):
    return device_normalized(image[None], gains[None])[0]


def _shards(name="hm36_train"):
    return records.ShardedRecords(os.path.join(synthetic_root(), "records", name))


AUGS = [
    augment.Augmentation(1.0, 0.0, False, (1.0, 1.0, 1.0)),
    augment.Augmentation(1.2, 25.0, False, (0.85, 1.1, 1.19)),
    augment.Augmentation(0.8, -47.5, True, (1.2, 0.8, 1.0)),
    augment.Augmentation(1.05, 0.0, True, (1.0, 0.95, 1.15)),
]


@pytest.mark.parametrize("aug", AUGS)
def test_sample_matches_independent_reference(aug):
    shards = _shards()
    for i in (0, 5, 11):
        rec = shards[i]
        img = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR)
        got = augment.make_sample(augment.decode_image(rec["image"]), rec["center"], rec["box_size"],
                                  rec["joints_img"], rec["joints_vis"], aug, (96, 96), skeleton.H36M_FLIP_PAIRS)
        ref_img, ref_joints, ref_vis = reference_sample(
            img, rec["center"][0], rec["center"][1], rec["box_size"][0], rec["box_size"][1], rec["joints_img"],
            rec["joints_vis"], aug.scale, aug.rotation, aug.flip, aug.gains, 96)
        assert got["image"].shape == (96, 96, 3) and got["image"].dtype == np.uint8
        np.testing.assert_array_equal(got["gains"], np.float32(aug.gains))
        np.testing.assert_allclose(got["joints"], ref_joints, atol=2e-5)
        np.testing.assert_array_equal(got["joints_vis"], ref_vis)
        diff = np.abs(_on_device(got["image"], got["gains"]) - ref_img)
        # float32 vs float64 affine coefficients may move OpenCV's fixed-point sample by one step
        assert diff.mean() < 2e-3 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_flip_twice_is_identity():
    rec = _shards()[3]
    width = int(rec["image_size"][0])
    j, v = augment.flip_joints(rec["joints_img"], rec["joints_vis"], width, skeleton.H36M_FLIP_PAIRS)
    assert not np.allclose(j, rec["joints_img"])
    j2, v2 = augment.flip_joints(j, v, width, skeleton.H36M_FLIP_PAIRS)
    np.testing.assert_array_equal(j2, rec["joints_img"])
    np.testing.assert_array_equal(v2, rec["joints_vis"])
    # a flipped sample of the mirrored image (with mirrored labels) is the plain sample
    img = augment.decode_image(rec["image"])
    mirrored = np.ascontiguousarray(img[:, ::-1])
    c2 = augment.flip_box_center(rec["center"], width)
    aug = augment.Augmentation(1.1, 12.0, False, (1.0, 1.0, 1.0))
    plain = augment.make_sample(img, rec["center"], rec["box_size"], rec["joints_img"], rec["joints_vis"], aug,
                                (64, 64), skeleton.H36M_FLIP_PAIRS)
    twice = augment.make_sample(mirrored, c2, rec["box_size"], j, v, augment.Augmentation(1.1, 12.0, True),
                                (64, 64), skeleton.H36M_FLIP_PAIRS)
    np.testing.assert_array_equal(plain["image"], twice["image"])
    np.testing.assert_allclose(plain["joints"], twice["joints"], atol=1e-9)
    np.testing.assert_array_equal(plain["joints_vis"], twice["joints_vis"])


def test_augmentation_draws_follow_spec():
    cfg = augment_config()
    draws = [augment.draw_augmentation(augment.record_rng(0, 0, 0, i), cfg) for i in range(3000)]
    s = np.array([d.scale for d in draws])
    r = np.array([d.rotation for d in draws])
    g = np.array([d.gains for d in draws])
    f = np.array([d.flip for d in draws])
    assert s.min() >= 0.75 and s.max() <= 1.25 and np.mean(np.isclose(s, 1.25)) > 0.1  # clipped N(0,1) * 0.25
    assert abs(np.mean(r == 0) - 0.4) < 0.04 and np.abs(r).max() <= 60.0
    assert abs(np.std(r[r != 0]) - 30 * 0.98) < 2.5  # std of clip(N, -2, 2) is ~0.98
    assert abs(f.mean() - 0.5) < 0.04
    assert g.min() >= 0.8 and g.max() <= 1.2 and abs(g.mean() - 1.0) < 0.01
    # a pure function of (seed, epoch, dataset, index, draw)
    a = augment.draw_augmentation(augment.record_rng(1, 2, 0, 5), cfg)
    assert a == augment.draw_augmentation(augment.record_rng(1, 2, 0, 5), cfg)
    assert a != augment.draw_augmentation(augment.record_rng(1, 3, 0, 5), cfg)


# ------------------------------------------------------------------ pipeline
def _cfg(**kw):
    base = dict(records_dir=os.path.join(synthetic_root(), "records"), patch_size=48, global_batch_size=4,
                process_index=0, process_count=1, seed=5, read_threads=2)
    base.update(kw)
    return pipeline_config(**base)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x) and len(a) == len(b)


def test_pipeline_batches_are_the_spec_samples():
    cfg = _cfg()
    plan, _ = pipeline.train_plan(cfg)
    shards = _shards()
    batches = _take(pipeline.make_train_iterator(cfg), plan.steps_per_epoch + 1)  # into the 2nd epoch
    assert set(batches[0]) == set(pipeline.TRAIN_KEYS)
    assert batches[0]["image"].shape == (4, 48, 48, 3) and batches[0]["joints"].shape == (4, 18, 3)
    for step in (0, plan.steps_per_epoch):
        epoch = step // plan.steps_per_epoch
        entries = plan.epoch_entries(epoch)
        for row in range(4):
            ds, idx, draw = entries[(step % plan.steps_per_epoch) * 4 + row]
            rec = shards[idx]
            aug = augment.draw_augmentation(augment.record_rng(cfg.seed, epoch, int(ds), int(idx), int(draw)),
                                            cfg.aug)
            img = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR)
            ref_img, ref_joints, ref_vis = reference_sample(
                img, *rec["center"], *rec["box_size"], rec["joints_img"], rec["joints_vis"], aug.scale, aug.rotation,
                aug.flip, aug.gains, 48)
            np.testing.assert_allclose(batches[step]["joints"][row], ref_joints, atol=2e-5)
            np.testing.assert_array_equal(batches[step]["joints_vis"][row], ref_vis)
            normalized = _on_device(batches[step]["image"][row], batches[step]["gains"][row])
            assert np.abs(normalized - ref_img).mean() < 2e-3
    assert np.all(batches[0]["valid"] == 1)


def host_normalized_patch(rec, aug, patch):
    """The float32 patch as the host made it before normalization moved to the device: decode,
    flip, warp through ``patch_affine``, BGR->RGB, then per channel
    ``(clip(x * gain, 0, 255) - mean) / std`` in float64, rounded once to float32. Also returns
    the uint8 RGB patch."""
    img = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    center = np.array(rec["center"], np.float64)
    if aug.flip:
        img = np.ascontiguousarray(img[:, ::-1])
        center[0] = img.shape[1] - center[0] - 1
    affine = geometry.patch_affine(center, rec["box_size"], (patch, patch), aug.scale, aug.rotation)
    rgb = cv2.warpAffine(img, affine, (patch, patch), flags=cv2.INTER_LINEAR)[:, :, ::-1]
    out = (np.clip(rgb * np.asarray(aug.gains, np.float64), 0, 255) - MEAN) / STD
    return out.astype(np.float32), rgb


def test_device_normalization_equals_the_host_float32_patch():
    """Workers send uint8 patches + gains; normalized on the device they equal the float32 patch
    the host used to send, for the same (seed, epoch, record, draw)."""
    cfg = _cfg(seed=11)
    plan, _ = pipeline.train_plan(cfg)
    shards = _shards()
    batches = _take(pipeline.make_train_iterator(cfg), 2)
    assert batches[0]["image"].dtype == np.uint8 and batches[0]["gains"].shape == (4, 3)
    flips = set()
    for step, batch in enumerate(batches):
        device = device_normalized(batch["image"], batch["gains"])
        for row in range(4):
            ds, idx, draw = plan.epoch_entries(0)[step * 4 + row]
            aug = augment.draw_augmentation(augment.record_rng(cfg.seed, 0, int(ds), int(idx), int(draw)), cfg.aug)
            flips.add(aug.flip)
            host, rgb = host_normalized_patch(shards[idx], aug, 48)
            np.testing.assert_array_equal(batch["image"][row], rgb)
            np.testing.assert_array_equal(batch["gains"][row], np.float32(aug.gains))
            np.testing.assert_allclose(device[row], host, rtol=0, atol=1e-5)
    assert flips == {False, True}
    # evaluation: gains 1, the plain normalization
    batch = next(pipeline.make_eval_iterator(cfg))
    np.testing.assert_array_equal(batch["gains"], np.ones((4, 3), np.float32))
    host, _ = host_normalized_patch(_shards("hm36_validmin")[1], augment.NO_AUGMENTATION, 48)
    np.testing.assert_allclose(device_normalized(batch["image"], batch["gains"])[1], host, rtol=0, atol=1e-5)


def test_normalize_pixels_refuses_float_images():
    with pytest.raises(TypeError, match="uint8 pixel values"):
        augment.normalize_pixels(np.zeros((1, 4, 4, 3), np.float32))


def test_epochs_are_permutations_and_steps():
    cfg = _cfg(global_batch_size=3)
    plan, _ = pipeline.train_plan(cfg)
    assert plan.steps_per_epoch == 16 // 3
    e0, e1 = plan.epoch_entries(0), plan.epoch_entries(1)
    assert len(e0) == 15 and len(set(e0[:, 1].tolist())) == 15 and set(e0[:, 0].tolist()) == {pipeline.H36M}
    assert not np.array_equal(e0, e1)


def test_mpii_mixing_like_the_seed():
    plan = pipeline.TrainPlan(num_h36m=100, num_mpii=30, mpii_fraction=0.5, seed=0, global_batch_size=6)
    assert plan.h36m_per_epoch == 30 and plan.steps_per_epoch == 10
    e = plan.epoch_entries(0)
    mpii = e[e[:, 0] == pipeline.MPII]
    h36m = e[e[:, 0] == pipeline.H36M]
    assert sorted(mpii[:, 1].tolist()) == list(range(30))  # every MPII record once
    assert len(set(h36m[:, 1].tolist())) == 30  # H36M drawn without replacement
    assert set(plan.epoch_entries(1)[:, 1][plan.epoch_entries(1)[:, 0] == 0].tolist()) != set(h36m[:, 1].tolist())
    quarter = pipeline.TrainPlan(num_h36m=100, num_mpii=30, mpii_fraction=0.25, seed=0, global_batch_size=6)
    assert quarter.h36m_per_epoch == 90
    many = pipeline.TrainPlan(num_h36m=10, num_mpii=30, mpii_fraction=0.5, seed=0, global_batch_size=6)
    e = many.epoch_entries(0)
    h = e[e[:, 0] == pipeline.H36M]
    assert len(h) == 30 and set(h[:, 2].tolist()) == {0, 1, 2}  # wrapped: each copy gets its own draw


def test_same_seed_same_batches_and_resume():
    cfg = _cfg()
    a = _take(pipeline.make_train_iterator(cfg), 6)
    assert _same(a, _take(pipeline.make_train_iterator(cfg), 6))
    assert not _same(a, _take(pipeline.make_train_iterator(_cfg(seed=6)), 6))
    assert _same(a, _take(pipeline.make_train_iterator(_cfg(read_threads=0)), 6))
    it = pipeline.make_train_iterator(cfg)
    _take(it, 2)
    state = it.get_state()
    fresh = pipeline.make_train_iterator(cfg)
    fresh.set_state(state)
    assert _same(a[2:], _take(fresh, 4))


def test_resume_through_orbax_handler(tmp_path):
    import grain.python as pygrain
    from etils import epath

    cfg = _cfg()
    ref = _take(pipeline.make_train_iterator(cfg), 5)
    it = pipeline.make_train_iterator(cfg)
    _take(it, 3)
    handler = pygrain.PyGrainCheckpointHandler()
    handler.save(epath.Path(tmp_path), item=it)
    restored = handler.restore(epath.Path(tmp_path), item=pipeline.make_train_iterator(cfg))
    assert _same(ref[3:], _take(restored, 2))


def test_worker_processes_give_the_same_batches_and_resume():
    ref = _take(pipeline.make_train_iterator(_cfg()), 5)
    cfg = _cfg(worker_count=2, worker_buffer_size=1)
    it = pipeline.make_train_iterator(cfg)
    try:
        got = _take(it, 2)
        state = it.get_state()
        got += _take(it, 3)
    finally:
        it.close()
    assert _same(ref, got)
    it = pipeline.make_train_iterator(cfg)
    try:
        it.set_state(state)
        assert _same(ref[2:], _take(it, 3))
    finally:
        it.close()


def test_process_slices_make_the_global_batch():
    full = _take(pipeline.make_train_iterator(_cfg()), 3)
    parts = [_take(pipeline.make_train_iterator(_cfg(process_index=p, process_count=2)), 3) for p in (0, 1)]
    for step in range(3):
        for k in full[step]:
            np.testing.assert_array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), full[step][k])
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        _cfg(process_count=3).local_batch_size()


def test_eval_padding_counts_every_sample_once():
    cfg = _cfg(global_batch_size=4)
    batches = list(pipeline.make_eval_iterator(cfg))
    n = len(_shards("hm36_validmin"))
    assert n == 6 and len(batches) == 2
    assert set(batches[0]) == set(pipeline.EVAL_KEYS)
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["image_index"] for b in batches])
    assert valid.tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert index.tolist() == [0, 1, 2, 3, 4, 5, -1, -1]
    assert np.all(batches[1]["joints_vis"][2:] == 0)
    # each valid row names its record's folder and frame; padding rows -1
    shards = _shards("hm36_validmin")
    seq = np.concatenate([b["sequence"] for b in batches])
    frame = np.concatenate([b["frame"] for b in batches])
    for i in range(n):
        folder, name = shards[i]["image_path"].split("/")
        assert h36m_layout.folder_name(*seq[i].tolist()) == folder
        assert h36m_layout.image_name(folder, int(frame[i])) == name
    assert np.all(seq[n:] == -1) and np.all(frame[n:] == -1)
    # across 2 processes the union is the same, each sample valid exactly once
    seen = []
    for p in (0, 1):
        for b in pipeline.make_eval_iterator(_cfg(global_batch_size=4, process_index=p, process_count=2)):
            seen += b["image_index"][b["valid"] > 0].tolist()
    assert sorted(seen) == list(range(6))


def test_decode_inverts_the_targets():
    """geometry.patch_to_image(geometry.normalized_to_patch(.)) undoes docs/DESIGN.md#normalized-units + the
    affine: with and without augmentation."""
    cfg = _cfg(global_batch_size=4)
    batch = next(pipeline.make_eval_iterator(cfg))
    shards = _shards("hm36_validmin")
    decoded = geometry.patch_to_image(geometry.normalized_to_patch(batch["joints"], (48, 48)), batch["center"],
                                      batch["box_size"], (48, 48), skeleton.BOX_MM)
    for row in range(4):
        np.testing.assert_allclose(decoded[row], shards[row]["joints_img"], atol=1e-3)
    rec = shards[2]
    aug = augment.Augmentation(1.15, -20.0, False)
    s = augment.make_sample(augment.decode_image(rec["image"]), rec["center"], rec["box_size"], rec["joints_img"],
                            rec["joints_vis"], aug, (48, 48), skeleton.H36M_FLIP_PAIRS)
    back = geometry.patch_to_image(geometry.normalized_to_patch(s["joints"][None], (48, 48)), rec["center"][None],
                                   rec["box_size"][None], (48, 48), skeleton.BOX_MM, scale=1.15, rotation=-20.0)
    np.testing.assert_allclose(back[0], rec["joints_img"], atol=1e-3)


def test_missing_records_give_a_clear_error(tmp_path):
    from kinpose_jax.data import DataError

    with pytest.raises(DataError, match="convert_h36m.py"):
        pipeline.make_train_iterator(_cfg(records_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="mpii_fraction"):
        pipeline.train_plan(_cfg(mpii_fraction=1.0))


def test_setup_from_the_training_config(tmp_path):
    """configs/default.py fields -> synthetic data generated, converted, pipelines built."""
    from configs import default
    from kinpose_jax.data import setup

    c = default.get_config()
    c.data.root = str(tmp_path)
    c.data.synthetic = True
    c.data.synthetic_train_folders, c.data.synthetic_frames_per_folder, c.data.synthetic_image_size = 1, 5, 96
    c.data.patch_size = 32
    c.data.flip_prob = 0.0
    c.progress_bar = False
    data = setup.create(c, 4)
    assert data.steps_per_epoch == 1 and data.num_eval_records == 64 and data.eval_steps == 16
    batch = next(data.train_iterator())
    assert batch["image"].shape == (4, 32, 32, 3)
    cfg = pipeline.PipelineConfig.from_config(c, 4)
    assert cfg.aug.flip_prob == 0.0 and cfg.seed == c.seed and cfg.records_dir == os.path.join(str(tmp_path), "records")
    assert sum(b["valid"].sum() for b in data.eval_batches()) == 64


# ------------------------------------------------------------------ crops (patch-sized records, geometry)
def _crop_pair(rec, aug, patch, resample, image=None):
    img = augment.decode_image(rec["image"]) if image is None else image
    crop = augment.crop_geometry(rec["center"], rec["box_size"], (patch, patch), augment_config(), resample)
    args = (rec["center"], rec["box_size"], rec["joints_img"], rec["joints_vis"], aug, (patch, patch),
            skeleton.H36M_FLIP_PAIRS)
    full = augment.make_sample(img, *args)
    cropped = augment.make_sample(augment.cut_crop(img, crop), *args, crop=crop, image_width=img.shape[1])
    return full, cropped, crop


EXTREME_AUGS = [augment.Augmentation(s, r, f, (1.0, 1.0, 1.0)) for s in (0.75, 1.25) for r in (-60.0, 0.0, 45.0)
                for f in (False, True)]


def test_patch_from_the_crop_is_the_patch_from_the_image():
    """Unresampled crop: the same patch (OpenCV's 1/32 px coordinate rounding aside) and labels,
    for the extreme draws (largest/smallest scale, +-rotation, flip)."""
    shards = _shards()
    diffs = []
    for i in (0, 7):
        for aug in EXTREME_AUGS:
            full, cropped, crop = _crop_pair(shards[i], aug, 48, resample=False)
            assert crop.scale == (1.0, 1.0)
            np.testing.assert_array_equal(cropped["joints"], full["joints"])
            np.testing.assert_array_equal(cropped["joints_vis"], full["joints_vis"])
            np.testing.assert_array_equal(cropped["affine"], full["affine"])
            diffs.append(np.abs(cropped["image"].astype(int) - full["image"].astype(int)))
    assert np.max(diffs) <= 1 and np.mean(diffs) < 1e-3


def test_resampled_crop_covers_every_draw_and_is_smaller():
    """Resampled to the scale-1 patch's resolution: a white image gives white patches for every
    extreme draw (no sample falls outside the stored crop), the crop stores fewer pixels."""
    rec = _shards()[3]
    white = np.full((600, 600, 3), 255, np.uint8)  # the box is well inside: no image border
    rec = dict(rec, center=np.array([300.0, 300.0]))
    for aug in EXTREME_AUGS:
        full, cropped, crop = _crop_pair(rec, aug, 32, resample=True, image=white)
        assert np.all(full["image"] == 255)
        assert np.all(cropped["image"] == 255), aug
    assert crop.scale[0] < 0.5 and crop.resampled_size()[0] < crop.size[0] / 2
    # on the synthetic images (sharp capsule edges) the anti-aliased crop differs from the aliased
    # direct warp by ~6 grey levels on average at 0.56 crop px per image px (measured: mean 6.05)
    shards = _shards()
    diffs = [np.abs(c["image"].astype(int) - f["image"].astype(int))
             for i in range(4) for aug in AUGS for f, c, _ in [_crop_pair(shards[i], aug, 48, resample=True)]]
    assert np.mean(diffs) < 10


def _crop_records(tmp_path, **layout):
    from kinpose_jax.data import convert

    out = str(tmp_path / "records")
    quiet = dict(progress=False, log=lambda *_: None)
    for image_set in ("train", "validmin"):
        info = convert.convert_h36m(synthetic_root(), image_set, out, crop=crop_layout(patch_size=48, **layout),
                                    **quiet)
    return out, info


def test_crop_records_give_the_full_image_samples(tmp_path):
    """Patch-sized records: same labels and evaluation fields, patches within resampling/JPEG noise."""
    out, info = _crop_records(tmp_path)
    assert info["layout"] == "crop" and info["crop"]["patch_size"] == 48
    full_cfg, crop_cfg = _cfg(read_threads=0), _cfg(read_threads=0, records_dir=out)
    full, crop = _take(pipeline.make_train_iterator(full_cfg), 4), _take(pipeline.make_train_iterator(crop_cfg), 4)
    for a, b in zip(full, crop):
        for k in ("gains", "joints", "joints_vis", "valid"):
            np.testing.assert_array_equal(a[k], b[k])
    diff = np.abs(np.concatenate([a["image"] for a in full]).astype(int) -
                  np.concatenate([b["image"] for b in crop]).astype(int))
    assert diff.mean() < 10, diff.mean()  # measured 6.1 grey levels on these sharp-edged synthetic images
    for a, b in zip(pipeline.make_eval_iterator(full_cfg), pipeline.make_eval_iterator(crop_cfg)):
        for k in pipeline.EVAL_KEYS:
            if k != "image":
                np.testing.assert_array_equal(a[k], b[k])
    # stored crops are smaller than the images
    assert len(records.ShardedRecords(os.path.join(out, "hm36_train"))[0]["image"]) < len(_shards()[0]["image"])


def test_crop_records_refuse_augmentation_beyond_the_crop_and_bad_crops(tmp_path):
    out, _ = _crop_records(tmp_path, rotation_factor=0.0)
    with pytest.raises(ValueError, match=r"rotation_factor=30.0.*cut for none.*re-convert"):
        pipeline.train_plan(_cfg(records_dir=out))
    with pytest.raises(ValueError, match=r"data.scale_factor=0.3 > 0.25"):
        pipeline.train_plan(_cfg(records_dir=out, aug=augment_config(scale_factor=0.3, rotation_factor=0.0)))
    pipeline.train_plan(_cfg(records_dir=out, aug=augment_config(rotation_factor=0.0)))  # covered
    pipeline.train_plan(_cfg(records_dir=out, augment=False))
    # a patch above the crops' 48 px would be upsampled from them: refused in training and evaluation
    too_big = _cfg(records_dir=out, patch_size=56, aug=augment_config(rotation_factor=0.0))
    for build in (pipeline.train_plan, lambda c: pipeline.DataPipeline(c, train=False), pipeline.make_eval_iterator,
                  lambda c: pipeline.train_plan(dataclasses.replace(c, augment=False))):
        with pytest.raises(ValueError, match=r"resampled for 48 px patches.*data.patch_size=56.*re-convert with "
                                             r"matching crop options.*full-image layout"):
            build(too_big)
    pipeline.DataPipeline(_cfg(records_dir=out, patch_size=32, aug=augment_config(rotation_factor=0.0)))
    from kinpose_jax.data import DataError

    rec = records.ShardedRecords(os.path.join(out, "hm36_train"))[2]
    cfg = _cfg(records_dir=out)
    with pytest.raises(DataError, match="record 2 field image: the stored JPEG crop is truncated"):
        pipeline._sample(dict(rec, image=rec["image"][:-10]), augment.NO_AUGMENTATION, cfg,  # still decodes
                         "hm36_train record 2")
    with pytest.raises(DataError, match="record 2 field image: the stored crop is .* px, its recorded geometry"):
        pipeline._sample(dict(rec, crop_size=rec["crop_size"] + 8), augment.NO_AUGMENTATION, cfg, "hm36_train record 2")


def test_unresampled_crops_take_a_larger_patch(tmp_path):
    """Crops kept at the image's resolution (resample=False) hold every pixel a patch of any size samples."""
    out, info = _crop_records(tmp_path, resample=False)
    assert info["crop"]["patch_size"] == 48
    cfg = _cfg(records_dir=out, patch_size=64, read_threads=0)
    pipeline.DataPipeline(cfg)
    full = next(pipeline.make_eval_iterator(_cfg(patch_size=64, read_threads=0)))
    crop = next(pipeline.make_eval_iterator(cfg))
    np.testing.assert_array_equal(full["joints"], crop["joints"])
    assert np.abs(full["image"].astype(int) - crop["image"].astype(int)).mean() < 3  # JPEG re-encoding only (measured 2.2)


def test_setup_converts_the_configured_record_layout(tmp_path):
    """config.data.record_layout = crop: main.py's conversion writes crops for the config's patch
    size and augmentation, and training reads them; back to full converts the images again."""
    from configs import default
    from kinpose_jax.data import setup

    c = default.get_config()
    c.data.root, c.data.synthetic = str(tmp_path), True
    c.data.synthetic_train_folders, c.data.synthetic_frames_per_folder, c.data.synthetic_image_size = 1, 5, 96
    c.data.patch_size, c.data.worker_count, c.data.record_layout = 32, 0, "crop"
    data = setup.create(c, 4)
    info = records.load_info(os.path.join(str(tmp_path), "records", "hm36_train"))
    assert info["layout"] == "crop" and info["crop"]["patch_size"] == 32
    assert info["crop"]["rotation_factor"] == c.data.rotation_factor
    assert next(data.train_iterator())["image"].shape == (4, 32, 32, 3)
    c.data.record_layout = "full"
    setup.create(c, 4)
    assert records.load_info(os.path.join(str(tmp_path), "records", "hm36_train"))["layout"] == "full"
    c.data.record_layout = "patches"
    with pytest.raises(ValueError, match="record_layout"):
        setup.create(c, 4)
