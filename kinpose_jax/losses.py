"""Joint regression losses (docs/DESIGN.md#losses): weighted L1 / L2 summed over joints and axes, divided by
the batch size. Inputs are normalized coordinates [B, J, 3] with 0/1 visibility weights. Both losses are jitted."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _reduce(per_elem: jax.Array, weight: jax.Array, sample_mask: jax.Array | None) -> jax.Array:
    per_elem = per_elem * weight
    if sample_mask is None:
        return jnp.sum(per_elem) / per_elem.shape[0]
    mask = sample_mask.astype(per_elem.dtype).reshape((-1,) + (1,) * (per_elem.ndim - 1))
    return jnp.sum(per_elem * mask) / jnp.maximum(jnp.sum(sample_mask.astype(per_elem.dtype)), 1.0)


@jax.jit
def weighted_l1(pred: jax.Array, target: jax.Array, weight: jax.Array, sample_mask: jax.Array | None = None) -> jax.Array:
    """``sum(|pred - target| * weight) / batch_size``.

    pred, target, weight: [B, ...] (weight broadcastable). ``sample_mask`` [B] (1 = real sample,
    0 = padding) excludes samples and divides by the number of real ones instead of B.
    """
    return _reduce(jnp.abs(pred - target), weight, sample_mask)


@jax.jit
def weighted_l2(pred: jax.Array, target: jax.Array, weight: jax.Array, sample_mask: jax.Array | None = None) -> jax.Array:
    """``sum((pred - target)^2 * weight) / batch_size``; see :func:`weighted_l1`."""
    return _reduce(jnp.square(pred - target), weight, sample_mask)


LOSSES = {"l1": weighted_l1, "l2": weighted_l2}


def get_loss(name: str):
    """``'l1'`` or ``'l2'``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name]
