"""End to end through main.py on a tiny synthetic Human3.6M set: training on 4 simulated CPU
devices, exact resume after SIGKILL, non-finite loss handling, and evaluation of a checkpoint
converted from PyTorch."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = [
    "--config.data.synthetic=True",
    "--config.data.synthetic_train_folders=2",
    "--config.data.synthetic_frames_per_folder=16",
    "--config.data.synthetic_image_size=160",
    "--config.data.patch_size=64",
    "--config.model.backbone=resnet18",
    "--config.model.depth_bins=8",
    "--config.model.deconv_filters=32",
    "--config.model.num_deconv_layers=1",
    "--config.max_eval_batches=4",
    "--config.num_vis_samples=2",
    "--config.progress_bar=False",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The tiny synthetic set, generated and converted once for this module."""
    root = str(tmp_path_factory.mktemp("synthetic"))
    sys.path.insert(0, ROOT)
    from configs import synthetic
    from kinpose_jax.data import setup

    config = synthetic.get_config()
    config.data.root = root
    config.data.synthetic_train_folders = 2
    config.data.synthetic_frames_per_folder = 16
    config.data.synthetic_image_size = 160
    config.progress_bar = False
    setup.ensure_dataset(config, train=True, process_index=0, log=lambda *a: None)
    return root


def main_cmd(workdir, data_root, *extra):
    return [sys.executable, "main.py", "--config=configs/synthetic.py", f"--workdir={workdir}",
            f"--config.data.root={data_root}", *TINY, *extra]


def run(cmd, devices=1, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def read_rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def last_by_step(rows, kind, key):
    out = {}
    for r in rows:
        if r["kind"] == kind and key in r:
            out[r["step"]] = r[key]
    return out


def test_training_on_four_devices_learns_and_reports(tmp_path, data_root):
    workdir = str(tmp_path / "run")
    untrained = run(main_cmd(workdir + "_untrained", data_root, "--config.num_epochs=1", "--config.steps_per_epoch=1",
                             "--config.per_device_batch_size=2",
                             "--config.optim.learning_rate=1e-12"), devices=4)
    assert untrained.returncode == 0, untrained.stderr[-3000:]
    proc = run(main_cmd(workdir, data_root, "--config.num_epochs=8", "--config.per_device_batch_size=2",
                        "--config.eval_every_epochs=8", "--config.log_every_steps=1",
                        "--config.optim.lr_decay_epochs=(7,8)"), devices=4)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "MPJPE" in proc.stdout and "PA-MPJPE" in proc.stdout
    losses = last_by_step(read_rows(workdir), "train", "loss")
    steps = sorted(losses)
    assert len(steps) == 8 * 4  # 32 records / global batch 8 = 4 steps per epoch
    first, last = np.mean([losses[s] for s in steps[:4]]), np.mean([losses[s] for s in steps[-4:]])
    assert last < 0.8 * first, (first, last)
    trained_eval = json.load(open(sorted(glob.glob(os.path.join(workdir, "eval", "eval_*.json")))[-1]))
    untrained_eval = json.load(open(sorted(glob.glob(os.path.join(workdir + "_untrained", "eval", "*.json")))[-1]))
    assert trained_eval["mpjpe"] < untrained_eval["mpjpe"], (trained_eval["mpjpe"], untrained_eval["mpjpe"])
    for key in ("pa_mpjpe", "seed_aligned", "bone", "pck_150mm", "auc", "hip", "wrist", "17j", "x", "y", "z",
                "val_loss"):
        assert np.isfinite(trained_eval[key]), key
    assert np.isfinite(trained_eval["overall"]["mean_over_actions"]["mpjpe"])
    # what a researcher looks at
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert os.path.getsize(os.path.join(workdir, "learning_curve.png")) > 1000
    assert glob.glob(os.path.join(workdir, "eval", "samples_*.png"))
    rows = read_rows(workdir)
    assert {"loss", "lr", "images_per_s"} <= set(next(r for r in rows if r["kind"] == "train"))
    assert os.listdir(os.path.join(workdir, "checkpoints"))


def test_kill_and_resume_reproduces_the_uninterrupted_losses(tmp_path, data_root):
    common = ["--config.num_epochs=3", "--config.per_device_batch_size=4", "--config.log_every_steps=1",
              "--config.checkpoint_every_steps=3", "--config.eval_every_epochs=3"]
    reference = str(tmp_path / "reference")
    proc = run(main_cmd(reference, data_root, *common))
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = last_by_step(read_rows(reference), "train", "loss")
    assert len(expected) == 24

    killed = str(tmp_path / "killed")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    p = subprocess.Popen(main_cmd(killed, data_root, *common), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:  # kill mid-epoch 2, after a few checkpoints
        if os.path.exists(metrics) and max([r["step"] for r in read_rows(killed)] + [0]) >= 13:
            break
        time.sleep(0.2)
    assert p.poll() is None, "training ended before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = max(r["step"] for r in read_rows(killed))
    assert before < 24
    resumed = run(main_cmd(killed, data_root, *common))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from checkpoint at step" in resumed.stdout
    got = last_by_step(read_rows(killed), "train", "loss")
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_root):
    workdir = str(tmp_path / "nan")
    proc = run(main_cmd(workdir, data_root, "--config.num_epochs=2", "--config.per_device_batch_size=4",
                        "--config.checkpoint_every_steps=1", "--config.optim.learning_rate=1e30"))
    assert proc.returncode != 0
    assert "training loss became" in proc.stderr + proc.stdout
    kept = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert kept, "no checkpoint survived"
    # every array of every kept checkpoint is finite (nothing of the failing step was saved)
    import orbax.checkpoint as ocp

    for step in kept:
        with ocp.PyTreeCheckpointer() as ckptr:
            saved = ckptr.restore(os.path.join(workdir, "checkpoints", str(step), "state"))
        leaves = jax.tree.leaves(saved)
        assert leaves and all(np.all(np.isfinite(np.asarray(x))) for x in leaves), step
    # the kept checkpoint restores and evaluates (it holds finite parameters)
    ev = run(main_cmd(workdir, data_root, "--mode=eval", "--config.num_epochs=2", "--config.per_device_batch_size=4"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert f"Evaluating checkpoint step {kept[-1]}" in ev.stdout


def test_a_non_finite_gradient_norm_stops_training_too():
    from kinpose_jax import train

    class Manager:
        def latest_step(self):
            return 7

    train._check_finite({"loss": 1.0, "grad_norm": 2.0}, 9, 0, "w", Manager())  # finite: no error
    with pytest.raises(train.NonFiniteLossError, match="gradient norm became inf at step 9.*latest: step 7"):
        train._check_finite({"loss": 1.0, "grad_norm": float("inf")}, 9, 0, "w", Manager())
    with pytest.raises(train.NonFiniteLossError, match="training loss became nan"):
        train._check_finite({"loss": float("nan"), "grad_norm": 1.0}, 9, 0, "w", Manager())


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_evaluate_like_one_process(tmp_path, data_root):
    """main.py launched as 2 jax.distributed processes (1 CPU device each, gloo collectives)
    gives the losses and evaluation of one process with 2 devices: same global batches, BN over
    the global batch, each process evaluating its own rows and the sums added over processes."""
    common = ["--config.num_epochs=1", "--config.steps_per_epoch=3", "--config.per_device_batch_size=4",
              "--config.log_every_steps=1", "--config.checkpoint_every_steps=2", "--config.save_predictions=True"]
    single = str(tmp_path / "single")
    proc = run(main_cmd(single, data_root, *common), devices=2)
    assert proc.returncode == 0, proc.stderr[-3000:]

    multi = str(tmp_path / "multi")
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen(main_cmd(multi, data_root, *common, f"--coordinator_address=127.0.0.1:{port}",
                                       "--num_processes=2", f"--process_id={pid}"),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "MPJPE" in outs[0][0] and "MPJPE" not in outs[1][0]  # process 0 reports

    want, got = last_by_step(read_rows(single), "train", "loss"), last_by_step(read_rows(multi), "train", "loss")
    assert sorted(got) == sorted(want) == [1, 2, 3]
    np.testing.assert_allclose([got[s] for s in (1, 2, 3)], [want[s] for s in (1, 2, 3)], rtol=1e-4)
    ev_single = json.load(open(os.path.join(single, "eval", "eval_00000003.json")))
    ev_multi = json.load(open(os.path.join(multi, "eval", "eval_00000003.json")))
    assert ev_multi["num_samples"] == ev_single["num_samples"] == 4 * 8  # max_eval_batches x global batch
    for key in ("mpjpe", "pa_mpjpe", "seed_aligned", "val_loss", "wrist"):
        np.testing.assert_allclose(ev_multi[key], ev_single[key], rtol=1e-3, err_msg=key)
    # per-group sums and kept predictions are gathered over processes too
    for grouping in ("per_action", "per_subject", "per_camera"):
        assert list(ev_multi[grouping]) == list(ev_single[grouping]), grouping
        for name, row in ev_single[grouping].items():
            assert ev_multi[grouping][name]["num_samples"] == row["num_samples"], (grouping, name)
            np.testing.assert_allclose(ev_multi[grouping][name]["mpjpe"], row["mpjpe"], rtol=1e-3)
    p_single = np.load(os.path.join(single, "eval", "predictions_00000003.npz"))
    p_multi = np.load(os.path.join(multi, "eval", "predictions_00000003.npz"))
    assert p_multi["image_index"].tolist() == p_single["image_index"].tolist() == list(range(32))
    assert p_multi["folder"].tolist() == p_single["folder"].tolist()
    np.testing.assert_allclose(p_multi["pred_cam"], p_single["pred_cam"], rtol=1e-3, atol=0.5)


def test_resume_with_another_global_batch_is_refused(tmp_path, data_root):
    workdir = str(tmp_path / "run")
    first = run(main_cmd(workdir, data_root, "--config.num_epochs=1", "--config.steps_per_epoch=1",
                         "--config.per_device_batch_size=4"))
    assert first.returncode == 0, first.stderr[-3000:]
    again = run(main_cmd(workdir, data_root, "--config.num_epochs=2", "--config.steps_per_epoch=1",
                         "--config.per_device_batch_size=2"))
    assert again.returncode == 1
    assert "written with global_batch=4, this run has global_batch=2" in again.stderr, again.stderr[-2000:]
    assert "Traceback" not in again.stderr


def test_eval_mode_takes_a_checkpoint_converted_from_pytorch(tmp_path, data_root):
    import torch

    from tests import torch_pose_reference as ref

    net = ref.randomize(ref.build(18, "integral", num_joints=18, depth_bins=8, filters=32, num_layers=1)).eval()
    torch_path = str(tmp_path / "seed.pth.tar")
    torch.save({"network": net.state_dict()}, torch_path)
    converted = str(tmp_path / "converted")
    conv = run([sys.executable, "-m", "kinpose_jax.convert_torch", torch_path, converted])
    assert conv.returncode == 0, conv.stderr[-3000:]
    ev = run(main_cmd(str(tmp_path / "eval"), data_root, "--mode=eval", f"--checkpoint={converted}"))
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "MPJPE" in ev.stdout
    assert glob.glob(os.path.join(str(tmp_path / "eval"), "eval", "eval_*.json"))
