"""Training step: one device vs a 4-device mesh (simulated CPU devices, tests/conftest.py) give the
same update, to within float32 reduction-order noise measured in the same test. Both are the
training runs' own compiled step (``train.make_jitted_train_step``) for the tiny runs' models
(tests/tiny_problem.py): the 4-device step is the one the tiny in-process runs train with.

Splitting the batch over devices changes the order in which float32 sums (loss mean, gradient
accumulation, BatchNorm statistics) are added up, so the two runs differ by rounding, by an amount
that depends on the CPU's kernels. The tolerance is therefore measured, not assumed: the same
one-device step on row-permuted copies of the batch (identical in exact arithmetic) shows how far
a mere re-ordering moves each quantity, and the 4-device run must stay within a small multiple of
that. The noise is not rounding alone: Adam's first update is about ``lr * sign(g)``, so a gradient
element near zero whose sign a re-ordering flips moves by ``2 lr``, and the later losses and
BatchNorm statistics inherit that. The test checks that the bound discriminates: replacing one
image of the batch (less than what a wrong data-parallel step changes) moves the gradients and
statistics by more than three times the bound (measured: 30,000x the bound for the gradients and
2,300x for the statistics with the integral head; 24,000x and 3,200x with the kinematic head).
"""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from kinpose_jax.models import build_pose_net
from kinpose_jax.training import parallel, train
from tests.tiny_problem import first_step_gradients, tiny_batch, tiny_config, tiny_kinematic_config

STEPS = 3
PERMUTATIONS = 3
NOISE_FACTOR = 10.0  # allowed multiple of the largest re-ordering difference
#: The tiny runs' configs by head (the data root is not read here).
CONFIGS = {"integral": lambda: tiny_config("unused"), "kinematic": lambda: tiny_kinematic_config("unused")}


def make_runner(config, model, devices):
    """``run(batch) -> (losses [STEPS], grad norms [STEPS], first-step gradients, final BN statistics)``
    on ``devices``, with the training runs' compiled step for that mesh (compiled once, reused for
    every batch of the same shape). The first-step gradients are those the step fed to Adam
    (checked against its gradient norm)."""
    mesh = Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
    _, tx, step = train.make_jitted_train_step(config, model, config.steps_per_epoch, mesh)
    lr = train.learning_rate_of(config, mesh)

    def run(batch):
        state = train.create_state(config, model, tx, mesh)  # a fresh one: the step donates it
        device_batch = parallel.global_batch(mesh, batch)
        assert len(device_batch["image"].sharding.device_set) == len(devices)
        losses, norms = [], []
        for i in range(STEPS):
            state, metrics = step(state, device_batch, lr)
            losses.append(float(metrics["loss"]))
            norms.append(float(metrics["grad_norm"]))
            if i == 0:
                grads = first_step_gradients(state.opt_state)
                np.testing.assert_allclose(np.linalg.norm(leaf_norms(grads)), norms[0], rtol=1e-5)
        return np.asarray(losses), np.asarray(norms), grads, jax.device_get(state.batch_stats)

    return run


def leaf_norms(tree) -> np.ndarray:
    return np.asarray([np.linalg.norm(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def leaf_diff_norms(a, b) -> np.ndarray:
    return leaf_norms(jax.tree.map(lambda x, y: np.asarray(x, np.float64) - np.asarray(y, np.float64), a, b))


@pytest.mark.parametrize("head", sorted(CONFIGS))
def test_single_and_four_device_steps_agree(head):
    assert jax.device_count() == 4, "tests/conftest.py simulates 4 CPU devices"
    config = CONFIGS[head]()
    assert config.per_device_batch_size * jax.device_count() == 8  # the global batch of tiny_batch
    model = build_pose_net(config.model)
    batch = tiny_batch(config.data.patch_size)
    run_one = make_runner(config, model, jax.devices()[:1])
    ref = run_one(batch)
    rng = np.random.default_rng(1)
    reordered = []
    for _ in range(PERMUTATIONS):
        perm = rng.permutation(len(batch["image"]))
        reordered.append(run_one({k: v[perm] for k, v in batch.items()}))
    got = make_runner(config, model, jax.devices())(batch)
    assert ref[0][-1] < ref[0][0]  # the steps learn

    # Per quantity: the largest difference that re-ordering alone produced (the noise).
    noise_loss = max(np.abs(r[0] - ref[0]).max() for r in reordered)
    noise_norm = max(np.abs(r[1] - ref[1]).max() for r in reordered)
    noise_grad = np.max([leaf_diff_norms(r[2], ref[2]) for r in reordered], axis=0)
    noise_bn = np.max([leaf_diff_norms(r[3], ref[3]) for r in reordered], axis=0)
    # The noise is small (a broken measurement would not be) ...
    assert noise_loss <= 1e-3 * np.abs(ref[0]).max() and noise_norm <= 1e-2 * ref[1].max()
    assert np.all(noise_grad <= 1e-2 * leaf_norms(ref[2]) + 1e-12)
    assert np.all(noise_bn <= 1e-1 * leaf_norms(ref[3]) + 1e-12)
    # ... and the tolerance can fail: one image of the eight replaced by another, a smaller change
    # than BatchNorm statistics of 2 images per device or a gradient not averaged over devices,
    # moves the gradients and BatchNorm statistics far outside it.
    changed = dict(batch, image=batch["image"].copy())
    changed["image"][0] = batch["image"][1]
    other = run_one(changed)
    assert leaf_diff_norms(other[2], ref[2]).sum() > 3 * NOISE_FACTOR * noise_grad.sum()
    assert leaf_diff_norms(other[3], ref[3]).sum() > 3 * NOISE_FACTOR * noise_bn.sum()

    ulp = np.finfo(np.float32).eps  # a floor for quantities that re-ordering happened not to move
    np.testing.assert_array_less(np.abs(got[0] - ref[0]), NOISE_FACTOR * noise_loss + 4 * ulp * np.abs(ref[0]))
    np.testing.assert_array_less(np.abs(got[1] - ref[1]), NOISE_FACTOR * noise_norm + 4 * ulp * ref[1])
    np.testing.assert_array_less(leaf_diff_norms(got[2], ref[2]),
                                 NOISE_FACTOR * noise_grad + 4 * ulp * leaf_norms(ref[2]) + 1e-30)
    # synchronised BatchNorm: the 4-device statistics are those of the whole batch
    np.testing.assert_array_less(leaf_diff_norms(got[3], ref[3]),
                                 NOISE_FACTOR * noise_bn + 4 * ulp * leaf_norms(ref[3]) + 1e-30)
