"""Training and evaluation loop (the body of ``main.py``).

One jit-compiled step, data parallel over a device mesh (see :mod:`kinpose_jax.parallel`),
optax Adam with the seed's per-epoch multi-step schedule, orbax checkpoints with the data
iterator state for exact resume, evaluation in mm, JSON lines / TensorBoard / PNG reports.
"""

from __future__ import annotations

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

from kinpose_jax import checkpointing, evaluation, integral, losses, parallel, pretrained, reporting
from kinpose_jax.models import build_pose_net

log = logging.getLogger("kinpose_jax")


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss or gradient norm becomes NaN/inf; nothing of that step (or
    later) is saved, so the checkpoints on disk hold only finite parameters."""


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the run: resuming with another batch size, number of processes,
    epoch length or seed (converted weights that do not fit raise
    :class:`~kinpose_jax.pretrained.PretrainedMismatchError`)."""


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training (checkpointed as one pytree)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The seed's multi-step schedule: ``lr * factor^k`` after the k-th boundary epoch."""
    boundaries = {int(e * steps_per_epoch): config.optim.lr_decay_factor for e in config.optim.lr_decay_epochs}
    return optax.piecewise_constant_schedule(config.optim.learning_rate, boundaries)


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam (AdamW when weight decay > 0), optionally after global-norm gradient clipping."""
    opt = (optax.adamw(schedule, weight_decay=config.optim.weight_decay) if config.optim.weight_decay > 0
           else optax.adam(schedule))
    if config.optim.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(config.optim.grad_clip_norm), opt)
    return opt


def init_variables(model, config, key) -> dict:
    size = config.data.patch_size
    return model.init(key, jnp.zeros((1, size, size, 3), jnp.float32), train=False)


def make_loss_fn(model, loss_name: str):
    """``loss(params, batch_stats, batch) -> (loss, new_batch_stats)`` in training mode."""
    loss_fn = losses.get_loss(loss_name)

    def loss_of(params, batch_stats, batch):
        out, new_vars = model.apply({"params": params, "batch_stats": batch_stats}, batch["image"],
                                    train=True, mutable=["batch_stats"])
        # The mean over the batch given: the global batch under jit (partitioned by it, no explicit
        # pmean), one device's slice under shard_map (see make_grad_fn).
        loss = loss_fn(out["joints"].astype(jnp.float32), batch["joints"], batch["joints_vis"])
        return loss, new_vars["batch_stats"]

    return loss_of


def make_grad_fn(model, loss_name: str, bn_sync: str = "global", mesh=None):
    """``grad_fn(params, batch_stats, batch) -> ((loss, new_batch_stats), grads)``, the loss being
    the mean over the global batch (call it under jit with the batch sharded over ``mesh``).

    ``bn_sync='global'``: plain ``value_and_grad``; jit partitions it and BatchNorm reduces over the
    global batch (cross-device all-reduces in every BN layer). ``'per_device'`` (the seed's
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
        raise ValueError(f"unknown bn_sync {bn_sync!r}; choose one of {parallel.BN_SYNC}")
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


def make_train_step(model, tx, loss_name: str, schedule, bn_sync: str = "global", mesh=None):
    """``train_step(state, batch) -> (state, metrics)``: forward, backward, optimizer update
    (``bn_sync``, ``mesh``: see :func:`make_grad_fn`)."""
    grad_fn = make_grad_fn(model, loss_name, bn_sync, mesh)

    def train_step(state: TrainState, batch: dict):
        (loss, batch_stats), grads = grad_fn(state.params, state.batch_stats, batch)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads), "lr": schedule(state.step)}

    return train_step


def create_state(config, model, tx, mesh) -> TrainState:
    variables = init_variables(model, config, jax.random.PRNGKey(config.seed))
    if config.model.pretrained:
        variables = pretrained.load_pretrained(config.model.pretrained, variables, config.model)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                       batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(variables["params"]))
    return jax.device_put(state, parallel.replicated(mesh))


def make_predict(config, model, mesh):
    """The jitted evaluation forward pass; its outputs stay sharded over the batch axis like its
    inputs, so every process can read back exactly the rows of its own slice of the batch."""
    fn = evaluation.make_predict_fn(model, config.data.patch_size, config.flip_test, config.loss)
    return jax.jit(fn, out_shardings=(parallel.data_sharding(mesh), parallel.data_sharding(mesh)))


def evaluate(config, model, variables, data, mesh, workdir: str, step: int, writer=None, predict=None) -> dict:
    """Runs the evaluation set; prints the tables and writes ``eval/eval_<step>.json`` / ``.md``
    (+ PNG of a few samples, + ``eval/predictions_<step>.npz`` with ``config.save_predictions``).

    Every process evaluates its slice of each global batch (its own rows of the predictions);
    the error sums (and kept predictions) are then added up over processes, so all processes
    return the same results.
    """
    predict = predict or make_predict(config, model, mesh)
    acc = evaluation.ErrorAccumulator(keep_predictions=bool(config.save_predictions))
    vis = None
    for i, batch in enumerate(data.eval_batches()):
        if 0 <= config.max_eval_batches <= i:
            break
        device_batch = parallel.global_batch(mesh, {k: batch[k] for k in ("image", "joints", "joints_vis")})
        px, per_loss = parallel.local_rows(mesh, predict(variables, device_batch))
        pred_cam, gt_cam = acc.add(px, per_loss, batch, config.data.patch_size, config.model.box_mm)
        if vis is None and config.num_vis_samples > 0:
            k = min(config.num_vis_samples, int(np.sum(batch["valid"])))
            gt_px = np.asarray(integral.normalized_to_patch(batch["joints"][:k], config.data.patch_size,
                                                            config.data.patch_size))
            vis = (batch["image"][:k], px[:k], gt_px, pred_cam[:k], gt_cam[:k])
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
        if vis is not None:
            reporting.plot_samples(*vis, os.path.join(eval_dir, f"samples_{step:08d}.png"))
        if writer is not None:
            writer.write(step, "eval", results)
            reporting.plot_learning_curve(reporting.read_metrics(writer.path),
                                          os.path.join(workdir, "learning_curve.png"))
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains per ``config`` in ``workdir`` (resuming from its latest checkpoint), evaluating
    every ``eval_every_epochs``. Returns the final evaluation results."""
    mesh = parallel.make_mesh()
    global_batch = config.per_device_batch_size * jax.device_count()
    parallel.check_batch_divisible(global_batch)
    from kinpose_jax.data import setup as input_pipeline

    data = input_pipeline.create(config, global_batch)
    steps_per_epoch = config.steps_per_epoch if config.steps_per_epoch > 0 else data.steps_per_epoch
    total_steps = config.num_epochs * steps_per_epoch
    model = build_pose_net(config.model)
    schedule = learning_rate_schedule(config, steps_per_epoch)
    tx = make_optimizer(config, schedule)
    state = create_state(config, model, tx, mesh)

    manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
    train_iter = data.train_iterator()
    meta = {"global_batch": global_batch, "steps_per_epoch": steps_per_epoch, "devices": jax.device_count(),
            "processes": jax.process_count(), "seed": config.seed}
    latest = manager.latest_step()
    if latest is not None:
        saved = checkpointing.restore_meta(manager, latest)
        _check_resumable(saved, meta, f"{workdir}/checkpoints/{latest}")
        state, _ = checkpointing.restore(manager, latest, checkpointing.abstract_like(state), train_iter)
        log.info("resumed from step %d (%s)", latest, saved)
        print(f"Resumed from checkpoint at step {latest}")

    bn_sync = config.model.get("bn_sync", "global")
    train_step = jax.jit(make_train_step(model, tx, config.loss, schedule, bn_sync, mesh),
                         in_shardings=(parallel.replicated(mesh), parallel.data_sharding(mesh)),
                         out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)), donate_argnums=0)
    is_main = jax.process_index() == 0
    writer = reporting.MetricWriter(workdir, enabled=is_main)
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    predict = make_predict(config, model, mesh)

    def save(step, metrics=None):
        checkpointing.save(manager, step, state, train_iter, dict(meta, step=step), metrics)

    step = int(jax.device_get(state.step))
    results = {}
    try:
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
                batch = next(train_iter)
                device_batch = parallel.global_batch(mesh, {k: batch[k] for k in ("image", "joints", "joints_vis")})
                state, metrics = train_step(state, device_batch)
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
                results = evaluate(config, model, variables, data, mesh, workdir, step, writer, predict)
                save(step, {"val_loss": results["val_loss"]})
            else:
                save(step)
    finally:
        manager.wait_until_finished()
        writer.close()
    if not results:  # resumed after the end: evaluate the final state once
        results = evaluate(config, model, {"params": state.params, "batch_stats": state.batch_stats}, data, mesh,
                           workdir, step, writer=None, predict=predict)
    return results


def _check_finite(values: dict, step: int, epoch: int, workdir: str, manager) -> None:
    bad = {k: values[k] for k in ("loss", "grad_norm") if not math.isfinite(values[k])}
    if bad:
        what = " and ".join(f"{'training loss' if k == 'loss' else 'gradient norm'} became {v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"{what} at step {step} (epoch {epoch + 1}); stopping without saving. The checkpoints in "
            f"{workdir}/checkpoints are untouched and hold finite parameters (latest: step "
            f"{manager.latest_step()}). Try a lower optim.learning_rate or optim.grad_clip_norm > 0.")


#: checkpoint metadata that must match for an exact resume (data order, epoch boundaries, schedule)
RESUME_KEYS = ("global_batch", "processes", "steps_per_epoch", "seed")


def _check_resumable(saved: dict, current: dict, where: str) -> None:
    """Refuses to resume a checkpoint written under another batch size, process count, epoch
    length or seed: the data order, epoch boundaries and learning-rate schedule would shift."""
    for key in RESUME_KEYS:
        if key in saved and saved[key] != current[key]:
            raise CheckpointMismatchError(
                f"cannot resume {where}: it was written with {key}={saved[key]!r}, this run has "
                f"{key}={current[key]!r}. Use the same settings (global batch = per_device_batch_size x devices), "
                f"or start a new --workdir.")


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, checkpoint: str = "") -> dict:
    """``--mode=eval``: evaluates ``checkpoint`` (an orbax dir from convert_torch, or "" for the
    best/latest checkpoint of ``workdir``)."""
    mesh = parallel.make_mesh()
    global_batch = config.per_device_batch_size * jax.device_count()
    from kinpose_jax.data import setup as input_pipeline

    model = build_pose_net(config.model)
    variables = init_variables(model, config, jax.random.PRNGKey(config.seed))
    if checkpoint:
        # An ImageNet (backbone-only) conversion is refused here: its head would be random.
        variables = pretrained.load_pretrained(checkpoint, variables, config.model, allow_backbone_only=False)
        step = 0
    else:
        manager = checkpointing.make_manager(workdir, config.keep_checkpoints)
        step = checkpointing.best_step(manager)
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {workdir}/checkpoints and no --checkpoint given")
        # Only the weights: the optimizer settings of the evaluating config do not matter.
        variables = checkpointing.restore_variables(manager, step, checkpointing.abstract_like(variables))
        print(f"Evaluating checkpoint step {step} of {workdir}")
    data = input_pipeline.create(config, global_batch, train=False)  # after the weights: fail fast
    variables = jax.device_put(variables, parallel.replicated(mesh))
    return evaluate(config, model, variables, data, mesh, workdir, step, writer=None)


def _progress(config, epoch, done, total):
    if not config.progress_bar or jax.process_index() != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"epoch {epoch + 1}/{config.num_epochs}", leave=True,
                dynamic_ncols=True)
