"""Batches on their way to the devices: pixel normalization inside the jitted train step and
predict function, device prefetch with exact resume, the worker/thread settings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from kinpose_jax.training import evaluation, parallel, train
from kinpose_jax.data import pipeline
from tests.test_data_pipeline import MEAN, STD, _cfg, _same, _take


class PixelEcho:
    """A stand-in network whose joints are the first 18 normalized pixels of row 0 of its input."""

    def apply(self, variables, images, train=False, mutable=()):
        out = {"joints": images[:, 0, :18, :] + variables["params"]["b"]}
        return (out, {"batch_stats": {}}) if mutable else out


def _uint8_batch(seed=0, b=4, size=24):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(b, size, size, 3), dtype=np.uint8)
    gains = rng.uniform(0.8, 1.2, size=(b, 3)).astype(np.float32)
    # the host float32 patch (float64 formula, one rounding), the network's expected input
    normalized = ((np.clip(images * gains.astype(np.float64)[:, None, None], 0, 255) - MEAN) / STD).astype(np.float32)
    return images, gains, normalized


def test_train_step_loss_sees_the_normalized_pixels():
    images, gains, normalized = _uint8_batch()
    target = normalized[:, 0, :18, :]
    batch = {"image": images, "gains": gains, "joints": target, "joints_vis": np.ones_like(target)}
    loss_of = jax.jit(train.make_loss_fn(PixelEcho(), "l1"))
    loss, _ = loss_of({"b": jnp.zeros(())}, {}, batch)
    assert float(loss) < 1e-5
    # the gains are applied: without them the same pixels miss the target
    loss_no_gain, _ = loss_of({"b": jnp.zeros(())}, {}, dict(batch, gains=np.ones_like(gains)))
    assert float(loss_no_gain) > 1e-2


def test_predict_sees_the_normalized_pixels():
    images, gains, normalized = _uint8_batch(1, size=32)
    batch = {"image": images, "gains": gains, "joints": np.zeros((4, 18, 3), np.float32),
             "joints_vis": np.ones((4, 18, 3), np.float32)}
    px, _ = jax.jit(evaluation.make_predict_fn(PixelEcho(), 32, flip_test=False))({"params": {"b": 0.0}}, batch)
    seen = (np.asarray(px) / 32.0) - np.array([0.5, 0.5, 0.0])  # patch px -> normalized
    np.testing.assert_allclose(seen, normalized[:, 0, :18, :], atol=1e-5)


def _mesh():
    return Mesh(np.asarray(jax.devices()), (parallel.DATA_AXIS,))


def _prefetching(cfg, mesh, size=2):
    put = lambda b: parallel.global_batch(mesh, {k: b[k] for k in pipeline.MODEL_KEYS})  # noqa: E731
    return parallel.DevicePrefetch(pipeline.make_train_iterator(cfg), put, size)


def _host(device_batch):
    return {k: np.asarray(v) for k, v in device_batch.items()}


def test_prefetched_batches_are_the_pipeline_batches_sharded():
    cfg, mesh = _cfg(), _mesh()
    ref = [{k: b[k] for k in pipeline.MODEL_KEYS} for b in _take(pipeline.make_train_iterator(cfg), 4)]
    it = _prefetching(cfg, mesh)
    got = [next(it) for _ in range(4)]
    assert got[0]["image"].dtype == jnp.uint8 and len(got[0]["image"].sharding.device_set) == jax.device_count()
    assert _same(ref, [_host(b) for b in got])


@pytest.mark.parametrize("size", [1, 2, 3])
def test_prefetch_state_counts_consumed_batches_only(size):
    """State saved after N consumed batches (with more prefetched) restores to batch N."""
    cfg, mesh = _cfg(), _mesh()
    ref = _take(_prefetching(cfg, mesh, size), 6)
    it = _prefetching(cfg, mesh, size)
    _take(it, 3)
    state = it.get_state()
    _take(it, 1)  # moving on does not change the saved state
    fresh = _prefetching(cfg, mesh, size)
    fresh.set_state(state)
    assert _same([_host(b) for b in ref[3:]], [_host(b) for b in _take(fresh, 3)])


def test_prefetch_resume_through_the_orbax_handler(tmp_path):
    """What train.py checkpoints: grain's handler on the prefetching iterator."""
    import grain.python as pygrain
    from etils import epath

    cfg, mesh = _cfg(), _mesh()
    ref = _take(_prefetching(cfg, mesh), 5)
    it = _prefetching(cfg, mesh)
    _take(it, 2)
    pygrain.PyGrainCheckpointHandler().save(epath.Path(tmp_path), item=it)
    restored = pygrain.PyGrainCheckpointHandler().restore(epath.Path(tmp_path), item=_prefetching(cfg, mesh))
    assert _same([_host(b) for b in ref[2:]], [_host(b) for b in _take(restored, 3)])


def test_prefetch_with_worker_processes_resumes_exactly():
    cfg, mesh = _cfg(worker_count=2, worker_buffer_size=1), _mesh()
    ref = [{k: b[k] for k in pipeline.MODEL_KEYS} for b in _take(pipeline.make_train_iterator(_cfg()), 5)]
    it = _prefetching(cfg, mesh)
    try:
        got = [_host(b) for b in _take(it, 2)]
        state = it.get_state()
    finally:
        it.close()
    assert _same(ref[:2], got)
    it = _prefetching(cfg, mesh)
    try:
        it.set_state(state)
        assert _same(ref[2:], [_host(b) for b in _take(it, 3)])
    finally:
        it.close()


def test_prefetch_ends_with_the_host_iterator():
    cfg, mesh = _cfg(), _mesh()
    plan, _ = pipeline.train_plan(cfg)
    put = lambda b: parallel.global_batch(mesh, {k: b[k] for k in pipeline.MODEL_KEYS})  # noqa: E731
    it = parallel.DevicePrefetch(pipeline.make_train_iterator(cfg, num_epochs=1), put)
    assert len(list(it)) == plan.steps_per_epoch
    with pytest.raises(ValueError, match="prefetch size"):
        parallel.DevicePrefetch(pipeline.make_train_iterator(cfg), put, 0)


def test_auto_worker_count():
    assert pipeline.auto_worker_count(cpu_count=16, local_devices=1) == 15
    assert pipeline.auto_worker_count(cpu_count=64, local_devices=1) == pipeline.MAX_WORKERS_PER_DEVICE
    assert pipeline.auto_worker_count(cpu_count=64, local_devices=8) == 63
    assert pipeline.auto_worker_count(cpu_count=1, local_devices=1) == 0
    assert _cfg(worker_count=3).workers() == 3 and _cfg(worker_count=0).workers() == 0
    assert _cfg(worker_count=-1).workers() == pipeline.auto_worker_count()
    with pytest.raises(ValueError, match="worker_count"):
        _cfg(worker_count=-2).workers()


def test_worker_and_thread_settings_come_from_the_config():
    from configs import default

    c = default.get_config()
    assert c.data.worker_count == -1  # auto by default
    c.data.worker_count, c.data.read_threads = 0, 3
    cfg = pipeline.PipelineConfig.from_config(c, 4)
    assert cfg.worker_count == 0 and cfg.read_threads == 3


def test_in_process_decoding_runs_opencv_single_threaded():
    import cv2

    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        next(pipeline.make_train_iterator(_cfg(worker_count=0)))
        assert cv2.getNumThreads() == 1
    finally:
        cv2.setNumThreads(before)


def test_prefetch_with_workers_resumes_exactly_on_crop_records(tmp_path):
    from tests.test_data_pipeline import _crop_records

    out, _ = _crop_records(tmp_path)
    mesh = _mesh()
    ref = [_host(b) for b in _take(_prefetching(_cfg(records_dir=out), mesh), 4)]
    cfg = _cfg(records_dir=out, worker_count=2, worker_buffer_size=1)
    it = _prefetching(cfg, mesh)
    try:
        assert _same(ref[:2], [_host(b) for b in _take(it, 2)])
        state = it.get_state()
    finally:
        it.close()
    it = _prefetching(cfg, mesh)
    try:
        it.set_state(state)
        assert _same(ref[2:], [_host(b) for b in _take(it, 2)])
    finally:
        it.close()
