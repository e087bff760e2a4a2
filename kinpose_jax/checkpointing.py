"""Orbax checkpoints of the whole training state (params, optimizer, BN statistics, step) plus
the grain data-iterator state and run metadata, keeping the latest N and the best by validation loss.

Each checkpoint is written to a temporary directory and renamed when complete, so a crash or
kill during a save never destroys the last good checkpoint; temporary directories left by a
killed save are removed when the next run opens the manager.

RNG: training draws no device random numbers after initialization (no dropout); all randomness
is the data augmentation, a pure function of (seed, epoch, record index) inside the grain
iterator, whose state is saved here. The seed itself is part of the metadata and a resume with
another seed is refused (``train._check_resumable``).
"""

from __future__ import annotations

import os
from typing import Any

import grain.python as grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

STATE, DATA, META = "state", "data_iter", "meta"


def _val_loss(metrics: dict) -> float:
    """The retention metric: validation loss, +inf for checkpoints saved without one."""
    return float(metrics.get("val_loss", float("inf")))


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """Manager over ``<workdir>/checkpoints``: keeps the ``keep`` latest steps and the step
    with the lowest ``val_loss`` among those saved with one."""
    policy = policies.AnyPreservationPolicy([
        policies.LatestN(n=keep),
        policies.BestN(get_metric_fn=lambda m: -_val_loss(m), n=1, keep_checkpoints_without_metrics=False),
    ])
    # best_fn makes orbax write each step's metrics to disk (without it they live only in this
    # process, and a resumed run or --mode=eval would no longer know which step was best).
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=_val_loss, best_mode="min",
                                           create=True, cleanup_tmp_directories=True)
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=options,
        item_handlers={STATE: ocp.StandardCheckpointHandler(), DATA: grain.PyGrainCheckpointHandler(),
                       META: ocp.JsonCheckpointHandler()},
    )


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_iter: Any, meta: dict,
         metrics: dict | None = None) -> None:
    """Asynchronous save; call ``manager.wait_until_finished()`` before exiting."""
    args = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if data_iter is not None:
        args[DATA] = grain.PyGrainCheckpointSave(data_iter)
    # Always a dict (empty without validation): orbax warns on every save without metrics.
    manager.save(step, args=ocp.args.Composite(**args), metrics=dict(metrics or {}), force=True)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, data_iter: Any) -> tuple[Any, dict]:
    """Restores ``step`` into the structure/shardings of ``abstract_state`` and (in place) the
    data iterator. Returns ``(state, meta)``."""
    args = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
    if data_iter is not None:
        args[DATA] = grain.PyGrainCheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    return restored[STATE], restored[META]


def restore_meta(manager: ocp.CheckpointManager, step: int) -> dict:
    """The run metadata saved with ``step`` (global batch, steps per epoch, processes, seed)."""
    return dict(manager.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META])


def restore_variables(manager: ocp.CheckpointManager, step: int, abstract_variables: dict) -> dict:
    """Restores only ``params`` and ``batch_stats`` of ``step`` (not the optimizer state), into the
    structure/shardings of ``abstract_variables`` = ``{'params': ..., 'batch_stats': ...}``."""
    target = {k: abstract_variables[k] for k in ("params", "batch_stats") if k in abstract_variables}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    path = os.path.join(str(manager.directory), str(step), STATE)
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args,
                                                                    partial_restore=True))
    return {k: restored[k] for k in target}


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a pytree of arrays, the restore target."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)


def best_step(manager: ocp.CheckpointManager) -> int | None:
    """Step of the kept checkpoint with the lowest validation loss (None if none has one; unlike
    orbax's ``best_step``, which would then return an arbitrary step)."""
    best, best_loss = None, float("inf")
    for step in manager.all_steps():
        loss = _val_loss(manager.metrics(step) or {})
        if loss < best_loss:
            best, best_loss = step, loss
    return best


def best_or_latest_step(manager: ocp.CheckpointManager) -> int | None:
    """The step evaluation restores: the best by validation loss, else the latest (None: no checkpoint)."""
    step = best_step(manager)
    return manager.latest_step() if step is None else step
