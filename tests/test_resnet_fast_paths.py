"""The CPU fast paths of kinpose_jax/models/resnet.py against the plain ops and against torch.

* :func:`max_pool` (hand-written gradient) vs ``nn.max_pool`` (XLA select_and_scatter) and
  ``torch.nn.functional.max_pool2d``: values and input gradients, ties included.
* :class:`PointwiseConv` (2-D dot) vs ``jax.lax.conv_general_dilated`` 1x1 and
  ``torch.nn.functional.conv2d``: values, input and kernel gradients, strides 1 and 2, odd sizes.
* A whole ResNet traced with and without the fast paths: same outputs and gradients.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kinpose_jax.models import resnet as R
from tests.jitted import value_and_vjp
from tests.tiny_problem import random_variables, short_resnet50

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)


def _np(a):
    return np.asarray(a, dtype=np.float64)


# ----------------------------------------------------------------------------------------- max pool

POOL_CASES = [  # (shape NHWC, kernel, stride, padding)
    ((2, 16, 16, 5), 3, 2, 1),  # ResNet's stem pool
    ((2, 13, 10, 3), 3, 2, 1),  # odd sizes
    ((1, 9, 7, 4), 2, 2, 0),
    ((3, 8, 11, 2), 3, 1, 1),
    ((1, 12, 12, 3), 5, 3, 2),
]


def _pool_ref(x, k, s, p):
    return nn.max_pool(x, (k, k), strides=(s, s), padding=((p, p), (p, p)))


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_max_pool_matches_flax_values_and_gradient(shape, k, s, p):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    out_shape = jax.eval_shape(lambda x: _pool_ref(x, k, s, p), x).shape
    assert jax.eval_shape(lambda x: R.max_pool(x, k, s, p), x).shape == out_shape
    g = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    y_ref, (dx_ref,) = value_and_vjp(lambda x: _pool_ref(x, k, s, p), (x,), g)
    y, (dx,) = value_and_vjp(lambda x: R.max_pool(x, k, s, p), (x,), g)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    np.testing.assert_allclose(_np(dx), _np(dx_ref), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES[:3])
def test_max_pool_ties_go_to_the_first_maximum(shape, k, s, p):
    """Many equal values (like zeros after a ReLU): the gradient goes to one element per window,
    the first in row-major order, exactly like XLA's select_and_scatter."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(np.maximum(rng.integers(-3, 3, size=shape), 0), jnp.float32)
    out_shape = jax.eval_shape(lambda x: R.max_pool(x, k, s, p), x).shape
    g = jnp.asarray(rng.integers(1, 5, size=out_shape), jnp.float32)  # exact sums
    y_ref, (dx_ref,) = value_and_vjp(lambda x: _pool_ref(x, k, s, p), (x,), g)
    y, (dx,) = value_and_vjp(lambda x: R.max_pool(x, k, s, p), (x,), g)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(dx_ref))


@pytest.mark.parametrize("shape,k,s,p", POOL_CASES)
def test_max_pool_matches_torch(shape, k, s, p):
    rng = np.random.default_rng(2)
    xn = rng.normal(size=shape).astype(np.float32)
    gn = rng.normal(size=jax.eval_shape(lambda x: R.max_pool(x, k, s, p), xn).shape).astype(np.float32)
    y, (dx,) = value_and_vjp(lambda x: R.max_pool(x, k, s, p), (jnp.asarray(xn),), jnp.asarray(gn))
    xt = torch.tensor(xn.transpose(0, 3, 1, 2), requires_grad=True)
    yt = F.max_pool2d(xt, k, s, p)
    yt.backward(torch.tensor(gn.transpose(0, 3, 1, 2)))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(_np(dx), xt.grad.numpy().transpose(0, 2, 3, 1), atol=1e-6)


# ------------------------------------------------------------------------------------ 1x1 conv

PW_CASES = [  # (shape NHWC, features, stride)
    ((2, 8, 8, 16), 24, 1),
    ((2, 9, 7, 12), 8, 1),
    ((2, 8, 8, 16), 32, 2),
    ((3, 9, 11, 6), 10, 2),  # odd sizes, stride 2 (ResNet's downsample)
]


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("shape,features,stride", PW_CASES)
def test_pointwise_conv_matches_lax_conv_and_torch(shape, features, stride, use_bias):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    mod = R.PointwiseConv(features, (stride, stride), use_bias, bias_init=nn.initializers.normal(1.0))
    params = jax.jit(mod.init)(jax.random.key(0), x)["params"]
    assert params["kernel"].shape == (1, 1, shape[-1], features)

    def ours(x, p):
        return mod.apply({"params": p}, x)

    def ref(x, p):
        y = jax.lax.conv_general_dilated(x, p["kernel"], (stride, stride), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + p["bias"] if use_bias else y

    g = jnp.asarray(rng.normal(size=jax.eval_shape(ours, x, params).shape), jnp.float32)
    y, (dx, dp) = value_and_vjp(ours, (x, params), g)
    y_ref, (dx_ref, dp_ref) = value_and_vjp(ref, (x, params), g)
    np.testing.assert_allclose(_np(y), _np(y_ref), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(dx), _np(dx_ref), rtol=1e-5, atol=1e-5)
    for name in dp:
        np.testing.assert_allclose(_np(dp[name]), _np(dp_ref[name]), rtol=1e-5, atol=1e-4)

    # torch: weight [out, in, 1, 1] = kernel HWIO permuted (3, 2, 0, 1)
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2), requires_grad=True)
    wt = torch.tensor(np.asarray(params["kernel"]).transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(np.asarray(params["bias"]), requires_grad=True) if use_bias else None
    yt = F.conv2d(xt, wt, bt, stride=stride)
    yt.backward(torch.tensor(np.asarray(g).transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(_np(y), yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(dx), xt.grad.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_np(dp["kernel"]), wt.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-4)
    if use_bias:
        np.testing.assert_allclose(_np(dp["bias"]), bt.grad.numpy(), rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------------------- whole network


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_bottleneck_resnet_same_with_and_without_cpu_fast_paths(monkeypatch, x64):
    """ResNet-50's bottleneck blocks in a short trunk (a projection and an identity shortcut in the
    first stage), computed in float64: the fast paths include the 1x1 convs (dot vs conv), whose
    float32 rounding differences training-mode BN at these tiny feature maps (2x2 after the last
    stage) amplifies to ~15% of a gradient leaf; in float64 the two agree to ~4e-8. (Basic blocks,
    the stem's max-pool and the head's deconvs: a whole ResNet-10 pose net in tests/test_conv_impl.py.)"""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 35, 35, 3)), jnp.float64)
    short_resnet50(monkeypatch)
    model = R.ResNet(50, jnp.float64)
    variables = random_variables(jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)), seed=0)

    def loss(params, fast):
        monkeypatch.setattr(R, "CPU_FAST_PATHS", fast)
        out, new = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                               mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out)), (out, new["batch_stats"])

    # jitted, as training runs it: XLA then fuses the stem's BatchNorm + ReLU into the pool's passes
    grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
    (_, (out_fast, bs_fast)), g_fast = grad(variables["params"], True)
    (_, (out_ref, bs_ref)), g_ref = grad(variables["params"], False)
    np.testing.assert_allclose(_np(out_fast), _np(out_ref), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(bs_fast), jax.tree.leaves(bs_ref)):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-4, atol=1e-4 * float(np.abs(_np(b)).max() + 1e-6))


def test_use_cpu_fast_paths_follows_backend_by_default(monkeypatch):
    monkeypatch.setattr(R, "CPU_FAST_PATHS", None)
    assert R.use_cpu_fast_paths() == (jax.default_backend() == "cpu")
    monkeypatch.setattr(R, "CPU_FAST_PATHS", False)
    assert not R.use_cpu_fast_paths()
