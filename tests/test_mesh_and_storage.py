"""The device mesh (topology order made process-major), data preparation by process 0 with the
others meeting it at a collective, and workdir paths that need not be local files."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from jax.sharding import AxisType

from kinpose_jax.training import parallel
from kinpose_jax.data import DataError, setup
from tests.tiny_problem import tiny_config


def test_mesh_spans_every_device_once_in_process_major_order():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == (parallel.DATA_AXIS,)
    assert mesh.axis_types == (AxisType.Auto,)
    devices = list(mesh.devices.flat)
    assert len(devices) == jax.device_count() == 4  # tests/conftest.py
    assert sorted(d.id for d in devices) == sorted(d.id for d in jax.devices())
    processes = [d.process_index for d in devices]
    assert processes == sorted(processes)


def test_process_major_keeps_each_process_topology_order():
    fake = [SimpleNamespace(process_index=p, id=i) for p, i in [(1, 6), (0, 3), (1, 4), (0, 0), (0, 2), (1, 5)]]
    got = parallel.process_major(np.asarray(fake, dtype=object))
    assert [(d.process_index, d.id) for d in got] == [(0, 3), (0, 0), (0, 2), (1, 6), (1, 4), (1, 5)]


def test_a_process_that_does_not_see_the_prepared_data_names_the_missing_file(tmp_path):
    config = tiny_config(str(tmp_path / "nothing"))
    with pytest.raises(DataError, match=r"process 1: .*hm36_train/dataset_info\.json.* every process sees"):
        setup.ensure_dataset(config, train=True, process_index=1)  # prepares nothing: not process 0


def test_other_processes_raise_when_process_0_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(setup, "_process0_failed", lambda failed: True)  # process 0's broadcast status
    with pytest.raises(DataError, match="process 1: process 0 failed to prepare the data"):
        setup.ensure_dataset(tiny_config(str(tmp_path)), train=True, process_index=1)


def test_process_0_reports_its_own_preparation_error(tmp_path):
    config = tiny_config(str(tmp_path / "missing"), data__synthetic=False)
    with pytest.raises(DataError, match="found neither a cache"):
        setup.ensure_dataset(config, train=True, process_index=0, log=lambda *a: None)


def test_prepared_data_passes_the_check_on_every_process(data_root):
    for process_index in (0, 1):
        setup.ensure_dataset(tiny_config(data_root), train=True, process_index=process_index, log=lambda *a: None)


# ------------------------------------------------------------------------------ remote workdirs
@pytest.fixture
def fake_bucket(tmp_path, monkeypatch):
    """``gs://bucket/...`` served from ``tmp_path/store`` through etils.epath's mock backend; the
    working directory is ``tmp_path/cwd``, where ``os``-level code would create ``gs:/bucket/...``."""
    from etils import epath

    store, cwd = tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    to_local = lambda p: str(p).replace("gs://bucket", str(store), 1)  # noqa: E731

    def one(fn, path, *args, **kwargs):
        return fn(to_local(path), *args, **kwargs)

    def two(fn, path, dst, *args, **kwargs):
        return fn(to_local(path), to_local(dst), *args, **kwargs)

    def glob(fn, pattern):
        return [p.replace(str(store), "gs://bucket", 1) for p in fn(to_local(pattern))]

    names = ("exists", "isdir", "listdir", "makedirs", "mkdir", "open", "remove", "rmtree", "stat")
    with epath.testing.mock_epath(**{n: one for n in names}, rename=two, replace=two, glob=glob):
        yield store
    assert list(cwd.iterdir()) == []  # nothing went to a local "gs:" folder


def test_checkpoint_housekeeping_in_a_gs_workdir(fake_bucket):
    from kinpose_jax.training import checkpointing

    workdir = "gs://bucket/run"
    assert checkpointing.lock_workdir(workdir) is None  # no flock on object stores
    assert str(checkpointing.checkpoint_dir(workdir)) == "gs://bucket/run/checkpoints"
    ckpts = fake_bucket / "run" / "checkpoints"
    for name in ("3", "7", "12.orbax-checkpoint-tmp-99"):
        (ckpts / name / "metrics").mkdir(parents=True)
    (ckpts / "3" / "metrics" / "metrics").write_text('{"val_loss": 1.0}')
    (ckpts / "7" / "metrics" / "metrics").write_text('{"val_lo')
    assert checkpointing.step_dirs(workdir) == [7, 3]
    assert list(checkpointing.unreadable_metrics(workdir)) == [7]
    assert checkpointing.remove_partial_saves(workdir) == ["gs://bucket/run/checkpoints/12.orbax-checkpoint-tmp-99"]
    assert checkpointing.set_aside(workdir, 7) == "gs://bucket/run/damaged_checkpoints/7"
    assert sorted(p.name for p in ckpts.iterdir()) == ["3"]
    assert (fake_bucket / "run" / "damaged_checkpoints" / "7" / "metrics" / "metrics").exists()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # tensorboardX GCS writer __del__
def test_metrics_reports_and_plots_in_a_gs_workdir(fake_bucket, caplog):
    from kinpose_jax.training import reporting

    workdir = "gs://bucket/run"
    writer = reporting.MetricWriter(workdir)  # tensorboardX has no gs:// writer here: a warning, no events
    writer.write(1, "train", {"loss": 2.0})
    writer.write(2, "train", {"loss": 1.5})
    writer.close()
    assert "no TensorBoard events" in caplog.text
    rows = reporting.read_metrics(writer.path)
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.0), (2, 1.5)]
    reporting.plot_learning_curve(rows, workdir + "/learning_curve.png")
    assert (fake_bucket / "run" / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = {g: 1.0 for g in ("mpjpe", "pa_mpjpe", "seed_aligned", "bone", "x", "y", "z", "pck_150mm", "auc",
                                "seed_pck_5mm", "seed_pck_105mm")}
    results.update({g: 1.0 for g in reporting.skeleton.H36M_EVAL_GROUPS})
    tables = {f"per_{g}": {} for g in ("action", "subject", "camera")}
    tables["overall"] = {"mean_over_frames": {"mpjpe": 1.0, "pa_mpjpe": 1.0, "num_samples": 0},
                         "mean_over_actions": {"mpjpe": 1.0, "pa_mpjpe": 1.0, "num_actions": 0}}
    reporting.write_eval_report(workdir + "/eval/eval_00000002", results, tables, "title")
    assert json.loads((fake_bucket / "run" / "eval" / "eval_00000002.json").read_text())["mpjpe"] == 1.0
    assert (fake_bucket / "run" / "eval" / "eval_00000002.md").read_text().startswith("### title")


def test_records_on_a_bucket_are_refused_naming_the_path(tmp_path):
    config = tiny_config(str(tmp_path), data__records_dir="gs://bucket/records")
    with pytest.raises(DataError, match="gs://bucket/records: records must be on a local file system"):
        setup.ensure_dataset(config, train=True, process_index=0)


def test_saved_predictions_in_a_gs_workdir(fake_bucket):
    from kinpose_jax.training import evaluation

    rng = np.random.default_rng(0)
    preds = {"image_index": np.arange(3), "sequence": np.asarray([[9, 2, 1, 1], [9, 2, 1, 2], [11, 3, 2, 4]]),
             "frame": np.asarray([0, 5, 10]), "pred_cam": rng.normal(size=(3, 18, 3)),
             "gt_cam": rng.normal(size=(3, 18, 3)), "loss": rng.uniform(size=3)}
    target = "gs://bucket/run/eval/predictions_00000002.npz"
    (fake_bucket / "run" / "eval").mkdir(parents=True)
    evaluation.save_predictions(target, preds)
    assert sorted(p.name for p in (fake_bucket / "run" / "eval").iterdir()) == ["predictions_00000002.npz"]
    loaded = evaluation.load_predictions(target)
    for key, value in preds.items():
        np.testing.assert_array_equal(loaded[key], value)
    assert loaded["folder"].tolist()[2] == "s_11_act_03_subact_02_ca_04"
    assert loaded["camera"].tolist() == [1, 2, 4]
