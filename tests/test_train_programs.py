"""The jitted training and evaluation steps a run builds are kept per process and reused only by
a run whose inputs are equal (kinpose_jax.training.train.COMPILED_RUNS_KEPT)."""

import jax
import numpy as np
import optax
import pytest

from kinpose_jax.models import build_pose_net
from kinpose_jax.training import parallel, train
from tests.tiny_problem import EXTENDED_TREE, set_field, tiny_problem

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)


def _steps(config, steps_per_epoch=10, mesh=None):
    mesh = mesh or parallel.make_mesh()
    model = build_pose_net(config.model)
    return train.make_jitted_train_step(config, model, steps_per_epoch, mesh), train.make_eval_step(config, model, mesh)


def _changed(config, key: str, value):
    """A copy of ``config`` with the dotted field ``key`` set to ``value``."""
    other = config.copy_and_resolve_references()
    set_field(other, key, value)
    return other


def test_equal_inputs_share_the_steps_and_any_difference_gets_its_own():
    config = tiny_problem("direct")[0]
    (_, tx, step), eval_step = _steps(config)
    (_, tx_again, step_again), eval_again = _steps(config.copy_and_resolve_references())
    assert step_again is step and tx_again is tx and eval_again is eval_step
    # the learning rate is an argument of the step: a sweep over it shares one compiled step
    assert _steps(_changed(config, "optim.learning_rate", 0.5))[0][2] is step
    changes = {"optim.lr_decay_factor": 0.5, "optim.lr_decay_epochs": (1, 2), "optim.weight_decay": 0.01,
               "optim.grad_clip_norm": 1.0, "loss": "l2", "model.depth_bins": 8, "model.bn_sync": "per_device"}
    for key, value in changes.items():
        (other_schedule, _, other_step), _ = _steps(_changed(config, key, value))
        assert other_step is not step, key
        if key == "optim.lr_decay_factor":  # the schedule is the decay factor of a step (lr 1)
            assert float(other_schedule(0)) == 1.0 and float(other_schedule(10 * 1000)) == 0.5 ** 2
    assert _steps(config, steps_per_epoch=11)[0][2] is not step
    assert _steps(config, mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,)))[0][2] is not step
    for key, value in {"loss": "l2", "flip_test": not config.flip_test, "data.patch_size": 96}.items():
        assert _steps(_changed(config, key, value))[1] is not eval_step, key


def test_a_list_valued_field_is_keyed_by_its_values():
    config = tiny_problem("direct")[0]
    config.optim.lr_decay_epochs = [3, 4]
    (_, _, step), _ = _steps(config)
    config.optim.lr_decay_epochs = (3, 4)
    assert _steps(config)[0][2] is step


@pytest.mark.parametrize("optim", [{}, {"weight_decay": 0.01, "grad_clip_norm": 0.5}],
                         ids=["adam", "adamw-clipped"])
def test_the_optimizer_for_lr_1_scaled_by_lr_is_the_optimizer_for_lr(optim):
    """make_jitted_train_step builds the optimizer for lr 1 and multiplies its updates by the run's
    learning rate: the same updates as configs/default.py's optimizer built for that learning rate,
    across the schedule's decay boundaries (steps 2 and 4 here)."""
    config = tiny_problem("direct")[0]
    config.optim.update(learning_rate=3e-3, lr_decay_epochs=(1, 2), lr_decay_factor=0.1, **optim)
    absolute = train.make_optimizer(config, train.learning_rate_schedule(config, 2))
    unit = train.make_optimizer(config, train.learning_rate_schedule(config, 2, learning_rate=1.0))
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
    state_a, state_u = absolute.init(params), unit.init(params)
    for step in range(6):
        grads = jax.tree.map(lambda p: rng.normal(size=p.shape).astype(np.float32), params)
        want, state_a = absolute.update(grads, state_a, params)
        got, state_u = unit.update(grads, state_u, params)
        for name in params:
            np.testing.assert_allclose(np.asarray(got[name]) * np.float32(3e-3), want[name], rtol=1e-6, err_msg=step)
        assert np.abs(np.asarray(want["w"])).max() > 0
        params = optax.apply_updates(params, want)


def test_a_kinematic_model_built_again_shares_the_steps():
    """Each build makes a new KinematicTree; equal trees are equal, so the steps are reused."""
    config = tiny_problem("kinematic")[0]
    config.model.kinematic_tree = EXTENDED_TREE
    (_, _, step), eval_step = _steps(config)
    (_, _, step_again), eval_again = _steps(config.copy_and_resolve_references())
    assert step_again is step and eval_again is eval_step


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_tree_all_finite_flags_every_inf_and_nan(dtype):
    """What decides whether a training step's state may be checkpointed: one non-finite element of
    any float leaf, at any position, makes it False; integer leaves are ignored."""
    check = jax.jit(train.tree_all_finite)
    tree = {"w": np.ones((3, 4), dtype), "stats": {"m": np.zeros(5, dtype)}, "count": np.arange(3)}
    assert bool(check(tree)) and bool(check({})) and bool(check({"count": np.arange(2)}))
    for bad in (np.inf, -np.inf, np.nan):
        for leaf, index in (("w", (2, 3)), ("w", (0, 0))):
            broken = dict(tree, **{leaf: tree[leaf].copy()})
            broken[leaf][index] = bad
            assert not bool(check(broken)), (bad, leaf, index)
        broken = dict(tree, stats={"m": np.full(5, bad, dtype)})
        assert not bool(check(broken)), bad
