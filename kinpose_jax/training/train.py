"""Training and evaluation loop (the body of ``main.py``).

One jit-compiled step, data parallel over a device mesh (see :mod:`kinpose_jax.training.parallel`),
optax Adam with the original's per-epoch multi-step schedule, orbax checkpoints with the data
iterator state for exact resume, evaluation in mm, JSON lines / TensorBoard / PNG reports.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kinpose_jax import geometry, losses, pretrained, storage
from kinpose_jax.training import checkpointing, evaluation, parallel, reporting
from kinpose_jax.data import DataError, augment
from kinpose_jax.data.pipeline import MODEL_KEYS
from kinpose_jax.models import build_pose_net, init_variables as init_model_variables, variable_shapes
from kinpose_jax.registry import BN_SYNC

log = logging.getLogger("kinpose_jax")


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss, gradient norm, learning rate or the updated training state
    (parameters, optimizer state, BN statistics) holds NaN/inf; nothing of that step (or later)
    is saved, so the checkpoints on disk hold only finite values."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the run: resuming with another batch size, number of processes,
    epoch length, seed, data worker count or model (converted weights that do not fit raise
    :class:`~kinpose_jax.pretrained.PretrainedMismatchError`)."""


class NoUsableCheckpointError(RuntimeError):
    """Checkpoints exist in the workdir but none of them restores."""


#: Failures ``main.py`` reports in one line (no traceback).
EXPECTED_ERRORS = (NonFiniteLossError, CheckpointMismatchError, NoUsableCheckpointError,
                   pretrained.PretrainedMismatchError, DataError, checkpointing.WorkdirLockedError, OSError)


def describe_error(err: BaseException) -> str:
    """One line for an :data:`EXPECTED_ERRORS` failure (an OSError names the file and what failed)."""
    if isinstance(err, OSError) and not isinstance(err, checkpointing.CheckpointSaveError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror} (errno {err.errno}){where}"
    return " ".join(str(err).split())


def tree_all_finite(tree) -> jax.Array:
    """Whether every float leaf of ``tree`` is finite (a scalar bool; True for no float leaves).

    ``x * 0`` is 0 for a finite ``x`` and NaN for inf or NaN (XLA does not fold a float product
    with zero, for that reason), so the sum of every ``leaf * 0`` is 0, or NaN when some element
    is not finite. In a ResNet-10 training step this compiles in 1.3 s less than per-leaf boolean
    reductions stacked into one (no slower a step)."""
    sums = [jnp.sum(x * 0) for x in _float_leaves(tree)]
    return jnp.isfinite(sum(sums, jnp.zeros((), jnp.float32)))


def all_finite_on_host(tree) -> bool:
    """:func:`tree_all_finite` of a restored tree, computed on this host's copy of each leaf (no
    compiled program: a resume checks each restored checkpoint once)."""
    return all(bool(np.isfinite(np.asarray(x, np.float32)).all()) for x in _float_leaves(tree))


def _float_leaves(tree) -> list:
    """The leaves of ``tree`` with a floating-point dtype (the ones that can be non-finite)."""
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (checkpointed as one pytree)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           learning_rate: float | None = None) -> optax.Schedule:
    """The original's multi-step schedule: ``lr * factor^k`` after the k-th boundary epoch, where
    ``lr`` is ``learning_rate`` (default: ``config.optim.learning_rate``; 1.0 gives the schedule's
    factors, which :func:`make_jitted_train_step` scales by the run's learning rate)."""
    boundaries = {int(e * steps_per_epoch): config.optim.lr_decay_factor for e in config.optim.lr_decay_epochs}
    lr = config.optim.learning_rate if learning_rate is None else learning_rate
    return optax.piecewise_constant_schedule(lr, boundaries)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam (AdamW when weight decay > 0), optionally after global-norm gradient clipping. The
    learning rate scales the final update (so an optimizer built for lr 1 whose updates are
    multiplied by ``lr`` is this optimizer for ``lr``)."""
    opt = (optax.adamw(schedule, weight_decay=config.optim.weight_decay) if config.optim.weight_decay > 0
           else optax.adam(schedule))
    if config.optim.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip_norm), opt)
    return opt


def init_variables(model, config, key) -> dict:
    """Initial variables for ``config.data.patch_size`` inputs (:func:`kinpose_jax.models.init_variables`)."""
    return init_model_variables(model, key, int(config.data.patch_size))


def make_loss_fn(model, loss_name: str):
    """``loss(params, batch_stats, batch) -> (loss, new_batch_stats)`` in training mode; ``batch``
    holds uint8 ``image`` and float32 ``gains`` (normalized here, on the device)."""
    loss_fn = losses.get_loss(loss_name)

    def loss_of(params, batch_stats, batch):
        images = augment.normalize_pixels(batch["image"], batch.get("gains"))
        out, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
        # The mean over the batch given: the global batch under jit (partitioned by it, no explicit
        # pmean), one device's slice under shard_map (see make_grad_fn).
        loss = loss_fn(out["joints"].astype(jnp.float32), batch["joints"], batch["joints_vis"])
        return loss, new_vars["batch_stats"]

    return loss_of


def make_grad_fn(model, loss_name: str, bn_sync: str, mesh=None):
    """``grad_fn(params, batch_stats, batch) -> ((loss, new_batch_stats), grads)``, the loss being
    the mean over the global batch (call it under jit with the batch sharded over ``mesh``).

    ``bn_sync='global'``: plain ``value_and_grad``; jit partitions it and BatchNorm reduces over the
    global batch (cross-device all-reduces in every BN layer). ``'per_device'`` (the original's
    per-GPU BN): ``jax.shard_map`` over ``mesh``'s data axis; each device runs the model on its
    slice with that slice's BN statistics. The loss is ``pmean``-ed *before* ``grad``: the
    replicated parameters enter each device's computation through an implicit broadcast whose
    transpose sums over devices, so the gradient of the mean loss is the mean of the per-device
    gradients (this pmean's transpose averages them), replicated. The new running
    statistics are ``pmean``-ed too (the mean over devices of each device's running mean and
    running variance), so the state stays replicated.
    """
    loss_of = make_loss_fn(model, loss_name)
    if bn_sync == "global":
        return jax.value_and_grad(loss_of, has_aux=True)
    if bn_sync != "per_device":
        raise ValueError(f"unknown bn_sync {bn_sync!r}; choose one of {BN_SYNC}")
    if mesh is None:
        raise ValueError("bn_sync='per_device' needs the device mesh")
    axis = parallel.DATA_AXIS

    def local(params, batch_stats, batch):
        def mean_loss(params):
            loss, new_stats = loss_of(params, batch_stats, batch)  # this slice, its BN statistics
            return jax.lax.pmean(loss, axis), new_stats  # global batch mean: the slices are equal-sized

        (loss, new_stats), grads = jax.value_and_grad(mean_loss, has_aux=True)(params)
        return (loss, jax.lax.pmean(new_stats, axis)), grads

    P = jax.sharding.PartitionSpec
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(axis)), out_specs=((P(), P()), P()))


def make_train_step(model, tx, loss_name: str, schedule, bn_sync: str, mesh=None):
    """``train_step(state, batch, lr_scale=1.0) -> (state, metrics)``: forward, backward, optimizer
    update (``bn_sync``, ``mesh``: see :func:`make_grad_fn`). ``lr_scale`` (a float32 scalar)
    multiplies ``tx``'s updates and the reported ``schedule``: with ``tx`` and ``schedule`` built for
    lr 1 it is the learning rate, a runtime value of one compiled step (see
    :func:`make_jitted_train_step`)."""
    grad_fn = make_grad_fn(model, loss_name, bn_sync, mesh)

    def train_step(state: TrainState, batch: dict, lr_scale=1.0):
        (loss, batch_stats), grads = grad_fn(state.params, state.batch_stats, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        updates = jax.tree.map(lambda u: u * lr_scale, updates)  # exact for the default 1.0
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        # state_finite: what a checkpoint of new_state would hold (a finite loss does not imply it)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step) * lr_scale,
                           "state_finite": tree_all_finite((params, batch_stats, opt_state))}

    return train_step


def create_state(config, model, tx, mesh) -> TrainState:
    """The initial training state (``config.model.pretrained`` weights loaded), replicated over ``mesh``."""
    replicated = parallel.replicated(mesh)
    if jax.process_count() > 1 and not config.model.pretrained:
        # Initialized under jit straight into the replicated sharding; every process computes the
        # same values. (A device_put of per-process values checks each leaf's equality across
        # processes: one cross-process gather per leaf, several hundred for a ResNet and Adam.)
        return jax.jit(lambda: _initial_state(config, model, tx), out_shardings=replicated)()
    variables = init_variables(model, config, jax.random.PRNGKey(config.seed))
    if config.model.pretrained:
        variables = pretrained.load_pretrained(config.model.pretrained, variables, config.model)
    return jax.device_put(_state_of(variables, tx), replicated)


def state_shapes(config, model, tx, mesh) -> TrainState:
    """:func:`create_state`'s result as ShapeDtypeStructs replicated over ``mesh`` (a resume's
    restore target), traced without compiling or running the initializers."""
    shapes = jax.eval_shape(lambda: _initial_state(config, model, tx))
    return checkpointing.abstract_like(shapes, parallel.replicated(mesh))


def _initial_state(config, model, tx) -> TrainState:
    """The initialized state, before any pretrained weights or placement (traced by the callers)."""
    return _state_of(init_variables(model, config, jax.random.PRNGKey(config.seed)), tx)


def _state_of(variables: dict, tx) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                      batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(variables["params"]))


def make_predict(config, model, mesh):
    """The jitted evaluation forward pass; its outputs stay sharded over the batch axis like its
    inputs, so every process can read back exactly the rows of its own slice of the batch."""
    fn = evaluation.make_predict_fn(model, config.data.patch_size, config.flip_test, config.loss)
    return jax.jit(fn, out_shardings=(parallel.data_sharding(mesh), parallel.data_sharding(mesh)))


def make_eval_step(config, model, mesh):
    """The jitted evaluation step (:func:`~kinpose_jax.training.evaluation.make_eval_fn`: prediction, decoding
    and every per-sample metric); its outputs stay sharded over the batch axis like its inputs, so
    every process can read back exactly the rows of its own slice of the batch. The same function
    for equal arguments within a process (see :data:`COMPILED_RUNS_KEPT`)."""
    return _eval_step(model, int(config.data.patch_size), bool(config.flip_test), config.loss,
                      float(config.model.box_mm), mesh)


#: Training and evaluation steps kept per process, with their traced and compiled programs, for
#: reuse by a later run with equal inputs (a notebook's or the tests' second ``train_and_evaluate``
#: skips re-tracing, re-lowering and reloading them: several seconds each). They are keyed on
#: everything they are built from (the model, every ``config.optim`` field but the learning rate,
#: the loss, BN sync, steps per epoch, the mesh), so a run that changes any of these gets its own;
#: runs that differ only in the learning rate (a sweep) share one compiled step.
COMPILED_RUNS_KEPT = 4


@functools.lru_cache(maxsize=COMPILED_RUNS_KEPT)
def _eval_step(model, patch_size: int, flip_test: bool, loss: str, box_mm: float, mesh):
    fn = evaluation.make_eval_fn(model, patch_size, flip_test, loss, box_mm)
    return jax.jit(fn, out_shardings=parallel.data_sharding(mesh))


def make_jitted_train_step(config, model, steps_per_epoch: int, mesh):
    """``(schedule, tx, train_step)`` of a run: :func:`learning_rate_schedule`, :func:`make_optimizer`
    (both for lr 1: the schedule gives the decay factor of a step) and :func:`make_train_step`
    jitted over ``mesh`` (state replicated and donated, batch sharded). Call
    ``train_step(state, batch, learning_rate_of(config, mesh))``. The same objects for equal inputs
    within a process (see :data:`COMPILED_RUNS_KEPT`)."""
    optim = tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                         for k, v in config.optim.to_dict().items() if k != "learning_rate"))
    return _jitted_train_step(model, optim, config.loss, config.model.bn_sync, int(steps_per_epoch), mesh)


def learning_rate_of(config, mesh) -> jax.Array:
    """``config.optim.learning_rate`` as the float32 scalar (replicated over ``mesh``) that the
    train step of :func:`make_jitted_train_step` takes."""
    with np.errstate(over="ignore"):  # a learning rate beyond float32 is inf, as it would be in the step
        lr = np.float32(config.optim.learning_rate)
    return jax.device_put(lr, parallel.replicated(mesh))


@functools.lru_cache(maxsize=COMPILED_RUNS_KEPT)
def _jitted_train_step(model, optim: tuple, loss: str, bn_sync: str, steps_per_epoch: int, mesh):
    config = ml_collections.ConfigDict({"optim": dict(optim)})
    schedule = learning_rate_schedule(config, steps_per_epoch, learning_rate=1.0)
    tx = make_optimizer(config, schedule)
    replicated = parallel.replicated(mesh)
    step = jax.jit(make_train_step(model, tx, loss, schedule, bn_sync, mesh),
                   in_shardings=(replicated, parallel.data_sharding(mesh), replicated),
                   out_shardings=(replicated, replicated), donate_argnums=0)
    return schedule, tx, step


def evaluate(config, model, variables, data, mesh, workdir: str, step: int, writer=None, eval_step=None) -> dict:
    """Runs the evaluation set; prints the tables and writes ``eval/eval_<step>.json`` / ``.md``
    (+ PNG of a few samples, + ``eval/predictions_<step>.npz`` with ``config.save_predictions``).

    Every process evaluates its slice of each global batch (its own rows of the predictions);
    the error sums (and kept predictions) are then added up over processes, so all processes
    return the same results. Every batch has the full global batch size (the last one padded),
    so ``eval_step`` (:func:`make_eval_step`) compiles once; the results of batch k are read
    back while batch k+1 runs (dispatched before them, their copy to the host started at once).
    """
    eval_step = eval_step or make_eval_step(config, model, mesh)
    acc = evaluation.ErrorAccumulator(keep_predictions=bool(config.save_predictions))
    vis = None

    def finish(batch, out):
        """Reads one batch's results back (waits for its step) and adds them."""
        nonlocal vis
        host = parallel.local_rows(mesh, out)
        acc.add_errors(host["errors"], host["loss"], batch["valid"], batch["sequence"], batch["image_index"],
                       batch["frame"], host.get("pred_cam"), batch["joints_cam"])
        if "joints_px" in host:
            k = min(config.num_vis_samples, int(np.sum(batch["valid"])))
            gt_px = geometry.normalized_to_patch(np.asarray(batch["joints"][:k]),
                                                 (config.data.patch_size, config.data.patch_size))
            vis = (batch["image"][:k], host["joints_px"][:k], gt_px, host["pred_cam"][:k], batch["joints_cam"][:k])

    pending = None
    for i, batch in enumerate(data.eval_batches(config.max_eval_batches)):
        out = eval_step(variables, parallel.global_batch(mesh, {k: batch[k] for k in evaluation.DEVICE_KEYS}))
        wanted = ["errors", "loss"]
        if config.save_predictions or (i == 0 and config.num_vis_samples > 0):
            wanted.append("pred_cam")
        if i == 0 and config.num_vis_samples > 0:
            wanted.append("joints_px")
        out = {k: out[k] for k in wanted}
        for leaf in jax.tree.leaves(out):
            leaf.copy_to_host_async()
        if pending is not None:
            finish(*pending)
        pending = (batch, out)
    if pending is not None:
        finish(*pending)
    if jax.process_count() > 1:
        acc = acc.summed_over_processes()
    results = acc.result()
    if jax.process_index() == 0:
        eval_dir = os.path.join(workdir, "eval")
        title = (f"Evaluation at step {step} ({int(results['num_samples'])} samples, {config.data.eval_set}"
                 f"{', flip test' if config.flip_test else ''})")
        reporting.write_eval_report(os.path.join(eval_dir, f"eval_{step:08d}"), results, acc.tables(), title)
        if config.save_predictions:
            evaluation.save_predictions(os.path.join(eval_dir, f"predictions_{step:08d}.npz"), acc.predictions())
        if writer is not None:
            writer.write(step, "eval", results)
        # A failed plot is reported and training goes on: the numbers are already written.
        try:
            if vis is not None:
                reporting.plot_samples(*vis, os.path.join(workdir, "eval", f"samples_{step:08d}.png"))
            if writer is not None:
                reporting.plot_learning_curve(reporting.read_metrics(writer.path),
                                              os.path.join(workdir, "learning_curve.png"))
        except (ValueError, TypeError, KeyError, RuntimeError) as err:
            log.warning("plotting at step %d failed: %s: %s", step, type(err).__name__, err)
    return results


#: model fields a checkpoint's parameters depend on (a resume with others is refused)
MODEL_RESUME_FIELDS = ("backbone", "head", "num_joints", "depth_bins", "deconv_filters", "num_deconv_layers",
                       "kinematic_tree", "kinematic_view", "box_mm")


def run_meta(config, global_batch: int, steps_per_epoch: int) -> dict:
    """What a checkpoint records about the run, to refuse a resume that cannot continue it."""
    return {"global_batch": global_batch, "steps_per_epoch": steps_per_epoch, "devices": jax.device_count(),
            "processes": jax.process_count(), "seed": config.seed, "worker_count": int(config.data.worker_count),
            "model": {k: config.model[k] for k in MODEL_RESUME_FIELDS}}


def _restore_newest_usable(manager, workdir: str, meta: dict, abstract_state, new_iterator):
    """Restores the newest checkpoint that restores completely and holds finite values.

    Returns ``(step, state, iterator, skipped)``: ``step`` None when none restores, ``skipped``
    the ``(step, reason)`` of each newer checkpoint that failed (unreadable or missing files,
    non-finite values). A checkpoint of another run configuration raises
    CheckpointMismatchError (never skipped)."""
    skipped = []
    for step in manager.all_steps()[::-1]:
        where = f"{workdir}/checkpoints/{step}"
        try:
            saved = checkpointing.restore_meta(manager, step)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint can fail in many ways
            skipped.append((step, f"its run metadata cannot be read ({type(err).__name__}: {_first_line(err)})"))
            continue
        _check_resumable(saved, meta, where)
        iterator = new_iterator()
        try:
            state, _ = checkpointing.restore(manager, step, abstract_state, iterator)
        except Exception as err:  # noqa: BLE001
            skipped.append((step, f"it does not restore ({type(err).__name__}: {_first_line(err)})"))
            continue
        if not all_finite_on_host(state):
            skipped.append((step, "it holds non-finite (NaN/inf) values"))
            continue
        return step, state, iterator, skipped
    return None, None, None, skipped


def _first_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _open_and_resume(config, workdir: str, meta: dict, abstract_state, new_iterator):
    """The checkpoint manager of ``workdir`` and the state to continue from: ``(manager, step,
    state, iterator)``, skipping (and setting aside) damaged checkpoints."""
    is_main = jax.process_index() == 0
    set_aside = []
    bad_metrics = checkpointing.unreadable_metrics(workdir)  # orbax cannot even open a manager over these
    _sync("kinpose_metrics_checked")
    if is_main:
        for step, reason in bad_metrics.items():
            set_aside.append((step, reason, checkpointing.set_aside(workdir, step)))
    _sync("kinpose_metrics_set_aside")
    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    step, state, iterator, skipped = _restore_newest_usable(manager, workdir, meta, abstract_state, new_iterator)
    if step is None and skipped:
        manager.close()
        raise NoUsableCheckpointError(
            f"no checkpoint in {workdir}/checkpoints restores: "
            + "; ".join(f"step {s}: {why}" for s, why in skipped)
            + ". Move them away (nothing was deleted) to start afresh, or use another --workdir.")
    newer = [(s, why) for s, why in skipped if s > step] if step is not None else []
    if newer:  # later saves of this run must not collide with them: move them out of the way
        manager.close()
        _sync("kinpose_restore_done")
        if is_main:
            for s, why in newer:
                set_aside.append((s, why, checkpointing.set_aside(workdir, s)))
        _sync("kinpose_damaged_set_aside")
        manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    if is_main:
        for s, why, path in sorted(set_aside, reverse=True):
            print(f"Skipped checkpoint step {s}: {why}; moved it to {path}")
    return manager, step, state, iterator


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming from its newest usable checkpoint),
    evaluating every ``eval_every_epochs``. Returns the final evaluation results ({} when the
    workdir holds a finished run: nothing is done then).

    Process 0 holds an exclusive lock on ``workdir`` while it runs (WorkdirLockedError if
    another live run holds it)."""
    lock = checkpointing.lock_workdir(workdir) if jax.process_index() == 0 else None
    try:
        return _train_and_evaluate(config, workdir)
    finally:
        if lock is not None:
            checkpointing.unlock_workdir(lock)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    mesh = parallel.make_mesh()
    global_batch = config.per_device_batch_size * jax.device_count()
    parallel.check_batch_divisible(global_batch)
    from kinpose_jax.data import setup as input_pipeline

    data = input_pipeline.create(config, global_batch)
    steps_per_epoch = config.steps_per_epoch if config.steps_per_epoch > 0 else data.steps_per_epoch
    total_steps = config.num_epochs * steps_per_epoch
    model = build_pose_net(config.model)
    _, tx, train_step = make_jitted_train_step(config, model, steps_per_epoch, mesh)
    learning_rate = learning_rate_of(config, mesh)

    def new_train_iterator():
        # Batch k+1 is copied to the devices while step k runs; the checkpointed iterator state counts
        # only the batches steps consumed.
        return parallel.DevicePrefetch(data.train_iterator(),
                                       lambda b: parallel.global_batch(mesh, {k: b[k] for k in MODEL_KEYS}))

    meta = run_meta(config, global_batch, steps_per_epoch)
    # a resume restores into the state's shapes: it initializes nothing, and refuses a mismatching run at once
    manager, latest, state, train_iter = _open_and_resume(config, workdir, meta, state_shapes(config, model, tx, mesh),
                                                          new_train_iterator)
    is_main = jax.process_index() == 0
    writer, failed = None, True
    try:
        if latest is not None:
            log.info("resumed from step %d", latest)
            if latest >= total_steps:
                if is_main:
                    print(f"Training in {workdir} is complete (step {latest} of {total_steps}); nothing to do. "
                          f"Evaluate it with --mode=eval, or raise num_epochs to train further.")
                failed = False
                return {}
            if is_main:
                print(f"Resumed from checkpoint at step {latest}")
        else:
            state = create_state(config, model, tx, mesh)
            train_iter = new_train_iterator()

        writer = reporting.MetricWriter(workdir, enabled=is_main)
        if is_main:
            (storage.path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
        eval_step = make_eval_step(config, model, mesh)

        def save(step, metrics=None):
            checkpointing.save(manager, step, state, train_iter, dict(meta, step=step), metrics)

        step = int(jax.device_get(state.step))
        results = {}
        while step < total_steps:
            epoch = step // steps_per_epoch
            end = min((epoch + 1) * steps_per_epoch, total_steps)
            bar = _progress(config, epoch, step - epoch * steps_per_epoch, steps_per_epoch)
            t0, images = time.perf_counter(), 0
            # The metrics of a step are read back on the host one step later, after the next step
            # has been dispatched, so the device never waits for the host (async dispatch). Before
            # any checkpoint the pending step is checked: a saved state never follows a NaN/inf.
            pending = None

            def finish(pending):
                """Checks and reports one step's metrics (raises NonFiniteLossError)."""
                done, metrics, done_images = pending
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}  # waits for the step
                rate = done_images / max(time.perf_counter() - t0, 1e-9)  # images of finished steps / s
                _check_finite(values, done, epoch, workdir, manager)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['loss']:.4f}", img_s=f"{rate:.1f}")
                if done % config.log_every_steps == 0 or done == end:
                    writer.write(done, "train", {"loss": values["loss"], "lr": values["lr"],
                                                 "grad_norm": values["grad_norm"], "images_per_s": rate,
                                                 "epoch": done / steps_per_epoch})

            while step < end:
                device_batch = next(train_iter)
                state, metrics = train_step(state, device_batch, learning_rate)
                step += 1
                images += global_batch
                if pending is not None:
                    finish(pending)
                pending = (step, metrics, images)
                if step % config.checkpoint_every_steps == 0 and step != end:
                    finish(pending)
                    pending = None
                    save(step)
            if pending is not None:
                finish(pending)
            if bar is not None:
                bar.close()
            epoch_done = step // steps_per_epoch
            if epoch_done % config.eval_every_epochs == 0 or step >= total_steps:
                variables = {"params": state.params, "batch_stats": state.batch_stats}
                results = evaluate(config, model, variables, data, mesh, workdir, step, writer, eval_step)
                save(step, {"val_loss": results["val_loss"]})
            else:
                save(step)
        checkpointing.wait(manager)  # the last save's outcome
        failed = False
    finally:
        data.close()
        if writer is not None:
            writer.close()
        if failed:
            try:
                manager.wait_until_finished()
            except Exception as err:  # noqa: BLE001 - the error being raised matters more
                log.warning("the last checkpoint save failed too: %s", err)
            if is_main:
                checkpointing.remove_partial_saves(workdir)
        manager.close()
    return results


_NON_FINITE_NAMES = {"loss": "training loss", "grad_norm": "gradient norm", "lr": "learning rate"}


def _check_finite(values: dict, step: int, epoch: int, workdir: str, manager) -> None:
    """Raises NonFiniteLossError if a step's loss, gradient norm or learning rate is NaN/inf or
    its updated state (``state_finite``: parameters, optimizer state, BN statistics) is not finite."""
    bad = [f"{name} became {values[k]}" for k, name in _NON_FINITE_NAMES.items()
           if k in values and not math.isfinite(values[k])]
    if "state_finite" in values and not values["state_finite"]:
        bad.append("the updated parameters / optimizer state hold NaN/inf")
    if bad:
        latest = manager.latest_step()
        kept = (f"The checkpoints in {workdir}/checkpoints are untouched and hold finite values (latest: step "
                f"{latest})." if latest is not None else "No checkpoint was written yet.")
        raise NonFiniteLossError(
            f"{' and '.join(bad)} at step {step} (epoch {epoch + 1}); stopping without saving. {kept} "
            f"Try a lower optim.learning_rate or optim.grad_clip_norm > 0.")


#: checkpoint metadata that must match for an exact resume (data order, epoch boundaries, schedule,
#: the iterator state's layout), with the config field a user changes to cause a mismatch
RESUME_KEYS = {"global_batch": "per_device_batch_size x devices", "processes": "the number of processes",
               "steps_per_epoch": "steps_per_epoch", "seed": "seed", "worker_count": "data.worker_count"}


def _check_resumable(saved: dict, current: dict, where: str) -> None:
    """Refuses (one line naming the field) to resume a checkpoint written under another batch
    size, process count, epoch length, seed or data worker count (the data order, epoch
    boundaries, schedule or saved iterator state would not fit), or for another model
    (``MODEL_RESUME_FIELDS``). Keys a checkpoint does not record are not checked."""
    for key, field in RESUME_KEYS.items():
        if key in saved and saved[key] != current[key]:
            raise CheckpointMismatchError(
                f"cannot resume {where}: it was written with {key}={saved[key]!r}, this run has "
                f"{key}={current[key]!r} (config: {field}). Use the same settings, or start a new --workdir.")
    for field, value in dict(saved.get("model", {})).items():
        if field in current["model"] and current["model"][field] != value:
            raise CheckpointMismatchError(
                f"cannot resume {where}: it was written with config.model.{field}={value!r}, this run has "
                f"config.model.{field}={current['model'][field]!r}. Use the same model, or start a new --workdir.")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "") -> dict:
    """``--mode=eval``: evaluates ``checkpoint`` (an orbax dir from convert_torch, or "" for the
    best/latest checkpoint of ``workdir``)."""
    mesh = parallel.make_mesh()
    global_batch = config.per_device_batch_size * jax.device_count()
    from kinpose_jax.data import setup as input_pipeline

    model = build_pose_net(config.model)
    shapes = variable_shapes(model, int(config.data.patch_size))
    if checkpoint:
        # An ImageNet (backbone-only) conversion is refused here: its head would be random.
        variables = pretrained.load_pretrained(checkpoint, shapes, config.model, allow_backbone_only=False)
        step = 0
    else:
        variables, step = _restore_best_variables(config, workdir, checkpointing.abstract_like(shapes))
        print(f"Evaluating checkpoint step {step} of {workdir}")
    data = input_pipeline.create(config, global_batch, train=False)  # after the weights: fail fast
    variables = jax.device_put(variables, parallel.replicated(mesh))
    try:
        return evaluate(config, model, variables, data, mesh, workdir, step, writer=None)
    finally:
        data.close()


def _restore_best_variables(config, workdir: str, abstract_variables: dict) -> tuple[dict, int]:
    """The weights of ``workdir``'s best checkpoint (lowest val_loss, else the latest); a
    checkpoint that does not restore is reported and the next (newest first) is tried. Creates
    nothing in ``workdir``; FileNotFoundError without any checkpoint."""
    unreadable = checkpointing.unreadable_metrics(workdir)
    if unreadable and len(unreadable) == len(checkpointing.step_dirs(workdir)):
        raise NoUsableCheckpointError(f"no checkpoint in {workdir}/checkpoints restores: "
                                      + "; ".join(f"step {s}: {why}" for s, why in unreadable.items()))
    for step, why in unreadable.items():
        print(f"Skipped checkpoint step {step}: {why}")
    if unreadable:  # orbax cannot open a manager over them: read the others directly
        best, candidates = None, [s for s in checkpointing.step_dirs(workdir) if s not in unreadable]
    else:
        manager = checkpointing.make_manager(workdir, config.keep_checkpoints, create=False)
        try:
            best, candidates = checkpointing.best_step(manager), manager.all_steps()[::-1]
        finally:
            manager.close()
    if not candidates:
        raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints and no --checkpoint given")
    order = ([best] if best is not None else []) + [s for s in candidates if s != best]
    reasons = []
    for step in order:
        try:
            variables = checkpointing.restore_variables(workdir, step, abstract_variables)
        except Exception as err:  # noqa: BLE001 - a damaged checkpoint can fail in many ways
            reasons.append(f"step {step}: {type(err).__name__}: {_first_line(err)}")
            print(f"Skipped checkpoint step {step}: it does not restore ({type(err).__name__}: {_first_line(err)})")
            continue
        return variables, step
    raise NoUsableCheckpointError(f"no checkpoint in {workdir}/checkpoints restores: " + "; ".join(reasons))


def _progress(config, epoch, done, total):
    if not config.progress_bar or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{config.num_epochs}", leave=True,
                dynamic_ncols=True)
