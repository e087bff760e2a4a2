"""Training survives or refuses, in one line, what a long run meets: non-finite updates, damaged
checkpoints, a torn metrics.jsonl, a second run in the same workdir, resume mismatches, failed
saves and unwritable workdirs, restarts of a finished run. In-process, on a tiny synthetic set
(ResNet-10 at 32x32, 2 steps); compiled programs are shared through a persistent cache."""

from __future__ import annotations

import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import grain.python as grain
import jax
import numpy as np
import pytest

from tests.test_e2e_training import ROOT
from tests.tiny_problem import tiny_config as shared_tiny_config

sys.path.insert(0, ROOT)


def tiny_config(root, **overrides):
    """The shared tiny config (its compiled programs) for 1 epoch of 2 steps, checkpointing every
    step; evaluations draw no sample figure (tests/test_e2e_training.py checks those)."""
    base = dict(max_eval_batches=1, num_vis_samples=0, num_epochs=1, checkpoint_every_steps=1, log_every_steps=1)
    return shared_tiny_config(root, **{**base, **{k.replace(".", "__"): v for k, v in overrides.items()}})


def train_losses(workdir):
    from kinpose_jax.training import reporting

    return {r["step"]: r["loss"] for r in reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if r["kind"] == "train"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_root):  # noqa: F811
    """A finished 2-step run with checkpoints at steps 1 and 2 (copy it before changing it)."""
    from kinpose_jax.training import train

    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    train.train_and_evaluate(tiny_config(data_root), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    return workdir


def _no_initializing(*args, **kwargs):
    raise AssertionError("a resumed run initialized a training state")


def test_the_restore_target_is_the_initial_state_without_initializing(data_root):
    """train.state_shapes (a resume's restore target, traced only) has create_state's structure,
    shapes, dtypes and shardings."""
    from kinpose_jax.models import build_pose_net
    from kinpose_jax.training import checkpointing, parallel, train

    config = tiny_config(data_root)
    mesh = parallel.make_mesh()
    model = build_pose_net(config.model)
    _, tx, _ = train.make_jitted_train_step(config, model, config.steps_per_epoch, mesh)
    want = checkpointing.abstract_like(train.create_state(config, model, tx, mesh))
    got = train.state_shapes(config, model, tx, mesh)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert jax.tree.leaves(got) == jax.tree.leaves(want)  # ShapeDtypeStructs: shape, dtype, sharding


def copy_run(finished_run, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished_run, workdir)
    return workdir


# ------------------------------------------------------------------------------------------ 6
def test_an_update_that_makes_the_parameters_non_finite_is_never_saved(tmp_path, data_root):  # noqa: F811
    """lr 1e39 is inf in float32: step 1's loss is finite but its updated parameters are not."""
    from kinpose_jax.training import train

    workdir = str(tmp_path / "run")
    with pytest.raises(train.NonFiniteLossError) as info:
        train.train_and_evaluate(tiny_config(data_root, **{"optim.learning_rate": 1e39}), workdir)
    text = str(info.value)
    assert "at step 1" in text and "learning rate became" in text and "parameters" in text, text
    assert not glob.glob(os.path.join(workdir, "checkpoints", "[0-9]*")), "a non-finite state was saved"
    assert "No checkpoint was written yet" in text, text


def test_the_train_step_reports_a_non_finite_state_after_a_finite_loss(data_root):  # noqa: F811
    """The step checks the state it returns, not only its loss: finite parameters and a finite
    loss, but one inf in the optimizer's first moment makes the updated parameters NaN (the tiny
    run's compiled step, on a fixed batch)."""
    from kinpose_jax.models import build_pose_net
    from kinpose_jax.training import parallel, train
    from tests.tiny_problem import tiny_batch

    config = tiny_config(data_root)
    model, mesh = build_pose_net(config.model), parallel.make_mesh()
    _, tx, step = train.make_jitted_train_step(config, model, config.steps_per_epoch, mesh)
    state = train.create_state(config, model, tx, mesh)
    leaves, treedef = jax.tree.flatten(state.opt_state)
    first = next(i for i, x in enumerate(leaves) if x.ndim == 4)  # a conv kernel's first moment
    leaves[first] = leaves[first].at[0, 0, 0, 0].set(np.inf)
    state = jax.device_put(state.replace(opt_state=jax.tree.unflatten(treedef, leaves)), parallel.replicated(mesh))
    batch = parallel.global_batch(mesh, tiny_batch(config.data.patch_size))
    new_state, metrics = step(state, batch, train.learning_rate_of(config, mesh))
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    assert np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"]) and np.isfinite(values["lr"])
    assert values["state_finite"] == 0.0
    assert not all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new_state.params))

    class Manager:
        def latest_step(self):
            return 4

    with pytest.raises(train.NonFiniteLossError, match="parameters / optimizer state hold NaN/inf at step 5.*"
                                                       "latest: step 4"):
        train._check_finite(values, 5, 0, "w", Manager())
    finite = dict(values, state_finite=1.0)
    train._check_finite(finite, 5, 0, "w", Manager())  # all finite: no error


# ------------------------------------------------------------------------------------------ 7
def _damage(path, how):
    if how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    elif how == "zero":
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(b"\0" * size)
    else:
        os.remove(path)


def _largest_file(folder):
    files = [p for p in glob.glob(os.path.join(folder, "**"), recursive=True) if os.path.isfile(p)]
    return max(files, key=os.path.getsize)


@pytest.mark.parametrize("target, how", [
    ("state data", "truncate"), ("state/manifest.ocdbt", "zero"), ("state/_METADATA", "zero"),
    ("data_iter", "delete"), ("metrics/metrics", "zero"),
])
def test_a_damaged_latest_checkpoint_is_skipped_and_the_run_continues_from_the_previous(
        finished_run, tmp_path, capsys, data_root, target, how, monkeypatch):  # noqa: F811
    from kinpose_jax.training import train

    monkeypatch.setattr(train, "create_state", _no_initializing)  # a resume restores into the state's shapes

    workdir = copy_run(finished_run, tmp_path)
    latest = os.path.join(workdir, "checkpoints", "2")
    if target == "state data":
        path = _largest_file(os.path.join(latest, "state"))
    elif target == "data_iter":
        path = glob.glob(os.path.join(latest, "data_iter", "process_*.json"))[0]
    else:
        path = os.path.join(latest, target)
    _damage(path, how)
    expected = train_losses(finished_run)
    os.remove(os.path.join(workdir, "metrics.jsonl"))

    train.train_and_evaluate(tiny_config(data_root), workdir)
    out = capsys.readouterr().out
    moved = os.path.join(workdir, "damaged_checkpoints", "2")
    assert "Skipped checkpoint step 2: " in out and f"moved it to {moved}" in out, out
    assert "Resumed from checkpoint at step 1" in out, out
    assert os.path.isdir(moved), "the damaged checkpoint must be kept"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    got = train_losses(workdir)  # step 2 retrained from checkpoint 1: the same loss as the first time
    assert list(got) == [2]
    np.testing.assert_allclose(got[2], expected[2], rtol=1e-6)


def test_a_restored_checkpoint_holding_nan_is_skipped(finished_run, tmp_path, capsys, data_root, monkeypatch):  # noqa: F811
    """The newest checkpoint restores but one of its values is NaN: it is set aside like a damaged one."""
    from kinpose_jax.training import checkpointing, train

    workdir = copy_run(finished_run, tmp_path)
    restore = checkpointing.restore

    def restore_with_nan(manager, step, *args, **kwargs):
        state, meta = restore(manager, step, *args, **kwargs)
        if step == 2:
            kernel = state.params["backbone"]["conv1"]["kernel"]
            state = state.replace(params=dict(state.params, backbone=dict(
                state.params["backbone"], conv1=dict(kernel=kernel.at[0, 0, 0, 0].set(np.nan)))))
        return state, meta

    monkeypatch.setattr(checkpointing, "restore", restore_with_nan)
    train.train_and_evaluate(tiny_config(data_root), workdir)
    out = capsys.readouterr().out
    assert "Skipped checkpoint step 2: it holds non-finite (NaN/inf) values" in out, out
    assert "Resumed from checkpoint at step 1" in out, out


def test_when_no_checkpoint_restores_the_run_stops_naming_each(finished_run, tmp_path, data_root):  # noqa: F811
    from kinpose_jax.training import train

    workdir = copy_run(finished_run, tmp_path)
    for step in ("1", "2"):
        _damage(os.path.join(workdir, "checkpoints", step, "state", "manifest.ocdbt"), "zero")
    with pytest.raises(train.NoUsableCheckpointError) as info:
        train.train_and_evaluate(tiny_config(data_root, num_epochs=2), workdir)
    text = str(info.value)
    assert "step 2: it does not restore" in text and "step 1: it does not restore" in text, text
    assert "nothing was deleted" in text
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_eval_mode_skips_a_damaged_best_checkpoint(finished_run, tmp_path, capsys, data_root):  # noqa: F811
    from kinpose_jax.training import train

    workdir = copy_run(finished_run, tmp_path)
    for folder, _, files in os.walk(os.path.join(workdir, "checkpoints", "2", "state")):
        for name in files:  # every array file: whichever holds the parameters on this device count
            _damage(os.path.join(folder, name), "truncate")
    train.evaluate_checkpoint(tiny_config(data_root), workdir)
    out = capsys.readouterr().out
    assert "Skipped checkpoint step 2: it does not restore" in out and "Evaluating checkpoint step 1" in out, out


# ------------------------------------------------------------------------------------------ 8
def test_unreadable_metrics_lines_are_skipped_with_a_warning(tmp_path, caplog):
    from kinpose_jax.training import reporting

    path = tmp_path / "metrics.jsonl"
    rows = [{"step": 1, "kind": "train", "loss": 2.0}, {"step": 2, "kind": "eval", "val_loss": 1.5, "mpjpe": 300.0}]
    lines = [json.dumps(rows[0]), '{"step": 2, "kind": "tr', json.dumps({"step": "x", "kind": "train"}), "[1, 2]",
             json.dumps(rows[1]), '{"step": 3, "kind": "train", "loss": "oops"}']
    path.write_text("\n".join(lines) + "\n")
    with caplog.at_level("WARNING"):
        got = reporting.read_metrics(str(path))
    assert got[:2] == rows
    assert "skipped 3 unreadable line(s): 2, 3, 4" in caplog.text
    reporting.plot_learning_curve(got, str(tmp_path / "curve.png"))  # a non-numeric loss is left out, no crash
    assert os.path.getsize(tmp_path / "curve.png") > 1000


# ------------------------------------------------------------------------------------------ 9
def test_a_second_run_in_a_locked_workdir_is_refused_naming_the_holder(tmp_path, data_root):  # noqa: F811
    import socket

    from kinpose_jax.training import checkpointing, train

    workdir = str(tmp_path / "run")
    fd = checkpointing.lock_workdir(workdir)
    try:
        with pytest.raises(checkpointing.WorkdirLockedError) as info:
            train.train_and_evaluate(tiny_config(data_root), workdir)
    finally:
        checkpointing.unlock_workdir(fd)
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in str(info.value)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
    checkpointing.unlock_workdir(checkpointing.lock_workdir(workdir))  # released


def test_the_lock_of_a_dead_run_is_not_stale(tmp_path):
    """A killed holder's lock goes with it (the process boundary is the point here)."""
    from kinpose_jax.training import checkpointing

    workdir = str(tmp_path / "run")
    code = ("import os, sys; from kinpose_jax.training import checkpointing; checkpointing.lock_workdir(sys.argv[1]); "
            "print('locked', flush=True); sys.stdin.read()")
    p = subprocess.Popen([sys.executable, "-c", code, workdir], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        with pytest.raises(checkpointing.WorkdirLockedError, match=f"pid {p.pid} "):
            checkpointing.lock_workdir(workdir)
    finally:
        p.kill()
        p.wait()
    checkpointing.unlock_workdir(checkpointing.lock_workdir(workdir))


# ------------------------------------------------------------------------------------------ 10
@pytest.mark.parametrize("key, value, message", [
    ("data.worker_count", 1, "written with worker_count=0, this run has worker_count=1 (config: data.worker_count)"),
    ("model.head", "direct", "written with config.model.head='integral', this run has config.model.head='direct'"),
    ("model.deconv_filters", 16, "config.model.deconv_filters=32"),
])
def test_a_resume_that_cannot_continue_the_run_is_refused_in_one_line(finished_run, tmp_path, data_root,
                                                                     key, value, message, monkeypatch):  # noqa: F811
    from kinpose_jax.training import train

    monkeypatch.setattr(train, "create_state", _no_initializing)  # refused before initializing anything
    workdir = copy_run(finished_run, tmp_path)
    with pytest.raises(train.CheckpointMismatchError) as info:
        train.train_and_evaluate(tiny_config(data_root, num_epochs=2, **{key: value}), workdir)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
    assert not os.path.exists(os.path.join(workdir, "damaged_checkpoints"))


# ------------------------------------------------------------------------------------------ 12
def test_a_failed_save_stops_the_run_in_one_line_and_leaves_no_partial_checkpoint(tmp_path, data_root,
                                                                                  monkeypatch):  # noqa: F811
    from kinpose_jax.training import checkpointing, train

    calls = []
    original = grain.PyGrainCheckpointHandler.save

    def full_disk(self, directory, *args, **kwargs):
        calls.append(directory)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(directory))
        return original(self, directory, *args, **kwargs)

    monkeypatch.setattr(grain.PyGrainCheckpointHandler, "save", full_disk)
    workdir = str(tmp_path / "run")
    with pytest.raises(checkpointing.CheckpointSaveError) as info:
        train.train_and_evaluate(tiny_config(data_root), workdir)
    text = train.describe_error(info.value)
    assert "No space left on device" in text and os.path.join(workdir, "checkpoints") in text, text
    assert "\n" not in text
    assert not glob.glob(os.path.join(workdir, "checkpoints", "*orbax-checkpoint-tmp*"))
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1"]


def test_an_unwritable_workdir_is_one_line_naming_it(tmp_path, data_root):  # noqa: F811
    from kinpose_jax.training import train

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(OSError) as info:
        train.train_and_evaluate(tiny_config(data_root), str(blocker / "run"))
    assert isinstance(info.value, train.EXPECTED_ERRORS)
    text = train.describe_error(info.value)
    assert str(blocker) in text and "\n" not in text, text


def test_eval_of_an_empty_workdir_creates_nothing(tmp_path, data_root):  # noqa: F811
    from kinpose_jax.training import train

    workdir = tmp_path / "empty"
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        train.evaluate_checkpoint(tiny_config(data_root), str(workdir))
    assert not workdir.exists()


# ------------------------------------------------------------------------------------------ 15
def test_restarting_a_finished_run_says_so_and_does_nothing(finished_run, tmp_path, capsys, data_root):  # noqa: F811
    from kinpose_jax.training import train

    workdir = copy_run(finished_run, tmp_path)
    before = sorted(os.listdir(os.path.join(workdir, "eval")))
    metrics = open(os.path.join(workdir, "metrics.jsonl")).read()
    assert train.train_and_evaluate(tiny_config(data_root), workdir) == {}
    out = capsys.readouterr().out
    assert "is complete (step 2 of 2)" in out and "--mode=eval" in out and "Resumed" not in out, out
    assert sorted(os.listdir(os.path.join(workdir, "eval"))) == before
    assert open(os.path.join(workdir, "metrics.jsonl")).read() == metrics
