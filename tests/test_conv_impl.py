"""``conv_impl``: the CPU fast forms (phase-decomposed transposed convs, 1x1 convs as 2-D matmuls,
hand-written max-pool gradient) and the standard forms (``lax.conv_transpose``, 1x1
``conv_general_dilated``, ``nn.max_pool``) give the same outputs and gradients with the same
parameters; ``'auto'`` picks the fast forms only on the CPU backend."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from kinpose_jax.models import PointwiseConv, TorchConvTranspose, build_pose_net, torch_deconv_padding, variable_shapes
from kinpose_jax.models import resnet as R
from tests.jitted import value_and_vjp
from tests.tiny_problem import model_config, random_variables

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

FORMS = ("cpu_fast", "standard")


def _np(a):
    return np.asarray(a, dtype=np.float64)


def _assert_trees_close(a, b, rtol=1e-4):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(_np(x), _np(y), rtol=rtol, atol=rtol * (float(np.abs(_np(y)).max()) + 1e-6))


@pytest.mark.parametrize("kernel", [4, 3, 2])
def test_transposed_conv_forms_equal_torch_values_and_gradients(kernel):
    """Torch's ConvTranspose2d (weight [in, out, kh, kw]) == TorchConvTranspose in both forms with
    the kernel permuted to [kh, kw, out, in] (values, input and kernel gradients) == Flax
    ``nn.ConvTranspose(transpose_kernel=True)`` with padding (k-1-p, k-1-p+output_padding); the
    same kernel without the spatial flip / in-out swap is not torch's operation."""
    p, op = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[kernel]
    g = torch.Generator().manual_seed(kernel)
    tconv = torch.nn.ConvTranspose2d(5, 3, kernel, 2, p, output_padding=op, bias=False)
    with torch.no_grad():
        tconv.weight.copy_(torch.randn(tconv.weight.shape, generator=g))
    x = torch.randn(2, 5, 6, 7, generator=g, requires_grad=True)
    y = tconv(x)
    gy = torch.randn(y.shape, generator=g)
    y.backward(gy)
    want = y.detach().numpy().transpose(0, 2, 3, 1)
    assert want.shape[1:3] == (12, 14)
    want_dx = x.grad.numpy().transpose(0, 2, 3, 1)
    want_dk = tconv.weight.grad.numpy().transpose(2, 3, 1, 0)
    xj = jnp.asarray(x.detach().numpy().transpose(0, 2, 3, 1))
    params = {"kernel": jnp.asarray(tconv.weight.detach().numpy().transpose(2, 3, 1, 0))}
    for form in FORMS:
        mod = TorchConvTranspose(3, kernel, conv_impl=form)
        assert jax.eval_shape(mod.init, jax.random.key(0), xj)["params"]["kernel"].shape == params["kernel"].shape
        out, (dx, dp) = value_and_vjp(lambda a, p: mod.apply({"params": p}, a), (xj, params),
                                      jnp.asarray(gy.numpy().transpose(0, 2, 3, 1)))
        np.testing.assert_allclose(_np(out), want, atol=1e-5, err_msg=form)
        np.testing.assert_allclose(_np(dx), want_dx, atol=1e-4, err_msg=form)
        np.testing.assert_allclose(_np(dp["kernel"]), want_dk, atol=1e-4, err_msg=form)
    padding = torch_deconv_padding(kernel)
    flax_layer = nn.ConvTranspose(3, (kernel, kernel), (2, 2), padding=padding, use_bias=False, transpose_kernel=True)
    naive = nn.ConvTranspose(3, (kernel, kernel), (2, 2), padding=padding, use_bias=False)
    flipped = {"kernel": tconv.weight.detach().numpy().transpose(2, 3, 0, 1)}
    got, bad = jax.jit(lambda a: (flax_layer.apply({"params": params}, a), naive.apply({"params": flipped}, a)))(xj)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    assert np.abs(np.asarray(bad) - want).max() > 1e-2


@pytest.mark.parametrize("stride", [1, 2])
def test_pointwise_conv_forms_agree(stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 12)), jnp.float32)
    cotangent = jnp.asarray(rng.normal(size=(2, -(-9 // stride), -(-7 // stride), 10)), jnp.float32)
    results = []
    for form in FORMS:
        mod = PointwiseConv(10, (stride, stride), True, conv_impl=form, bias_init=jax.nn.initializers.normal(1.0))
        params = jax.jit(mod.init)(jax.random.key(0), x)["params"]
        out, grads = value_and_vjp(lambda a, p: mod.apply({"params": p}, a), (x, params), cotangent)
        results.append((params, out, grads))
    (p0, y0, g0), (p1, y1, g1) = results
    _assert_trees_close(p0, p1, rtol=0)  # same names, shapes and initial values
    assert y0.shape == cotangent.shape
    _assert_trees_close(y0, y1, rtol=1e-5)
    _assert_trees_close(g0, g1, rtol=1e-5)


def test_pose_net_forms_share_parameters_and_agree():
    """A whole integral ResNet-10 (basic blocks: identity shortcuts in the first stage, projections
    in the later ones; 2 deconv layers) in training mode: one parameter tree, and the same outputs,
    BN statistics and gradients with either form. Computed in float64 (fp32 parameters, float32
    heatmap logits): in float32, training-mode BN at the 2x2 maps of the last stage amplifies the
    1x1 convs' rounding differences (dot vs conv) to ~15% of a gradient leaf; in float64 they
    agree to ~1e-6. Under jit, a max-pool gradient that matched windows against the forward's
    saved maximum lost the stem's gradients (conv1 / bn1 off by up to 100%) while the eager run
    agreed exactly. (Bottleneck blocks: tests/test_resnet_fast_paths.py.)"""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 40, 40, 3)), jnp.float64)
        cfg = model_config(backbone="resnet10", head="integral", depth_bins=4, deconv_filters=16, num_deconv_layers=2)
        models = {form: dataclasses.replace(build_pose_net(dict(cfg, conv_impl=form)), dtype=jnp.float64)
                  for form in FORMS}
        shapes = {form: variable_shapes(model, 40) for form, model in models.items()}
        assert shapes["cpu_fast"] == shapes["standard"]  # one parameter tree: names, shapes, dtypes
        variables = random_variables(shapes["cpu_fast"], seed=0)

        def loss(params, model):
            out, new = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                   mutable=["batch_stats"])
            return jnp.sum(jnp.sin(out["joints"] * 7.0)), (out, new["batch_stats"])

        # jitted, as training runs it: XLA then fuses the stem's BatchNorm + ReLU into the pool's passes
        grad = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=1)
        (_, (out_f, bs_f)), g_f = grad(variables["params"], models["cpu_fast"])
        (_, (out_s, bs_s)), g_s = grad(variables["params"], models["standard"])
    assert float(np.abs(_np(out_f["joints"])).max()) > 0.05  # not a trivial comparison
    _assert_trees_close(out_f, out_s, rtol=1e-5)
    _assert_trees_close(bs_f, bs_s, rtol=1e-5)
    _assert_trees_close(g_f, g_s, rtol=1e-4)


@pytest.mark.parametrize("backend,fast", [("cpu", True), ("gpu", False), ("tpu", False)])
def test_auto_uses_the_fast_forms_only_on_cpu(backend, fast, monkeypatch):
    monkeypatch.setattr(R, "CPU_FAST_PATHS", None)
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    assert R.use_cpu_fast_paths("auto") is fast
    assert R.use_cpu_fast_paths("cpu_fast") and not R.use_cpu_fast_paths("standard")
    model = build_pose_net(model_config(backbone="resnet10", head="integral", depth_bins=4, deconv_filters=8,
                                        num_deconv_layers=1))
    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    variables = variable_shapes(model, 64)
    prims = str(jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables))
    # fast: 1x1 convs are dot_generals and no conv has lhs dilation; standard: the reverse
    assert ("dot_general" in prims) is fast
    assert ("lhs_dilation=(2, 2)" in prims) is not fast


def test_unknown_conv_impl_is_refused():
    with pytest.raises(ValueError, match="unknown conv_impl 'fast'"):
        build_pose_net(model_config(backbone="resnet18", conv_impl="fast"))
