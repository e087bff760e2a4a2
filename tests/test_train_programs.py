"""The jitted training and evaluation steps a run builds are kept per process and reused only by
a run whose inputs are equal (kinpose_jax.training.train.COMPILED_RUNS_KEPT)."""

import jax
import numpy as np

from kinpose_jax.models import build_pose_net
from kinpose_jax.training import parallel, train
from tests.tiny_problem import set_field, tiny_problem


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
    (schedule, tx, step), eval_step = _steps(config)
    (_, tx_again, step_again), eval_again = _steps(config.copy_and_resolve_references())
    assert step_again is step and tx_again is tx and eval_again is eval_step
    changes = {"optim.learning_rate": 0.5, "optim.lr_decay_factor": 0.5, "optim.lr_decay_epochs": (1, 2),
               "optim.weight_decay": 0.01, "optim.grad_clip_norm": 1.0, "loss": "l2", "model.depth_bins": 8,
               "model.bn_sync": "per_device"}
    for key, value in changes.items():
        (other_schedule, _, other_step), _ = _steps(_changed(config, key, value))
        assert other_step is not step, key
        if key.startswith("optim.learning_rate"):
            assert float(other_schedule(0)) == 0.5 and float(schedule(0)) == np.float32(config.optim.learning_rate)
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
