"""Inverse kinematics by gradient descent: recover angles (and translation, scale) from joints."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

from kinpose_jax.kinematics.fk import forward_kinematics
from kinpose_jax.kinematics.tree import KinematicTree

_TRANSLATION_UNIT = 100.0  # the optimiser moves the root in steps of this many offset units (mm)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FitResult:
    """angles [..., num_dofs] rad; translation [..., 3]; scale [...]; residual [...] mean joint
    distance (offset units, mm) between ``forward_kinematics`` of the fit and the target."""

    angles: jax.Array
    translation: jax.Array
    scale: jax.Array
    residual: jax.Array


def _initial_angles(tree: KinematicTree, key: jax.Array, num_restarts: int) -> jax.Array:
    """[R, num_dofs]: restart 0 is the rest pose; the others are uniform within the joint limits
    (within ±pi where a dof is unlimited), shrunk towards 0 by half."""
    lim = tree.limits_array
    lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -math.pi)
    hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], math.pi)
    u = jax.random.uniform(key, (num_restarts, tree.num_dofs))
    shrink = np.where(np.isfinite(lim[:, 0]) & np.isfinite(lim[:, 1]), 0.5, 1.0)
    rand = (lo + u * (hi - lo)) * shrink
    return rand.at[0].set(0.0)


def fit_to_joints(
    tree: KinematicTree,
    joints: jax.Array,
    *,
    weights: jax.Array | None = None,
    fit_scale: bool = False,
    respect_limits: bool = False,
    num_restarts: int = 8,
    steps: int = 300,
    refine_steps: int = 30,
    learning_rate: float = 0.05,
    key: jax.Array | None = None,
) -> FitResult:
    """Finds FK parameters whose output joints match ``joints``.

    Runs ``num_restarts`` Adam optimisations (optax, vmapped) from different initial angles,
    refines each with damped Gauss-Newton (Levenberg-Marquardt) steps and keeps the best; the
    translation starts at the root joint's target when the root is an output joint.

    Args:
      tree: the skeleton to fit.
      joints: [..., tree.num_joints, 3] target positions (offset units, mm, output axes).
      weights: [..., J] per-joint weights (0 ignores a joint), default 1.
      fit_scale: also fit a global bone scale (else 1).
      respect_limits: clip angles to ``tree.limits`` after every step.
      num_restarts / steps / refine_steps / learning_rate: optimiser settings.
      key: PRNG key for the random restarts.
    Returns:
      FitResult with leading dims ``joints.shape[:-2]``.
    """
    joints = jnp.asarray(joints, jnp.float32)
    if joints.shape[-2:] != (tree.num_joints, 3):
        raise ValueError(f"joints must be [..., {tree.num_joints}, 3] for this tree, got shape {joints.shape}")
    batch = joints.shape[:-2]
    if weights is None:
        weights = jnp.ones(batch + (tree.num_joints,), jnp.float32)
    weights = jnp.broadcast_to(jnp.asarray(weights, jnp.float32), batch + (tree.num_joints,))
    key = jax.random.PRNGKey(0) if key is None else key
    init = _initial_angles(tree, key, num_restarts)
    flat_j = joints.reshape((-1,) + joints.shape[-2:])
    flat_w = weights.reshape((-1, tree.num_joints))
    result = _fit_batch(tree, flat_j, flat_w, init, fit_scale, respect_limits, steps, refine_steps, learning_rate)
    return jax.tree.map(lambda x: x.reshape(batch + x.shape[1:]), result)


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7, 8))
def _fit_batch(tree, joints, weights, init_angles, fit_scale, respect_limits, steps, refine_steps, learning_rate):
    root_out = tree.output_indices.index(tree.root) if tree.root in tree.output_indices else None
    inv_perm = np.argsort(tree.output_axes)
    lim = jnp.asarray(tree.limits_array, jnp.float32)
    schedule = optax.cosine_decay_schedule(learning_rate, steps, alpha=1e-3)
    opt = optax.adam(schedule)

    def unpack(p, t0):
        scale = jnp.exp(p["log_scale"]) if fit_scale else jnp.ones_like(p["log_scale"])
        return p["angles"], t0 + _TRANSLATION_UNIT * p["dt"], scale

    def mean_error(p, t0, target, w):
        angles, t, s = unpack(p, t0)
        pred = forward_kinematics(tree, angles, t, s).joints
        dist = jnp.sqrt(jnp.sum((pred - target) ** 2, -1) + 1e-12)
        return jnp.sum(dist * w) / jnp.maximum(jnp.sum(w), 1e-6)

    def loss(p, t0, target, w):
        angles, t, s = unpack(p, t0)
        pred = forward_kinematics(tree, angles, t, s).joints
        return jnp.sum(jnp.sum((pred - target) ** 2, -1) * w) / jnp.maximum(jnp.sum(w), 1e-6)

    def residuals(p, t0, target, w):
        angles, t, s = unpack(p, t0)
        pred = forward_kinematics(tree, angles, t, s).joints
        return ((pred - target) * jnp.sqrt(w)[:, None]).reshape(-1)

    def clip_fn(p):
        if respect_limits:
            return dict(p, angles=jnp.clip(p["angles"], lim[:, 0], lim[:, 1]))
        return p

    def one(target, w, angles0):
        if root_out is not None:
            t0 = target[root_out][inv_perm]  # model axes
        else:
            t0 = jnp.zeros(3, target.dtype)
        p = {"angles": angles0, "dt": jnp.zeros(3), "log_scale": jnp.zeros(())}
        state = opt.init(p)

        def step(carry, _):
            p, state = carry
            g = jax.grad(loss)(p, t0, target, w)
            updates, state = opt.update(g, state, p)
            p = optax.apply_updates(p, updates)
            return (clip_fn(p), state), None

        (p, _), _ = jax.lax.scan(step, (p, state), None, length=steps)
        p = _levenberg_marquardt(lambda q: residuals(q, t0, target, w), p, refine_steps, clip_fn)
        angles, t, s = unpack(p, t0)
        return angles, t, s, mean_error(p, t0, target, w)

    def best_of_restarts(target, w):
        angles, t, s, err = jax.vmap(one, in_axes=(None, None, 0))(target, w, init_angles)
        k = jnp.argmin(err)
        return FitResult(angles=angles[k], translation=t[k], scale=s[k], residual=err[k])

    return jax.vmap(best_of_restarts)(joints, weights)


def _levenberg_marquardt(residual_fn, params, num_steps, project):
    """Damped Gauss-Newton on a small parameter pytree; a step is kept only if it lowers the
    squared residual (then the damping shrinks, else it grows)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)

    def cost(x):
        r = residual_fn(unravel(x))
        return jnp.sum(r * r)

    def step(carry, _):
        x, lam = carry
        r = residual_fn(unravel(x))
        jac = jax.jacfwd(lambda y: residual_fn(unravel(y)))(x)
        jtj = jac.T @ jac
        g = jac.T @ r
        damp = lam * (jnp.diag(jnp.diag(jtj)) + 1e-6 * jnp.eye(x.shape[0], dtype=x.dtype))
        delta = jnp.linalg.solve(jtj + damp, -g)
        cand = jax.flatten_util.ravel_pytree(project(unravel(x + delta)))[0]
        better = cost(cand) < jnp.sum(r * r)
        x = jnp.where(better, cand, x)
        lam = jnp.where(better, lam * 0.3, lam * 10.0)
        return (x, jnp.clip(lam, 1e-9, 1e9)), None

    (flat, _), _ = jax.lax.scan(step, (flat, jnp.asarray(1e-2, flat.dtype)), None, length=num_steps)
    return unravel(flat)
