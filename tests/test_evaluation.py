"""Evaluation helpers: flip-test prediction, decoding to the image, padded-batch accounting."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kinpose_jax import geometry, metrics, skeleton
from kinpose_jax.training import evaluation
from tests.tiny_problem import pipeline_config

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)


class MirrorSensitiveModel:
    """A stand-in network: joints depend on the image's left/right asymmetry, so running the
    mirrored patch gives a different answer (apply(vars, images, train) like a flax module)."""

    def apply(self, variables, images, train=False):
        left = jnp.mean(images[:, :, : images.shape[2] // 2], axis=(1, 2, 3))
        base = jnp.linspace(-0.3, 0.3, 18 * 3).reshape(1, 18, 3)
        return {"joints": base + left[:, None, None] * jnp.asarray(variables["w"])[None]}


def test_flip_test_averages_with_the_mirrored_back_prediction():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    w = rng.normal(size=(18, 3)).astype(np.float32) * 0.1
    batch = {"image": images, "joints": np.zeros((2, 18, 3), np.float32), "joints_vis": np.ones((2, 18, 3), np.float32)}
    model = MirrorSensitiveModel()
    plain, _ = evaluation.make_predict_fn(model, 32, flip_test=False)({"w": w}, batch)
    merged, _ = evaluation.make_predict_fn(model, 32, flip_test=True)({"w": w}, batch)
    # independent computation of the flip test in numpy, on the normalized pixels (no gains)
    normed = (images - np.array([123.675, 116.28, 103.53])) / np.array([58.395, 57.12, 57.375])
    own = (np.asarray(model.apply({"w": w}, normed)["joints"]) + [0.5, 0.5, 0.0]) * 32
    flipped = (np.asarray(model.apply({"w": w}, normed[:, :, ::-1])["joints"]) + [0.5, 0.5, 0.0]) * 32
    flipped[..., 0] = 32 - flipped[..., 0] - 1
    perm = np.arange(18)
    for a, b in skeleton.H36M_FLIP_PAIRS:
        perm[a], perm[b] = b, a
    expected = 0.5 * (own + flipped[:, perm])
    np.testing.assert_allclose(np.asarray(plain), own, atol=1e-4)
    np.testing.assert_allclose(np.asarray(merged), expected, atol=1e-4)
    assert np.abs(np.asarray(merged) - own).max() > 1e-3


def test_decoding_to_the_image_by_hand():
    px = np.array([[[128.0, 64.0, 32.0]]])  # normalized (0, -0.25, 0.125) of a 256 patch
    out = geometry.patch_to_image(px, center=np.array([[500.0, 400.0]]), box_size=np.array([[300.0, 300.0]]),
                                  patch_size=(256, 256), box_mm=2000.0)
    np.testing.assert_allclose(out[0, 0], [500.0, 400.0 - 0.25 * 300.0, 32.0 / 256 * 2000.0], atol=1e-9)


def test_accumulator_counts_only_valid_samples():
    rng = np.random.default_rng(1)
    cam = rng.normal(size=(4, 18, 3)) * 300 + [0, 0, 4000]
    fl = np.full((4, 2), 1100.0)
    cp = np.full((4, 2), 500.0)
    uv = geometry.project(cam, fl[:, None], cp[:, None])
    center, box = uv[:, 0, :], np.full((4, 2), 400.0)
    rel_depth = cam[..., 2] - cam[:, :1, 2]
    px = np.stack([(uv[..., 0] - center[:, None, 0]) / 400 * 256 + 128,
                   (uv[..., 1] - center[:, None, 1]) / 400 * 256 + 128, rel_depth / 2000 * 256], -1)
    batch = dict(valid=np.array([1, 1, 1, 0], np.float32), center=center, box_size=box, pelvis=cam[:, 0],
                 fl=fl, c_p=cp, joints_cam=cam, sequence=np.array([[9, 2, 1, 1]] * 3 + [[-1] * 4], np.int32),
                 frame=np.array([0, 1, 2, -1], np.int32), image_index=np.array([0, 1, 2, -1], np.int32))
    px_bad = px.copy()
    px_bad[3] += 1000.0  # garbage in the padding row must not count
    acc = evaluation.ErrorAccumulator()
    acc.add(px_bad, np.array([0.1, 0.2, 0.3, 99.0]), batch, 256)
    res = acc.result()
    assert res["num_samples"] == 3
    assert res["mpjpe"] < 0.05
    assert res["val_loss"] == pytest.approx(0.2)
    tables = acc.tables()
    assert list(tables["per_action"]) == ["Directions"] and tables["per_action"]["Directions"]["num_samples"] == 3
    assert list(tables["per_subject"]) == ["S9"] and list(tables["per_camera"]) == ["1"]


def random_eval_rows(seed, n=40):
    rng = np.random.default_rng(seed)
    gt = rng.normal(size=(n, 18, 3)) * 300 + [0, 0, 4500]
    pred = gt + rng.normal(size=gt.shape) * rng.uniform(10, 120, size=(n, 1, 1))
    seq = np.stack([rng.choice([9, 11], n), rng.integers(2, 17, n), rng.integers(1, 3, n), rng.integers(1, 5, n)], 1)
    return pred, gt, seq.astype(np.int32), rng.uniform(size=n)


def test_group_tables_match_independent_numpy_grouping():
    pred, gt, seq, loss = random_eval_rows(3)
    valid = np.ones(len(pred))
    valid[-5:] = 0  # padding rows never count, whatever their sequence ids
    seq[-5:] = -1
    acc = evaluation.ErrorAccumulator()
    for lo in range(0, len(pred), 8):  # in batches, as evaluation feeds it
        acc.add_camera(pred[lo:lo + 8], gt[lo:lo + 8], valid[lo:lo + 8], seq[lo:lo + 8], loss[lo:lo + 8])
    tables = acc.tables()
    keep = valid > 0
    p1 = np.linalg.norm((pred - pred[:, :1]) - (gt - gt[:, :1]), axis=-1)[:, :17].mean(-1)[keep]
    names = ["Directions", "Discussion", "Eating", "Greeting", "Phoning", "Posing", "Purchases", "Sitting",
             "SittingDown", "Smoking", "Photo", "Waiting", "Walking", "WalkDog", "WalkTogether"]
    action = seq[keep, 1]
    per_action = {names[a - 2]: p1[action == a].mean() for a in sorted(set(action.tolist()))}
    assert set(tables["per_action"]) == set(per_action)
    for name, want in per_action.items():
        assert tables["per_action"][name]["mpjpe"] == pytest.approx(want, rel=1e-5)
    for subject in (9, 11):
        assert tables["per_subject"][f"S{subject}"]["mpjpe"] == pytest.approx(p1[seq[keep, 0] == subject].mean(),
                                                                              rel=1e-5)
    for cam in set(seq[keep, 3].tolist()):
        row = tables["per_camera"][str(cam)]
        assert row["num_samples"] == int(np.sum(seq[keep, 3] == cam))
    overall = tables["overall"]
    assert overall["mean_over_frames"]["mpjpe"] == pytest.approx(p1.mean(), rel=1e-5)
    assert overall["mean_over_actions"]["mpjpe"] == pytest.approx(np.mean(list(per_action.values())), rel=1e-5)
    assert overall["mean_over_actions"]["num_actions"] == len(per_action)
    # Protocol #2 per group is the group mean of the per-frame PA-MPJPE
    pa = np.asarray(metrics.pa_mpjpe((pred - pred[:, :1])[:, :17], (gt - gt[:, :1])[:, :17]))[keep]
    for subject in (9, 11):
        assert tables["per_subject"][f"S{subject}"]["pa_mpjpe"] == pytest.approx(pa[seq[keep, 0] == subject].mean(),
                                                                                 rel=1e-4)


def assert_nested_close(a, b, rtol=1e-5, where="."):
    """Same keys at every level, numbers equal to ``rtol``."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{where}: {list(a)} vs {list(b)}"
        for k in a:
            assert_nested_close(a[k], b[k], rtol, f"{where}/{k}")
    else:
        assert a == pytest.approx(b, rel=rtol), where


def test_summed_over_processes_in_one_process_keeps_every_number_and_prediction():
    pred, gt, seq, loss = random_eval_rows(4, n=12)
    acc = evaluation.ErrorAccumulator(keep_predictions=True)
    valid = np.array([1] * 10 + [0] * 2)
    acc.add_camera(pred, gt, valid, seq, loss, np.arange(12), np.arange(12) * 5)
    summed = acc.summed_over_processes()
    assert_nested_close(summed.result(), acc.result(), rtol=1e-6)
    assert_nested_close(summed.tables(), acc.tables(), rtol=1e-6)
    mine, theirs = acc.predictions(), summed.predictions()
    assert list(mine) == list(theirs) and len(mine["image_index"]) == 10
    for k in mine:
        np.testing.assert_allclose(theirs[k], mine[k], rtol=1e-6, err_msg=k)


@pytest.fixture(scope="module")
def four_sequence_records(tmp_path_factory):
    """A tiny synthetic set whose validation holds 4 sequences (2 subjects, 4 cameras), 3 frames each."""
    from kinpose_jax.data import convert
    from kinpose_jax.synthetic import h36m as synthetic

    root = str(tmp_path_factory.mktemp("synthetic_eval"))
    synthetic.generate(root, train_folders=1, frames_per_folder=2, valid_folders=4, valid_frames_per_folder=3,
                       image_size=96, seed=5, log=lambda *_: None)
    convert.convert_h36m(root, "validmin", progress=False, log=lambda *_: None)
    return root


def test_saved_predictions_recompute_the_written_tables(four_sequence_records, tmp_path, capsys):
    from configs import default
    from kinpose_jax import evaluate_predictions
    from kinpose_jax.training import parallel, train
    from kinpose_jax.data import h36m_layout, pipeline, records

    config = default.get_config()
    config.data.patch_size = 32
    config.save_predictions = True
    config.num_vis_samples = 0
    config.per_device_batch_size = 2
    mesh = parallel.make_mesh()
    records_dir = os.path.join(four_sequence_records, "records")
    global_batch = 2 * jax.device_count()  # 12 frames: the last batch is padded
    assert 12 % global_batch
    data = pipeline.DataPipeline(pipeline_config(records_dir=records_dir, patch_size=32,
                                                 global_batch_size=global_batch,
                                                 read_threads=1), train=False)
    w = np.random.default_rng(0).normal(size=(18, 3)).astype(np.float32) * 0.1
    results = train.evaluate(config, MirrorSensitiveModel(), {"w": w}, data, mesh, str(tmp_path), step=7)
    written = json.load(open(tmp_path / "eval" / "eval_00000007.json"))
    markdown = (tmp_path / "eval" / "eval_00000007.md").read_text()
    printed = capsys.readouterr().out
    assert "| **mean over actions** |" in markdown and markdown.strip() in printed
    assert results["num_samples"] == 12 and written["mpjpe"] == pytest.approx(results["mpjpe"])
    assert len(written["per_camera"]) == 4 and len(written["per_subject"]) == 2

    # the file names every image: its folder, frame and true joints are the records'
    npz = str(tmp_path / "eval" / "predictions_00000007.npz")
    saved = np.load(npz)
    src = records.ShardedRecords(os.path.join(records_dir, "hm36_validmin"))
    assert saved["image_index"].tolist() == list(range(12))
    for i in range(12):
        rec = src[i]
        assert "/".join([saved["folder"][i], h36m_layout.image_name(saved["folder"][i], int(saved["frame"][i]))]) \
            == rec["image_path"]
        assert h36m_layout.parse_folder_name(saved["folder"][i]) == (
            saved["subject"][i], saved["action"][i], saved["subaction"][i], saved["camera"][i])
        np.testing.assert_allclose(saved["gt_cam"][i], rec["joints_cam"], rtol=1e-6)

    recomputed = evaluate_predictions.main([npz, "--out", str(tmp_path / "again")])
    assert_nested_close(json.load(open(tmp_path / "again.json")), written, rtol=1e-5)
    assert recomputed["pa_mpjpe"] == pytest.approx(results["pa_mpjpe"], rel=1e-5)
    assert (tmp_path / "again.md").read_text().split("\n")[2:] == markdown.split("\n")[2:]  # all but the title


def test_evaluate_predictions_help_and_bad_file(tmp_path, capsys):
    from kinpose_jax import evaluate_predictions

    with pytest.raises(SystemExit) as exit_info:
        evaluate_predictions.main(["--help"])
    assert exit_info.value.code == 0 and "save_predictions" in capsys.readouterr().out
    bad = str(tmp_path / "bad.npz")
    np.savez(bad, pred_cam=np.zeros((1, 18, 3)))
    with pytest.raises(ValueError, match="missing field.*gt_cam"):
        evaluate_predictions.main([bad])


# ------------------------------------------------------------------- evaluation on the devices
def camera_batch(seed, b=8, patch=32):
    """Random camera-space truth, camera, boxes, and patch-pixel predictions near the truth [b, 18, 3]."""
    rng = np.random.default_rng(seed)
    cam = (rng.normal(size=(b, 18, 3)) * 250 + [0, 0, 4500]).astype(np.float32)
    fl = rng.uniform(1100, 1150, size=(b, 2)).astype(np.float32)
    cp = rng.uniform(490, 520, size=(b, 2)).astype(np.float32)
    uv = geometry.project(cam, fl[:, None], cp[:, None])
    center = (uv[:, 0] + rng.normal(size=(b, 2)) * 10).astype(np.float32)
    box = np.repeat(rng.uniform(300, 500, (b, 1)), 2, 1).astype(np.float32)
    px = np.stack([(uv[..., 0] - center[:, None, 0]) / box[:, None, 0] * patch + patch / 2,
                   (uv[..., 1] - center[:, None, 1]) / box[:, None, 1] * patch + patch / 2,
                   (cam[..., 2] - cam[:, :1, 2]) / 2000 * patch], -1)
    px = (px + rng.normal(size=px.shape) * rng.uniform(0.2, 2.0, (b, 1, 1))).astype(np.float32)
    camera = dict(center=center, box_size=box, fl=fl, c_p=cp, pelvis=cam[:, 0], joints_cam=cam)
    return px, camera


def host_reference(px, camera, valid, patch):
    """Evaluation's former host computation: float64 numpy decoding, through the inverse patch
    affine matrix and the back-projection written out here, then the metrics called eagerly on
    the valid rows."""
    px = np.asarray(px, np.float64)
    img = np.empty_like(px)
    for i in range(len(px)):
        inv = geometry.patch_affine(camera["center"][i], camera["box_size"][i], (patch, patch), inverse=True)
        img[i, :, :2] = geometry.apply_affine(px[i, :, :2], inv)
    img[..., 2] = px[..., 2] / patch * 2000.0
    z = img[..., 2] + np.asarray(camera["pelvis"], np.float64)[:, None, 2]
    fl, cp = np.asarray(camera["fl"], np.float64)[:, None], np.asarray(camera["c_p"], np.float64)[:, None]
    pred_cam = np.stack([(img[..., 0] - cp[..., 0]) * z / fl[..., 0], (img[..., 1] - cp[..., 1]) * z / fl[..., 1], z],
                        -1)
    keep = np.asarray(valid).astype(bool)
    errors = {k: np.asarray(v) for k, v in metrics.h36m_errors(pred_cam[keep], camera["joints_cam"][keep]).items()}
    return pred_cam, errors


def test_patch_to_image_on_the_device_equals_the_host_decoding():
    rng = np.random.default_rng(2)
    px = rng.uniform(-0.1, 1.1, size=(5, 18, 3)) * 64
    center, box = rng.uniform(200, 800, (5, 2)), rng.uniform(200, 500, (5, 2))
    scale, rotation = rng.uniform(0.8, 1.2, 5), rng.uniform(-30, 30, 5)
    host = geometry.patch_to_image(px, center, box, (64, 64), 2000.0, scale, rotation)
    for i in range(5):  # per sample through the patch affine itself
        inv = geometry.patch_affine(center[i], box[i], (64, 64), scale[i], rotation[i], inverse=True)
        np.testing.assert_allclose(host[i, :, :2], geometry.apply_affine(px[i, :, :2], inv), atol=1e-9)
        np.testing.assert_allclose(host[i, :, 2], px[i, :, 2] / 64 * 2000.0 * scale[i], rtol=1e-12)
    device = jax.jit(lambda *a: geometry.patch_to_image(*a[:3], (64, 64), 2000.0, a[3], a[4], xp=jnp))(
        px, center, box, scale, rotation)
    assert device.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(device), host, rtol=2e-6, atol=1e-3)


def test_device_metrics_of_a_sharded_batch_equal_the_host_computation():
    """make_eval_step's decoding and metrics (jitted, batch sharded over the 4 devices) give the
    numbers of the host computation, to float32 precision; padding rows are dropped by the host."""
    from configs import default
    from kinpose_jax.training import parallel, train

    patch, b = 32, 8
    px_true, camera = camera_batch(5, b, patch)
    config = default.get_config()
    config.data.patch_size = patch
    config.flip_test = False
    mesh = parallel.make_mesh()

    class Fixed:  # a stand-in network whose predictions are px_true (normalized, as networks output)
        def apply(self, variables, images, train=False):
            return {"joints": variables["joints"]}

    norm = (px_true / patch - [0.5, 0.5, 0.0]).astype(np.float32)
    variables = jax.device_put({"joints": norm}, parallel.replicated(mesh))
    batch = {"image": np.zeros((b, patch, patch, 3), np.uint8), "gains": np.ones((b, 3), np.float32),
             "joints": np.zeros((b, 18, 3), np.float32), "joints_vis": np.ones((b, 18, 3), np.float32), **camera}
    step = train.make_eval_step(config, Fixed(), mesh)
    out = parallel.local_rows(mesh, step(variables, parallel.global_batch(mesh, batch)))
    valid = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    pred_cam, errors = host_reference(out["joints_px"], camera, valid, patch)
    np.testing.assert_allclose(out["joints_px"], px_true, atol=1e-4)
    np.testing.assert_allclose(out["pred_cam"], pred_cam, atol=2e-3)  # mm, at 4.5 m depth
    assert set(out["errors"]) == set(errors)
    for k, want in errors.items():
        np.testing.assert_allclose(out["errors"][k][valid > 0], want, rtol=1e-5, atol=1e-4, err_msg=k)
    # the accumulator keeps h36m_errors' order and sums only the valid rows
    seq = np.array([[9, 2, 1, 1]] * b, np.int32)
    acc = evaluation.ErrorAccumulator()
    acc.add_errors(out["errors"], out["loss"], valid, seq)
    res = acc.result()
    assert list(res)[:-2] == list(errors)
    for k, want in errors.items():
        assert res[k] == pytest.approx(float(np.mean(want)), rel=1e-5, abs=1e-4), k
    # ErrorAccumulator.add (used on predictions of other frameworks) is the same jitted computation
    other = evaluation.ErrorAccumulator()
    host_batch = dict(batch, valid=valid, sequence=seq, image_index=np.arange(b), frame=np.arange(b))
    added_cam, _ = other.add(out["joints_px"], out["loss"], host_batch, patch)
    np.testing.assert_allclose(added_cam, out["pred_cam"], atol=1e-3)
    assert_nested_close(other.result(), res, rtol=1e-5)


class CompileCounter:
    """Counts XLA compilations (in-memory cache misses, persistent-cache loads included)."""

    def __init__(self):
        self.count = 0

    def __call__(self, event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self)


def small_eval_setup(records_root, save_predictions=True, num_vis=0, per_device_batch=2):
    """(config, data, mesh, variables) for the 12-frame set; at a global batch of 8 (the default)
    the second (last) batch holds 4 records and 4 padding rows."""
    from configs import default
    from kinpose_jax.training import parallel
    from kinpose_jax.data import pipeline

    config = default.get_config()
    config.data.patch_size = 32
    config.save_predictions = save_predictions
    config.num_vis_samples = num_vis
    config.per_device_batch_size = per_device_batch
    global_batch = per_device_batch * jax.device_count()
    assert jax.device_count() == 4
    data = pipeline.DataPipeline(pipeline_config(records_dir=os.path.join(records_root, "records"),
                                                 patch_size=32, global_batch_size=global_batch,
                                                 read_threads=1), train=False)
    w = np.random.default_rng(0).normal(size=(18, 3)).astype(np.float32) * 0.1
    return config, data, parallel.make_mesh(), {"w": w}


def test_an_evaluation_with_a_padded_last_batch_compiles_one_program(four_sequence_records, tmp_path):
    """Every batch (the padded last one too) runs the one compiled evaluation step; nothing else
    compiles (no eager metric ops on host arrays), and a second evaluation compiles nothing."""
    from kinpose_jax.training import train

    config, data, mesh, variables = small_eval_setup(four_sequence_records)
    model = MirrorSensitiveModel()
    step = train.make_eval_step(config, model, mesh)
    with CompileCounter() as first:
        res = train.evaluate(config, model, variables, data, mesh, str(tmp_path), step=1, eval_step=step)
    with CompileCounter() as second:
        again = train.evaluate(config, model, variables, data, mesh, str(tmp_path), step=2, eval_step=step)
    data.close()
    assert res["num_samples"] == again["num_samples"] == 12
    assert step._cache_size() == 1
    assert first.count == 1 and second.count == 0
    assert_nested_close(again, res, rtol=0)


def test_results_are_read_back_after_the_next_batch_is_dispatched(four_sequence_records, tmp_path, monkeypatch):
    """Batch k's results are copied to the host while batch k+1 runs: evaluate starts the copy of
    each result it needs at dispatch, and reads batch k back only after dispatching batch k+1."""
    from kinpose_jax.training import parallel, train

    config, data, mesh, variables = small_eval_setup(four_sequence_records, save_predictions=False,
                                                     per_device_batch=1)  # 3 batches of 4
    model = MirrorSensitiveModel()
    step = train.make_eval_step(config, model, mesh)
    events = []

    def recorded_step(variables, batch):
        out = step(variables, batch)
        k = sum(e[0] == "dispatch" for e in events)
        events.append(("dispatch", k))
        for leaf in jax.tree.leaves(out):  # records the copies started before the batch is read back
            leaf.copy_to_host_async = lambda leaf=leaf, k=k: (
                ("read", k) not in events and events.append(("copy", k)), type(leaf).copy_to_host_async(leaf))
        return out

    real_local_rows = parallel.local_rows

    def recorded_local_rows(mesh, arrays):
        events.append(("read", sum(e[0] == "read" for e in events)))
        return real_local_rows(mesh, arrays)

    monkeypatch.setattr(parallel, "local_rows", recorded_local_rows)
    train.evaluate(config, model, variables, data, mesh, str(tmp_path), step=1, eval_step=recorded_step)
    data.close()
    copies_per_batch = len(metrics.h36m_error_names()) + 1  # every error and the loss; nothing else
    assert [e for e in events if e[0] == "copy"] == [("copy", k) for k in range(3) for _ in range(copies_per_batch)]
    order = [e for i, e in enumerate(events) if i == 0 or e != events[i - 1]]
    assert order == [("dispatch", 0), ("copy", 0), ("dispatch", 1), ("copy", 1), ("read", 0),
                     ("dispatch", 2), ("copy", 2), ("read", 1), ("read", 2)]


def test_evaluation_passes_share_one_data_iterator(four_sequence_records, monkeypatch):
    """The evaluation iterator (its grain worker pool) is made once per pipeline: every pass
    reads the same batches from it; a pass of another length, or one left early, starts a new one."""
    from kinpose_jax.data import pipeline

    made = []
    real = pipeline.make_eval_iterator

    def counted(*args, **kwargs):
        made.append(kwargs.get("num_batches"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "make_eval_iterator", counted)
    _, data, _, _ = small_eval_setup(four_sequence_records)
    index = lambda passes: [b["image_index"].tolist() for b in passes]  # noqa: E731
    first = index(data.eval_batches())
    assert first == [list(range(8)), [8, 9, 10, 11, -1, -1, -1, -1]]
    assert index(data.eval_batches()) == first and index(data.eval_batches()) == first
    assert made == [2]
    assert index(data.eval_batches(1)) == first[:1] == index(data.eval_batches(1))
    assert made == [2, 1]
    for _ in data.eval_batches():  # left after its first batch
        break
    assert index(data.eval_batches()) == first
    assert made == [2, 1, 2, 2]
    data.close()
    assert data._eval is None


def test_evaluation_passes_keep_one_pool_of_worker_processes(four_sequence_records):
    """With grain worker processes, every pass is read from the same worker processes, and gives
    the batches of the in-process pipeline."""
    import multiprocessing

    from kinpose_jax.data import pipeline

    def make(workers):
        return pipeline.DataPipeline(pipeline_config(
            records_dir=os.path.join(four_sequence_records, "records"), patch_size=32, global_batch_size=8,
            read_threads=1, worker_count=workers, worker_buffer_size=1), train=False)

    in_process = make(0)
    want = list(in_process.eval_batches())
    in_process.close()
    before = set(multiprocessing.active_children())
    data = make(1)
    try:
        pools = []
        for _ in range(2):
            got = list(data.eval_batches())
            pools.append(set(multiprocessing.active_children()) - before)
            assert len(got) == len(want)
            for a, b in zip(got, want):
                assert a.keys() == b.keys()
                for k in a:
                    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
        assert pools[0] and pools[1] == pools[0]
    finally:
        data.close()


class PixelMomentModel:
    """A stand-in network whose joints follow the image's content and position, smoothly as a
    trained one's do: per joint j, x and y are the first moments over the patch of ``w_j . pixel``
    (normalized units), z its mean (through tanh)."""

    def apply(self, variables, images, train=False):
        h, w = images.shape[1:3]
        q = jnp.einsum("bhwc,jc->bjhw", images, jnp.asarray(variables["w"]))
        x = jnp.mean(q * (jnp.arange(w) / w - 0.5)[None, None, None, :], axis=(2, 3))
        y = jnp.mean(q * (jnp.arange(h) / h - 0.5)[None, None, :, None], axis=(2, 3))
        return {"joints": jnp.stack([x, y, 0.1 * jnp.tanh(jnp.mean(q, axis=(2, 3)))], axis=-1)}


class _Recorded:
    """An evaluation data source (``eval_batches()``) that keeps every batch it hands out."""

    def __init__(self, data):
        self.data, self.batches = data, []

    def eval_batches(self, max_batches=-1):
        for batch in self.data.eval_batches(max_batches):
            self.batches.append(batch)
            yield batch


def test_crop_layout_evaluates_like_the_full_layout(data_root, tmp_path):
    """One model evaluated on the validation set (tests/tiny_problem.py's, at 64x64 patches) converted
    in the full layout and in the crop layout (as main.py converts with ``data.record_layout``):
    every evaluation field (ids, centers, boxes, intrinsics, pelvis, ground truth) is identical and
    every mm metric agrees within 0.5 mm. The model is :class:`PixelMomentModel`, not a tiny
    ResNet: one at initialization or a few steps from it predicts nearly the same joints for
    every image (measured: 0.05 px spread, 2e-5 px between layouts), which would agree whatever the
    patches held. These joints spread over the images and move when the patch content moves: a
    one-pixel shift of the patches moves them several times more than the two layouts differ."""
    from kinpose_jax.training import parallel, train
    from kinpose_jax.data import augment, pipeline, records, setup
    from tests.tiny_problem import tiny_config

    variables = {"w": np.random.default_rng(0).normal(size=(18, 3)).astype(np.float32)}
    model, mesh = PixelMomentModel(), parallel.make_mesh()
    runs = {}
    for layout in ("full", "crop"):
        records_dir = os.path.join(data_root, "records") if layout == "full" else str(tmp_path / "records_crop")
        config = tiny_config(data_root, data__records_dir=records_dir, data__record_layout=layout, data__patch_size=64,
                             per_device_batch_size=2, num_vis_samples=0, save_predictions=True, max_eval_batches=-1)
        data = _Recorded(setup.create(config, config.per_device_batch_size * jax.device_count(), train=False))
        assert records.load_info(os.path.join(records_dir, "hm36_" + config.data.eval_set))["layout"] == layout
        workdir = str(tmp_path / layout)
        results = train.evaluate(config, model, variables, data, mesh, workdir, step=1)
        data.data.close()
        runs[layout] = (results, data.batches, dict(np.load(os.path.join(workdir, "eval", "predictions_00000001.npz"))))
    (full, full_batches, full_pred), (crop, crop_batches, crop_pred) = runs["full"], runs["crop"]
    assert len(full_batches) == len(crop_batches) == 8
    for a, b in zip(full_batches, crop_batches):
        for k in pipeline.EVAL_KEYS:
            if k != "image":
                np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k in ("image_index", "sequence", "frame", "gt_cam", "folder"):
        np.testing.assert_array_equal(full_pred[k], crop_pred[k], err_msg=k)
    assert set(full) == set(crop) and full["num_samples"] == crop["num_samples"] == 64
    percent = {"seed_pck_5mm", "seed_pck_105mm", "pck_150mm", "auc"}  # percentages; num_samples, val_loss: not mm
    for k in sorted(set(full) - percent - {"num_samples", "val_loss"}):
        assert abs(full[k] - crop[k]) < 0.5, (k, full[k], crop[k])  # measured: at most 0.27 mm (hip)
    for k in percent:
        assert abs(full[k] - crop[k]) <= 100.0 / 64 / 18 * 4, (k, full[k], crop[k])  # measured: PCK equal, AUC 0.003 apart

    def joints(images, gains):
        return np.asarray(model.apply(variables, augment.normalize_pixels(images, gains))["joints"])

    full_images = np.concatenate([b["image"] for b in full_batches])
    crop_images = np.concatenate([b["image"] for b in crop_batches])
    gains = np.concatenate([b["gains"] for b in full_batches])
    reference = joints(full_images, gains)
    layouts = np.abs(reference - joints(crop_images, gains)).mean()
    shifted = np.abs(reference - joints(np.roll(full_images, 1, axis=2), gains)).mean()
    spread = reference.std(axis=0).mean()
    assert shifted > 3 * layouts and spread > 20 * layouts, (layouts, shifted, spread)  # measured: 4.2x, 100x


def test_saved_predictions_are_accumulated_in_padded_chunks_of_one_shape():
    """Chunks of 4 over 10 rows (the last padded with invalid rows) give what one chunk gives, with
    one compiled metrics program for every chunk."""
    rng = np.random.default_rng(3)
    n = 10
    gt = rng.normal(scale=300.0, size=(n, 18, 3)) + np.asarray([0.0, 0.0, 4000.0])
    preds = {"image_index": np.arange(n), "frame": np.arange(n), "loss": rng.uniform(size=n),
             "sequence": np.stack([np.full(n, 9), rng.integers(2, 5, n), np.ones(n, int), rng.integers(1, 5, n)], 1),
             "gt_cam": gt, "pred_cam": gt + rng.normal(scale=40.0, size=(n, 18, 3))}
    whole = evaluation.accumulate_predictions(preds)
    compiled = evaluation._errors_jit._cache_size()
    chunked = evaluation.accumulate_predictions(preds, batch_size=4)
    assert evaluation._errors_jit._cache_size() == compiled + 1  # chunks of 4, the last one padded
    assert chunked.result()["num_samples"] == whole.result()["num_samples"] == n
    for key, value in whole.result().items():
        np.testing.assert_allclose(chunked.result()[key], value, rtol=1e-6, err_msg=key)
    # the mean over frames is the metric of the rows themselves (an independent recomputation)
    per_sample = np.linalg.norm((preds["pred_cam"] - preds["pred_cam"][:, :1]) - (gt - gt[:, :1]), axis=-1)
    np.testing.assert_allclose(whole.result()["mpjpe"], per_sample[:, :17].mean(), rtol=1e-5)
    for grouping in ("per_action", "per_camera"):
        assert list(chunked.tables()[grouping]) == list(whole.tables()[grouping])
        for name, row in whole.tables()[grouping].items():
            assert chunked.tables()[grouping][name]["num_samples"] == row["num_samples"]
            np.testing.assert_allclose(chunked.tables()[grouping][name]["mpjpe"], row["mpjpe"], rtol=1e-6)
