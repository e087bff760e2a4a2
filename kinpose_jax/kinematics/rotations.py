"""Rotation building blocks for forward kinematics: cross-product matrices of rotation axes (the
``K`` of Rodrigues' formula) and the sines and cosines of joint angles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def skew(axes: np.ndarray) -> np.ndarray:
    """Cross-product matrices ``K`` with ``K @ v = axis x v``; axes [..., 3] -> [..., 3, 3]."""
    axes = np.asarray(axes, dtype=np.float64)
    x, y, z = axes[..., 0], axes[..., 1], axes[..., 2]
    zero = np.zeros_like(x)
    return np.stack(
        [np.stack([zero, -z, y], -1), np.stack([z, zero, -x], -1), np.stack([-y, x, zero], -1)], -2
    )


#: On the CPU backend, float32 angles (radians) whose magnitudes all lie below this take the
#: polynomial path of :func:`sincos`; with one at or above it (or a NaN / inf) the call uses
#: ``jnp.sin`` / ``jnp.cos``.
SINCOS_POLYNOMIAL_RANGE = 65536.0

# pi/2 as three float32 parts: the first two have 8 and 7 significant bits, so their products with
# a quarter-turn count below 2^16 are exact (Cody-Waite reduction); the three sum to pi/2 within
# 5.4e-15.
_HALF_PI_PARTS = (1.5703125, 4.84466552734375e-4, -6.397578431460715e-07)
# minimax polynomials of sin and cos on [-pi/4, pi/4] (Cephes' sinf / cosf coefficients), in r^2
_SIN_COEFFS = tuple(np.float32(c) for c in (-1.6666654611e-1, 8.3321608736e-3, -1.9515295891e-4))
_COS_COEFFS = tuple(np.float32(c) for c in (4.166664568298827e-2, -1.388731625493765e-3, 2.443315711809948e-5))


def _horner(x: jax.Array, coeffs: tuple) -> jax.Array:
    """coeffs[0] + x * (coeffs[1] + x * (...))."""
    acc = coeffs[-1]
    for c in reversed(coeffs[:-1]):
        acc = c + x * acc
    return acc


def _sincos_polynomial(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    quarter_turns = jnp.round(x * np.float32(2 / np.pi))
    r = x
    for part in _HALF_PI_PARTS:
        r = r - quarter_turns * np.float32(part)  # r in [-pi/4, pi/4]
    r2 = r * r
    s = r + r * r2 * _horner(r2, _SIN_COEFFS)
    c = np.float32(1.0) - np.float32(0.5) * r2 + r2 * r2 * _horner(r2, _COS_COEFFS)
    quadrant = quarter_turns.astype(jnp.int32) & 3  # x = r + quadrant * pi/2 (mod 2 pi)

    def sin_of_quadrant(q):  # sin(r + q * pi/2); cos(x) = sin(x + pi/2) is quadrant + 1
        return jnp.where(q == 0, s, jnp.where(q == 1, c, jnp.where(q == 2, -s, -c)))

    return sin_of_quadrant(quadrant), sin_of_quadrant((quadrant + 1) & 3)


def sincos(angles: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sin(angles), cos(angles))``, same shape and dtype; differentiable.

    On the CPU backend, float32 angles below :data:`SINCOS_POLYNOMIAL_RANGE` in magnitude are
    reduced to [-pi/4, pi/4] by whole quarter turns and evaluated by polynomials: within 1e-7 of
    the exact values (absolute; about 1.5 float32 ulp where the value is near +-1, more ulps next
    to its zeros), and element-wise arithmetic that XLA vectorizes, where XLA:CPU's ``sin`` /
    ``cos`` run element by element (over ten times slower here). Other dtypes and backends, and
    calls with any larger, NaN or infinite angle, use ``jnp.sin`` / ``jnp.cos``: one such angle
    changes the path, hence the rounding, of the whole call. Under ``jax.vmap`` that choice is
    batched and both paths run."""
    angles = jnp.asarray(angles)
    if angles.dtype != jnp.float32 or jax.default_backend() != "cpu":
        return jnp.sin(angles), jnp.cos(angles)
    return jax.lax.cond(jnp.all(jnp.abs(angles) < SINCOS_POLYNOMIAL_RANGE), _sincos_polynomial,
                        lambda a: (jnp.sin(a), jnp.cos(a)), angles)
