"""Checkpoint retention: the latest N plus the best by validation loss survive."""

import jax.numpy as jnp
import numpy as np

from kinpose_jax.training import checkpointing


def test_keeps_latest_n_and_the_best_by_val_loss(tmp_path):
    manager = checkpointing.make_manager(str(tmp_path), keep=2)
    losses = {1: 0.9, 2: 0.2, 3: 0.5, 4: None, 5: 0.7, 6: 0.8}
    for step, loss in losses.items():
        if step == 4:  # a resumed run: a new manager must know step 2 is the best from what is on disk
            manager.close()
            manager = checkpointing.make_manager(str(tmp_path), keep=2)
            assert checkpointing.best_step(manager) == 2
        state = {"w": jnp.full((3,), float(step)), "step": jnp.asarray(step)}
        metrics = None if loss is None else {"val_loss": loss}
        checkpointing.save(manager, step, state, None, {"step": step}, metrics)
        manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [2, 5, 6]
    assert checkpointing.best_step(manager) == 2
    abstract = checkpointing.abstract_like({"w": jnp.zeros((3,)), "step": jnp.asarray(0)})
    restored, meta = checkpointing.restore(manager, 2, abstract, None)
    np.testing.assert_array_equal(np.asarray(restored["w"]), [2.0, 2.0, 2.0])
    assert meta == {"step": 2}
    assert checkpointing.restore_meta(manager, 5) == {"step": 5}
    manager.close()
