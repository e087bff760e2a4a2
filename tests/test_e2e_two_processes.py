"""main.py as two jax.distributed processes against one in-process run of the same global batch
(a module of its own: the run is long enough that pytest-xdist does well to schedule it apart from
tests/test_e2e_training.py)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np

from tests.test_e2e_training import ROOT, last_by_step, main_cmd, read_rows
from tests.tiny_problem import tiny_config
from tests.xla_env import subprocess_env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_and_evaluate_like_one_process(tmp_path, data_root):
    """main.py launched as 2 jax.distributed processes (2 CPU devices each, gloo collectives)
    gives the losses and evaluation of this process with its 4 devices: same global batches, BN
    over the global batch, each process evaluating its own rows and the sums added over processes."""
    from kinpose_jax.training import train

    common = dict(num_epochs=2, log_every_steps=1, checkpoint_every_steps=2, save_predictions=True)
    single = str(tmp_path / "single")
    train.train_and_evaluate(tiny_config(data_root, **common), single)

    multi = str(tmp_path / "multi")
    port = free_port()
    env = subprocess_env(2)
    args = [f"--config.{k}={v}" for k, v in common.items()]
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
