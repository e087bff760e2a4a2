"""``model.bn_sync``: BatchNorm statistics of the global batch (default) or of each device's slice
(``per_device``, shard_map), on the simulated CPU devices of tests/conftest.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from configs import default
from kinpose_jax import config_checks
from kinpose_jax.training import parallel, train
from kinpose_jax.models import build_pose_net, resnet
from tests.tiny_problem import first_step_gradients, tiny_config

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)


PER_DEVICE = 2  # images per device


def _problem():
    config = tiny_config("unused")  # the tiny runs' model (and compiled initializer), 32 px
    model = build_pose_net(config.model)
    n = jax.device_count()
    rng = np.random.default_rng(0)
    # devices see different image statistics, so per-device and global BN differ clearly
    level = np.repeat(40.0 * (1.0 + np.arange(n)), PER_DEVICE)[:, None, None, None]
    side = config.data.patch_size
    image = np.clip(rng.normal(size=(n * PER_DEVICE, side, side, 3)) * level / 2 + level, 0, 255)
    batch = {"image": image.astype(np.uint8),  # uint8 pixels, as the pipelines deliver them
             "joints": rng.uniform(-0.4, 0.4, size=(n * PER_DEVICE, 18, 3)).astype(np.float32),
             "joints_vis": (rng.uniform(size=(n * PER_DEVICE, 18, 3)) > 0.2).astype(np.float32)}
    return config, model, batch


def _close(a, b, rtol):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * (np.abs(y).max() + 1e-6))


def test_per_device_statistics_and_gradients_are_those_of_each_slice():
    assert jax.device_count() >= 2, "tests/conftest.py simulates 4 CPU devices"
    config, model, batch = _problem()
    mesh = parallel.make_mesh()
    schedule = train.learning_rate_schedule(config, 10)
    tx = train.make_optimizer(config, schedule)
    state = train.create_state(config, model, tx, mesh)
    params, stats = jax.device_get((state.params, state.batch_stats))
    device_batch = parallel.global_batch(mesh, batch)

    # each device's slice computed alone (one device, plain value_and_grad), then averaged
    alone = jax.jit(jax.value_and_grad(train.make_loss_fn(model, config.loss), has_aux=True))
    slices = [alone(params, stats, {k: v[i * PER_DEVICE:(i + 1) * PER_DEVICE] for k, v in batch.items()})
              for i in range(jax.device_count())]
    mean = lambda *xs: np.mean(np.stack([np.asarray(x) for x in xs]), axis=0)  # noqa: E731
    want_loss = mean(*[s[0][0] for s in slices])
    want_stats = jax.tree.map(mean, *[s[0][1] for s in slices])
    want_grads = jax.tree.map(mean, *[s[1] for s in slices])

    # Global BN (the default) would normalise with the whole batch, so the check below can fail:
    # the stem BN layer sees the same inputs either way, and for equal-sized slices the variance
    # of the whole batch exceeds the mean of the slices' variances by the variance of the slices'
    # means. Its running variance after global BN would be larger than the per-device one by
    # (1 - m) * var_i(mu_i) = var_i(new_mean_i) / (1 - m) (running means start at 0, momentum m):
    # here 0.9% of it, hundreds of times the tolerance (1e-5) of the comparison below.
    m = resnet.TORCH_BN_MOMENTUM
    stem_means = np.stack([np.asarray(s[0][1]["backbone"]["bn1"]["mean"]) for s in slices])
    excess = np.var(stem_means, axis=0) / (1 - m)
    assert np.linalg.norm(excess) > 1e-3 * np.linalg.norm(want_stats["backbone"]["bn1"]["var"])

    # the jitted training step (its outputs' shardings left to the step): the loss, gradients
    # (those it fed to Adam) and statistics of the slices, all replicated
    step = jax.jit(train.make_train_step(model, tx, config.loss, schedule, "per_device", mesh),
                   in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)))
    new_state, metrics = step(state, device_batch)
    np.testing.assert_allclose(float(metrics["loss"]), want_loss, rtol=1e-5)
    _close(first_step_gradients(new_state.opt_state), want_grads, rtol=1e-4)
    want_norm = np.sqrt(sum(np.sum(np.square(g.astype(np.float64))) for g in jax.tree.leaves(want_grads)))
    np.testing.assert_allclose(float(metrics["grad_norm"]), want_norm, rtol=1e-4)
    _close(new_state.batch_stats, want_stats, rtol=1e-5)  # the pmean of the per-device running statistics
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves((new_state, metrics)))


def test_bn_sync_is_validated():
    config = default.get_config()
    config.model.bn_sync = "per_host"
    with pytest.raises(ValueError, match=r"^config.model.bn_sync = 'per_host' is invalid"):
        config_checks.validate(config)
    config.model.bn_sync, config.model.conv_impl = "per_device", "fast"
    with pytest.raises(ValueError, match=r"^config.model.conv_impl = 'fast' is invalid"):
        config_checks.validate(config)
    with pytest.raises(ValueError, match="bn_sync='per_device' needs the device mesh"):
        train.make_grad_fn(None, "l1", "per_device")
