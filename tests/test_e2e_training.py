"""End to end on a tiny synthetic Human3.6M set: training and evaluation in-process on the 4
simulated CPU devices of tests/conftest.py (as flax's examples test their drivers), and main.py /
converter subprocesses only where the process boundary is the point: exact resume after SIGKILL,
main.py as two jax.distributed processes, the converter's command line."""

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

from tests.tiny_problem import tiny_args, tiny_config
from tests.xla_env import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_cmd(workdir, data_root, *extra):
    return [sys.executable, "main.py", "--config=configs/synthetic.py", f"--workdir={workdir}",
            f"--config.data.root={data_root}", *tiny_args(), *extra]


def run(cmd, devices=1, timeout=900):
    env = subprocess_env(devices)
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


#: The long in-process run (8 epochs of 2 steps; 4x the tiny runs' learning rate, a runtime value of
#: the same compiled step, so that 16 steps learn clearly), and the main.py run the SIGKILL test kills
#: (the same run, checkpointing mid-epoch too): the long run is its uninterrupted reference.
LONG_RUN = dict(num_epochs=8, eval_every_epochs=8, log_every_steps=1, optim__learning_rate=4e-3)
KILLED_RUN = dict(LONG_RUN, checkpoint_every_steps=3)


#: The short in-process run, and the two-process run of the same global batches it is the reference of.
SHORT_RUN = dict(num_epochs=2, log_every_steps=1, save_predictions=True)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, data_root):
    """A finished two-epoch (4-step) in-process run on the 4 simulated devices, losses logged every
    step and evaluation predictions saved (copy it before changing it)."""
    from kinpose_jax.training import train

    workdir = str(tmp_path_factory.mktemp("short") / "run")
    train.train_and_evaluate(tiny_config(data_root, **SHORT_RUN), workdir)
    return workdir


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, data_root):
    """A finished 8-epoch (16-step) run of the same programs, losses logged every step. Its losses do not
    depend on checkpoint or evaluation cadence (the schedule is fixed in epochs and each sample by its
    index). Returns (workdir, what it printed)."""
    import contextlib
    import io

    from kinpose_jax.training import train

    workdir = str(tmp_path_factory.mktemp("long") / "run")
    with contextlib.redirect_stdout(io.StringIO()) as out:
        train.train_and_evaluate(tiny_config(data_root, **LONG_RUN), workdir)
    return workdir, out.getvalue()


def test_training_on_four_devices_learns_and_reports(short_run, long_run):
    assert jax.device_count() == 4
    workdir, out = long_run
    assert "MPJPE" in out and "PA-MPJPE" in out
    # two epochs (4 steps) against eight (16 steps), the same compiled programs
    losses = last_by_step(read_rows(workdir), "train", "loss")
    steps = sorted(losses)
    assert len(steps) == 8 * 2
    first, last = np.mean([losses[s] for s in steps[:4]]), np.mean([losses[s] for s in steps[-4:]])
    assert last < 0.8 * first, (first, last)
    trained_eval = json.load(open(sorted(glob.glob(os.path.join(workdir, "eval", "eval_*.json")))[-1]))
    short_eval = json.load(open(sorted(glob.glob(os.path.join(short_run, "eval", "eval_*.json")))[-1]))
    assert trained_eval["mpjpe"] < short_eval["mpjpe"], (trained_eval["mpjpe"], short_eval["mpjpe"])
    for key in ("pa_mpjpe", "seed_aligned", "bone", "hip", "wrist", "17j", "x", "y", "z", "val_loss"):
        assert np.isfinite(trained_eval[key]), key
    # what a researcher looks at
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    assert os.path.getsize(os.path.join(workdir, "learning_curve.png")) > 1000
    assert glob.glob(os.path.join(workdir, "eval", "samples_*.png"))
    rows = read_rows(workdir)
    assert {"loss", "lr", "images_per_s"} <= set(next(r for r in rows if r["kind"] == "train"))
    assert os.listdir(os.path.join(workdir, "checkpoints"))


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s child processes and of theirs (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        for path in glob.glob(f"/proc/{todo.pop()}/task/*/children"):
            try:
                kids = [int(c) for c in open(path).read().split()]
            except OSError:
                kids = []
            found += kids
            todo += kids
    return found


def _is_zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_kill_and_resume_reproduces_the_uninterrupted_losses(tmp_path, data_root, long_run, capsys):
    """main.py (4 simulated devices like this process, the same global batch) is SIGKILLed
    mid-epoch; the run then resumes in this process (its compiled programs are the long run's);
    the uninterrupted reference is the in-process long run's 16 steps. The killed trainer's grain
    workers end by themselves (they are not killed with it)."""
    from kinpose_jax.training import train

    expected = last_by_step(read_rows(long_run[0]), "train", "loss")
    assert len(expected) == 16

    # one grain worker process whatever the machine's CPU count (losses do not depend on it)
    args = [f"--config.{k.replace('__', '.')}={v}" for k, v in KILLED_RUN.items()] + ["--config.data.worker_count=1"]
    killed = str(tmp_path / "killed")
    env = subprocess_env(4)
    p = subprocess.Popen(main_cmd(killed, data_root, *args), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    metrics = os.path.join(killed, "metrics.jsonl")
    deadline = time.time() + 600
    try:
        while time.time() < deadline and p.poll() is None:  # kill after step 10 (checkpoints every 3 steps)
            if os.path.exists(metrics) and max([r["step"] for r in read_rows(killed)] + [0]) >= 10:
                break
            time.sleep(0.2)
        assert p.poll() is None, "training ended before it could be killed"
        children = descendants(p.pid)
        assert children, "main.py runs its input pipeline in worker processes"
        os.kill(p.pid, signal.SIGKILL)  # main.py alone: its workers notice and end themselves
        p.wait()
        deadline = time.time() + 30
        while time.time() < deadline and any(os.path.exists(f"/proc/{c}") and not _is_zombie(c) for c in children):
            time.sleep(0.2)
        left = [c for c in children if os.path.exists(f"/proc/{c}") and not _is_zombie(c)]
        assert not left, f"processes of the killed trainer still running: {left}"
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    before = max(r["step"] for r in read_rows(killed))
    assert before < 16
    capsys.readouterr()
    train.train_and_evaluate(tiny_config(data_root, **KILLED_RUN, data__worker_count=1), killed)
    assert "Resumed from checkpoint at step" in capsys.readouterr().out
    got = last_by_step(read_rows(killed), "train", "loss")
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [expected[s] for s in sorted(expected)], rtol=1e-6)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_evaluate_like_one_process(tmp_path, data_root, short_run):
    """main.py launched as 2 jax.distributed processes (2 CPU devices each, gloo collectives)
    gives the losses and evaluation of the in-process short run on 4 devices: same global batches,
    BN over the global batch, each process evaluating its own rows and the sums added over processes."""
    single = short_run
    multi = str(tmp_path / "multi")
    port = free_port()
    env = subprocess_env(2)
    args = [f"--config.{k}={v}" for k, v in SHORT_RUN.items()]
    procs = [subprocess.Popen(main_cmd(multi, data_root, *args, f"--coordinator_address=127.0.0.1:{port}",
                                       "--num_processes=2", f"--process_id={pid}"),
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for pid in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "MPJPE" in outs[0][0] and "MPJPE" not in outs[1][0]  # process 0 reports

    want, got = last_by_step(read_rows(single), "train", "loss"), last_by_step(read_rows(multi), "train", "loss")
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in (1, 2, 3, 4)], [want[s] for s in (1, 2, 3, 4)], rtol=1e-4)
    ev_single = json.load(open(os.path.join(single, "eval", "eval_00000004.json")))
    ev_multi = json.load(open(os.path.join(multi, "eval", "eval_00000004.json")))
    assert ev_multi["num_samples"] == ev_single["num_samples"] == 4 * 8  # max_eval_batches x global batch
    for key in ("mpjpe", "pa_mpjpe", "seed_aligned", "val_loss", "wrist"):
        np.testing.assert_allclose(ev_multi[key], ev_single[key], rtol=1e-3, err_msg=key)
    # per-group sums and kept predictions are gathered over processes too
    for grouping in ("per_action", "per_subject", "per_camera"):
        assert list(ev_multi[grouping]) == list(ev_single[grouping]), grouping
        for name, row in ev_single[grouping].items():
            assert ev_multi[grouping][name]["num_samples"] == row["num_samples"], (grouping, name)
            np.testing.assert_allclose(ev_multi[grouping][name]["mpjpe"], row["mpjpe"], rtol=1e-3)
    p_single = np.load(os.path.join(single, "eval", "predictions_00000004.npz"))
    p_multi = np.load(os.path.join(multi, "eval", "predictions_00000004.npz"))
    assert p_multi["image_index"].tolist() == p_single["image_index"].tolist() == list(range(32))
    assert p_multi["folder"].tolist() == p_single["folder"].tolist()
    np.testing.assert_allclose(p_multi["pred_cam"], p_single["pred_cam"], rtol=1e-3, atol=0.5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_root, capsys):
    from kinpose_jax.training import train

    workdir = str(tmp_path / "nan")
    config = tiny_config(data_root, num_epochs=2, checkpoint_every_steps=1, optim__learning_rate=1e30)
    with pytest.raises(train.NonFiniteLossError):
        train.train_and_evaluate(config, workdir)
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
    capsys.readouterr()
    train.evaluate_checkpoint(config, workdir)
    assert f"Evaluating checkpoint step {kept[-1]}" in capsys.readouterr().out


def test_a_non_finite_gradient_norm_stops_training_too():
    from kinpose_jax.training import train

    class Manager:
        def latest_step(self):
            return 7

    train._check_finite({"loss": 1.0, "grad_norm": 2.0}, 9, 0, "w", Manager())  # finite: no error
    with pytest.raises(train.NonFiniteLossError, match="gradient norm became inf at step 9.*latest: step 7"):
        train._check_finite({"loss": 1.0, "grad_norm": float("inf")}, 9, 0, "w", Manager())
    with pytest.raises(train.NonFiniteLossError, match="training loss became nan"):
        train._check_finite({"loss": float("nan"), "grad_norm": 1.0}, 9, 0, "w", Manager())


def test_resume_with_another_global_batch_is_refused(tmp_path, data_root, short_run):
    import shutil

    from kinpose_jax.training import train

    workdir = str(tmp_path / "run")
    shutil.copytree(short_run, workdir)
    with pytest.raises(train.CheckpointMismatchError, match="written with global_batch=8, this run has global_batch=4"):
        train.train_and_evaluate(tiny_config(data_root, num_epochs=3, per_device_batch_size=1), workdir)


def test_eval_mode_takes_a_checkpoint_converted_from_pytorch(tmp_path, data_root, capsys):
    """The converter's command line (a subprocess), then --mode=eval's evaluation in-process."""
    import torch

    from kinpose_jax.training import train
    from tests import torch_pose_reference as ref

    net = ref.randomize(ref.build(10, "integral", num_joints=18, depth_bins=8, filters=32, num_layers=1)).eval()
    torch_path = str(tmp_path / "seed.pth.tar")
    torch.save({"network": net.state_dict()}, torch_path)
    converted = str(tmp_path / "converted")
    conv = run([sys.executable, "-m", "kinpose_jax.convert_torch", torch_path, converted])
    assert conv.returncode == 0, conv.stderr[-3000:]
    train.evaluate_checkpoint(tiny_config(data_root), str(tmp_path / "eval"), converted)
    assert "MPJPE" in capsys.readouterr().out
    assert glob.glob(os.path.join(str(tmp_path / "eval"), "eval", "eval_*.json"))
