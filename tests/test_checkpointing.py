"""Checkpoints: retention (the latest N plus the best by validation loss survive) and the state's
save format (orbax's standard files, without per-device slicing on the CPU backend)."""

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


def _replicated_state():
    """A small training-state-like tree replicated over every (simulated) device."""
    import jax
    from kinpose_jax.training import parallel

    state = {"params": {"kernel": jnp.arange(96.0).reshape(8, 12), "bias": jnp.ones((12,))},
             "step": jnp.asarray(7, jnp.int32)}
    return jax.device_put(state, parallel.replicated(parallel.make_mesh()))


def _save_standard(directory, state):
    """Step 1 of ``state`` saved by orbax's StandardCheckpointHandler, as earlier versions saved."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(directory, item_handlers={checkpointing.STATE: ocp.StandardCheckpointHandler(),
                                                              checkpointing.META: ocp.JsonCheckpointHandler()})
    manager.save(1, args=ocp.args.Composite(**{checkpointing.STATE: ocp.args.StandardSave(state),
                                               checkpointing.META: ocp.args.JsonSave({})}))
    manager.wait_until_finished()
    manager.close()


def _files(directory):
    """Names under a checkpoint's state item, the content-addressed data files left out."""
    import os

    root = os.path.join(directory, "1", checkpointing.STATE)
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if os.sep + "d" + os.sep not in os.path.join(d, f) + os.sep)


def test_state_saves_without_replica_slicing_on_cpu_and_in_orbax_standard_format(tmp_path, monkeypatch):
    """On the CPU backend a replicated state is written without orbax's per-device slicing, in the
    files orbax's StandardCheckpointHandler writes: each reads what the other wrote."""
    import jax
    import orbax.checkpoint as ocp

    assert jax.device_count() == 4 and jax.default_backend() == "cpu"
    state = _replicated_state()
    slices = []
    real_slice = jax.lax.slice_in_dim
    monkeypatch.setattr(jax.lax, "slice_in_dim", lambda *a, **k: slices.append(1) or real_slice(*a, **k))

    standard, ours = (str(checkpointing.checkpoint_dir(str(tmp_path / w))) for w in ("standard", "ours"))
    _save_standard(standard, state)
    assert slices, "orbax's default handler slices replicated arrays per device (what this test guards against)"
    slices.clear()
    manager = checkpointing.make_manager(str(tmp_path / "ours"), keep=2)
    checkpointing.save(manager, 1, state, None, {})
    checkpointing.wait(manager)
    manager.close()
    assert not slices
    assert _files(ours) == _files(standard) and "_METADATA" in _files(ours)

    abstract = checkpointing.abstract_like(state)
    # ours read by orbax's standard handler, and a standard checkpoint (how earlier versions saved) by ours
    with ocp.CheckpointManager(ours, item_handlers={
            checkpointing.STATE: ocp.StandardCheckpointHandler()}) as plain:
        by_orbax = plain.restore(1, args=ocp.args.Composite(**{checkpointing.STATE: ocp.args.StandardRestore(abstract)}))
    by_ours, _ = checkpointing.restore(checkpointing.make_manager(str(tmp_path / "standard"), keep=2), 1, abstract, None)
    for restored in (by_orbax[checkpointing.STATE], by_ours):
        assert jax.tree.structure(restored) == jax.tree.structure(state)
        for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
