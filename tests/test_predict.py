"""kinpose_jax.predict: decoding to image pixels / root-relative mm, the command on images of the
synthetic set (a main.py workdir as the model), per-image errors, and the jax.export round trip
in a fresh process."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import cv2
import jax
import numpy as np
import pytest

from kinpose_jax import geometry, predict
from kinpose_jax.data import augment, pipeline
from tests.tiny_problem import EXTENDED_TREE
from tests.xla_env import subprocess_env

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCH = 64


def tiny_config(data_root, head="integral"):  # noqa: F811
    from configs import synthetic

    c = synthetic.get_config()
    c.data.root = data_root
    c.data.patch_size = PATCH
    c.model.backbone = "resnet10"
    c.model.head = head
    c.model.depth_bins = 8
    c.model.deconv_filters = 32
    c.model.num_deconv_layers = 1
    return c


def eval_batch(data_root, n=4):  # noqa: F811
    cfg = pipeline.PipelineConfig.from_config(tiny_config(data_root), n)
    return next(iter(pipeline.DataPipeline(cfg, train=False).eval_batches())), cfg


def test_decode_recovers_the_truth_from_the_true_targets(data_root):  # noqa: F811
    """The training targets of evaluation samples, decoded with the true camera: the 2D joints are
    the projections of the true camera-space joints, and the 3D pose (root at the depth where the
    box spans box_mm, which is how the dataset's boxes are made) is the true root-relative pose."""
    batch, cfg = eval_batch(data_root)
    px = geometry.normalized_to_patch(batch["joints"], (PATCH, PATCH))
    uv, cam, root_depth = predict.decode(px, batch["center"], batch["box_size"], PATCH, cfg.box_mm, batch["fl"],
                                         batch["c_p"])
    want_uv = geometry.project(batch["joints_cam"], batch["fl"][:, None], batch["c_p"][:, None])
    np.testing.assert_allclose(uv, want_uv, atol=0.02)
    np.testing.assert_allclose(root_depth, batch["pelvis"][:, 2], rtol=1e-4)
    rel = cam - cam[:, :1]
    want_rel = batch["joints_cam"] - batch["joints_cam"][:, :1]
    assert np.abs(want_rel).max() > 300  # a real pose, not a point
    np.testing.assert_allclose(rel, want_rel, atol=1.0)


# ------------------------------------------------------------------------- a model and its workdir
def perturbed(params, std=0.05):
    """``params`` + N(0, std) noise (the heads start near-constant: zero or N(0, 0.001) weights),
    drawn by numpy on the host and placed as ``params`` are (no compiled program per call)."""
    rng = np.random.default_rng(1)
    noisy = jax.tree.map(lambda x: np.asarray(x) + np.float32(std) * rng.standard_normal(x.shape, np.float32), params)
    return jax.device_put(noisy, jax.tree.map(lambda x: x.sharding, params))


def make_workdir(path, data_root, head="integral"):  # noqa: F811
    """A workdir as main.py leaves it (config.json, an orbax checkpoint of the train state), with
    weights randomized so that the predictions differ clearly from image to image."""
    from kinpose_jax.training import checkpointing, parallel, train
    from kinpose_jax.models import build_pose_net

    config = tiny_config(data_root, head)
    model = build_pose_net(config.model)
    tx = train.make_optimizer(config, train.learning_rate_schedule(config, 10))
    state = train.create_state(config, model, tx, parallel.make_mesh())
    state = state.replace(params=perturbed(state.params))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(config.to_json_best_effort(indent=2))
    manager = checkpointing.make_manager(path, 3)
    checkpointing.save(manager, 7, state, None, {"step": 7}, {"val_loss": 1.0})
    manager.wait_until_finished()
    return config, model, {"params": state.params, "batch_stats": state.batch_stats}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, data_root):  # noqa: F811
    path = str(tmp_path_factory.mktemp("workdir"))
    config, model, variables = make_workdir(path, data_root)
    return path, config, model, variables


def synthetic_images(data_root, n):  # noqa: F811
    folder = os.path.join(data_root, "hm36", "images")
    seq = sorted(os.listdir(folder))[-1]
    files = sorted(os.listdir(os.path.join(folder, seq)))[:n]
    return [os.path.join(folder, seq, f) for f in files]


@functools.cache
def _forward(model):
    """``model.apply(variables, images, train=False)``, jitted once per model."""
    return jax.jit(lambda variables, images: model.apply(variables, images, train=False))


def expected_outputs(model, variables, image_path, x, y, w, h, focal):
    """The prediction for one image and box, computed without kinpose_jax.predict: the training
    sample function crops the square box, the model runs, and the patch pixels are mapped back
    with the box's own scale (no rotation) and a pinhole camera written out here."""
    image = cv2.imread(image_path)
    side = max(w, h)
    center = np.array([x + w / 2.0, y + h / 2.0])
    sample = augment.make_sample(image, center, np.array([side, side]), np.zeros((18, 3)), np.zeros((18, 3)),
                                 augment.NO_AUGMENTATION, (PATCH, PATCH), [])
    pixels = augment.normalize_pixels(sample["image"][None], sample["gains"][None])  # uint8 patch -> network input
    norm = np.asarray(_forward(model)(variables, pixels)["joints"])[0].astype(np.float64)
    uv = center + norm[:, :2] * side  # normalized (x, y) are fractions of the patch around its centre
    z_rel = norm[:, 2] * 2000.0  # normalized depth x box_mm
    root_depth = focal * 2000.0 / side
    hgt, wid = image.shape[:2]
    z = root_depth + z_rel
    cam = np.stack([(uv[:, 0] - wid / 2.0) * z / focal, (uv[:, 1] - hgt / 2.0) * z / focal, z], axis=-1)
    return uv, cam - cam[:1]


def test_predict_writes_json_and_png_per_image_matching_an_independent_computation(tmp_path, workdir, data_root):  # noqa: F811,E501
    path, config, model, variables = workdir
    images = synthetic_images(data_root, 3)
    boxes = {os.path.basename(images[0]): [30.0, 20.0, 90.0, 110.0], images[1]: [50.5, 40.0, 70.0, 60.0],
             os.path.basename(images[2]): [0.0, 0.0, 160.0, 160.0]}
    boxes_path = str(tmp_path / "boxes.json")
    with open(boxes_path, "w") as f:
        json.dump(boxes, f)
    out = str(tmp_path / "out")
    # 3 images, 2 per device: one batch sharded over the devices (4 simulated, tests/conftest.py), padded
    assert jax.device_count() > 1
    rc = predict.main(["--checkpoint", path, "--images", *images, "--boxes", boxes_path, "--focal", "300",
                       "--out", out, "--batch-size", "2"])
    assert rc == 0
    results = [json.load(open(os.path.join(out, os.path.splitext(os.path.basename(p))[0] + ".json"))) for p in images]
    uvs = []
    for p, r in zip(images, results):
        box = boxes.get(p, boxes.get(os.path.basename(p)))
        want_uv, want_rel = expected_outputs(model, variables, p, *box, focal=300.0)
        # float32, batch of 2 on 4 devices vs 1 (host vs device normalization): 0.011 px measured
        np.testing.assert_allclose(r["joints_2d_px"], want_uv, atol=0.02)
        np.testing.assert_allclose(r["joints_3d_mm"], want_rel, atol=0.5)
        assert r["joint_names"][0] == "pelvis" and len(r["joints_3d_mm"]) == 18
        assert r["camera"]["focal_px"] == 300.0 and not r["camera"]["focal_assumed"]
        assert os.path.getsize(os.path.join(out, os.path.splitext(os.path.basename(p))[0] + ".png")) > 5000
        uvs.append(np.asarray(r["joints_2d_px"]))
    assert np.abs(uvs[0] - uvs[1]).max() > 1.0  # the predictions are not the same for every image


def test_without_boxes_the_centred_square_is_used_and_the_focal_is_assumed(tmp_path, workdir, data_root):  # noqa: F811,E501
    path, _, model, variables = workdir
    image = synthetic_images(data_root, 1)[0]
    out = str(tmp_path / "out")
    assert predict.main(["--checkpoint", os.path.join(path, "checkpoints"), "--images", os.path.dirname(image),
                         "--out", out, "--no-plots"]) == 0
    r = json.load(open(os.path.join(out, os.path.splitext(os.path.basename(image))[0] + ".json")))
    assert r["camera"]["focal_assumed"] and r["camera"]["focal_px"] == 160.0  # the image's larger side
    assert r["box"]["center_px"] == [80.0, 80.0] and r["box"]["size_px"] == [160.0, 160.0]
    want_uv, want_rel = expected_outputs(model, variables, image, 0.0, 0.0, 160.0, 160.0, focal=160.0)
    np.testing.assert_allclose(r["joints_2d_px"], want_uv, atol=0.01)  # float32, batch of 2 vs 1
    np.testing.assert_allclose(r["joints_3d_mm"], want_rel, atol=0.5)
    assert not any(f.endswith(".png") for f in os.listdir(out))
    n_images = len([f for f in os.listdir(os.path.dirname(image)) if f.endswith(".jpg")])
    assert len([f for f in os.listdir(out) if f.endswith(".json")]) == n_images  # the whole folder


def test_bad_inputs_are_reported_by_file_and_the_other_images_still_run(tmp_path, workdir, data_root, capsys):  # noqa: F811,E501
    path = workdir[0]
    good, outside, missing, malformed = synthetic_images(data_root, 4)
    broken = str(tmp_path / "broken.jpg")
    with open(broken, "wb") as f:
        f.write(b"not an image")
    absent = str(tmp_path / "absent.jpg")
    boxes = {os.path.basename(p): b for p, b in ((good, [10, 10, 100, 120]), (outside, [200, 10, 30, 30]),
                                                   (malformed, [1, 2, 3]), (broken, [0, 0, 10, 10]))}
    boxes_path = str(tmp_path / "boxes.json")
    with open(boxes_path, "w") as f:
        json.dump(boxes, f)
    out = str(tmp_path / "out")
    rc = predict.main(["--checkpoint", path, "--images", good, outside, missing, malformed, broken, absent,
                       "--boxes", boxes_path, "--out", out, "--no-plots"])
    err = capsys.readouterr().err
    assert rc == 1
    assert os.listdir(out) == [os.path.splitext(os.path.basename(good))[0] + ".json"]
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 5, err
    assert f"error: {outside}: box [x, y, w, h] = [200, 10, 30, 30] from {boxes_path} lies outside the image " \
           f"(160 x 160 px)" in lines
    assert any(line.startswith(f"error: {missing}: no box in {boxes_path}") for line in lines)
    assert any(line.startswith(f"error: {malformed}: box [1, 2, 3]") and "[x, y, width, height]" in line
               for line in lines)
    assert any(line.startswith(f"error: {broken}: cannot read the image") for line in lines)
    assert any(line.startswith(f"error: {absent}: cannot read the image") for line in lines)
    assert "5 image(s) failed" in err


def test_a_workdir_whose_config_json_predates_newer_fields_loads(tmp_path, workdir):
    """A config.json written before model.kinematic_view / box_mm / conv_impl / bn_sync /
    deconv_kernel and data.record_layout / read_threads existed: those fields take their
    configs/default.py values, and the model and weights are the workdir's."""
    import shutil

    path, config, model, variables = workdir
    old = str(tmp_path / "old")
    shutil.copytree(path, old)
    saved = json.loads(config.to_json())
    for field in ("kinematic_view", "box_mm", "conv_impl", "bn_sync", "deconv_kernel"):
        del saved["model"][field]
    for field in ("record_layout", "read_threads"):
        del saved["data"][field]
    with open(os.path.join(old, "config.json"), "w") as f:
        json.dump(saved, f)
    loaded = predict.load_model(old)
    assert loaded.model == model and loaded.patch_size == PATCH
    for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_folder_that_is_no_model_is_refused_by_name(tmp_path, capsys):
    assert predict.main(["--checkpoint", str(tmp_path), "--images", "x.jpg"]) == 2
    assert f"error: --checkpoint {tmp_path}: neither a main.py workdir" in capsys.readouterr().err


def test_help_explains_every_argument(capsys):
    with pytest.raises(SystemExit):
        predict.main(["--help"])
    text = capsys.readouterr().out
    for arg in ("--checkpoint", "--images", "--boxes", "--focal", "--out", "--export", "--batch-size", "--box-scale"):
        assert arg in text


# ------------------------------------------------------------------------- export
RELOAD = """
import json, sys
import numpy as np
from kinpose_jax.predict import load_exported
patches = np.load(sys.argv[1])
for export_dir, out_file in zip(sys.argv[2::2], sys.argv[3::2]):
    model = load_exported(export_dir)
    out = {str(n): model(patches[:n]) for n in (1, 3)}  # two batch sizes from one export
    np.savez(out_file, **{f"{k}_{n}": v for n, o in out.items() for k, v in o.items()})
    print(json.dumps(model.meta["platforms"]))
"""


def test_exports_reload_in_a_fresh_process_with_the_live_outputs(tmp_path, data_root):  # noqa: F811
    """The exported functions of an integral and a kinematic model, loaded by load_exported in one
    new process, give the live models' outputs for batch sizes 3 and 1. The kinematic case uses the
    extended example tree: forward kinematics under a symbolic batch, and its tree joints are
    exported too."""
    from kinpose_jax.training import evaluation
    from kinpose_jax.models import build_pose_net, init_variables

    patches = np.random.default_rng(0).normal(size=(3, PATCH, PATCH, 3)).astype(np.float32)
    np.save(str(tmp_path / "patches.npy"), patches)
    live, args = {}, [str(tmp_path / "patches.npy")]
    for head in ("integral", "kinematic"):
        config = tiny_config(data_root, head)
        config.model.kinematic_tree = EXTENDED_TREE
        model = build_pose_net(config.model)
        variables = init_variables(model, jax.random.key(0), PATCH)
        variables["params"] = perturbed(variables["params"], 0.05 if head == "integral" else 0.01)  # joints in the patch
        loaded = predict.LoadedModel(model, variables, config.model.to_dict(), PATCH, "test")
        predict.export_model(loaded, str(tmp_path / head))
        joints_fn = jax.jit(evaluation.make_joints_fn(model, PATCH, False))
        live[head] = {n: joints_fn(variables, patches[:n]) for n in (1, 3)}
        args += [str(tmp_path / head), str(tmp_path / f"{head}.npz")]
    proc = subprocess.run([sys.executable, "-c", RELOAD, *args], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for head, by_batch in live.items():
        got = np.load(str(tmp_path / f"{head}.npz"))
        assert set(by_batch[3]) == {k.rsplit("_", 1)[0] for k in got.files}
        for n, outputs in by_batch.items():
            for key, value in outputs.items():
                value = np.asarray(value)
                if n == 3:
                    assert np.abs(value[0] - value[1]).max() > 1e-2, (head, key)  # predictions differ per patch
                else:  # the batch-1 program gives the first patch's batch-3 prediction, up to rounding
                    np.testing.assert_allclose(value, np.asarray(by_batch[3][key])[:1], atol=1e-3, rtol=1e-5)
                # each batch size against the live program of that size: compiling the exported
                # program rounds a few float32 ulps differently at most (rtol 1e-6 = 8 ulps); programs
                # of different batch sizes may differ by ~1e-4 px (other kernels, summation orders)
                np.testing.assert_allclose(got[f"{key}_{n}"], value, atol=1e-5, rtol=1e-6, err_msg=f"{head} {key} {n}")
    assert live["kinematic"][3]["tree_joints"].shape == (3, 23, 3)
