"""Mixed precision (``model.dtype='bfloat16'``) and the ``accel`` preset of the R50 configs."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from kinpose_jax import config_checks
from kinpose_jax.models import build_pose_net, init_variables
from tests.tiny_problem import model_config

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

R50_CONFIGS = ("integral_r50_mpii_h36m", "direct_r50_h36m", "kinematic_r50_h36m")


@pytest.mark.parametrize("name", R50_CONFIGS)
def test_accel_preset_sets_bf16_and_standard_convs_only(name):
    module = importlib.import_module(f"configs.{name}")
    plain, accel = module.get_config(), module.get_config("accel")
    config_checks.validate(accel)
    assert (accel.model.dtype, accel.model.conv_impl) == ("bfloat16", "standard")
    assert (plain.model.dtype, plain.model.conv_impl) == ("float32", "auto")
    accel.model.dtype, accel.model.conv_impl = plain.model.dtype, plain.model.conv_impl
    assert accel.to_dict() == plain.to_dict()  # nothing else differs


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="unknown config preset 'gpu'"):
        default.apply_preset(default.get_config(), "gpu")


def test_bf16_model_computes_in_bf16_from_fp32_weights_and_decodes_close_to_fp32():
    """``model.dtype='bfloat16'``: float32 parameters and BN statistics, convolutions in bf16,
    float32 gradients. Same float32 parameters, same fixed input, training-mode BN: the bf16
    model's heatmap logits are float32 values that are not bf16-rounded (the final 1x1 layer
    accumulates and outputs float32), and its decoded joints stay within 1e-2 normalized units
    (20 mm at the 2000 mm box) of the fp32 model's; measured 4.5e-3 max, 1.0e-3 mean (ResNet-18,
    64 px, 8 depth bins, logits of std 1.1)."""
    cfg = model_config(backbone="resnet18", head="integral", depth_bins=8, deconv_filters=32, num_deconv_layers=2,
                       conv_impl="standard")
    m32, m16 = build_pose_net(cfg), build_pose_net(dict(cfg, dtype="bfloat16"))
    leaves = jax.tree.leaves(jax.eval_shape(lambda: init_variables(m16, jax.random.key(0), 64)))
    assert leaves and all(x.dtype == jnp.float32 for x in leaves)
    v = init_variables(m32, jax.random.key(0), 64)  # the same float32 variables (one initializer program)
    params = dict(v["params"], head=dict(v["params"]["head"]))
    final = params["head"]["final_layer"]
    params["head"]["final_layer"] = dict(final, kernel=final["kernel"] * 300.0)  # logits of std ~1, not ~0
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)
    # convolutions really run in bf16 (traced, not compiled)
    jaxpr16 = str(jax.make_jaxpr(lambda a: m16.apply(v, a, train=False))(x))
    assert "conv_general_dilated" in jaxpr16 and "bf16[" in jaxpr16
    assert "bf16[" not in str(jax.make_jaxpr(lambda a: m32.apply(v, a, train=False))(x))

    def loss(model):
        def mean_square(p, s, x):
            out, new = model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
            return jnp.mean(out["joints"] ** 2), (out, new["batch_stats"])
        return mean_square

    # the weights are arguments of the compiled programs, not constants in them
    (_, (o32, _)) = jax.jit(loss(m32))(params, v["batch_stats"], x)
    (_, (o16, stats16)), grads = jax.jit(jax.value_and_grad(loss(m16), has_aux=True))(params, v["batch_stats"], x)
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    assert float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(grads))) > 0
    assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(stats16))
    h = o16["heatmaps"]
    assert h.dtype == jnp.float32 and o16["joints"].dtype == jnp.float32
    assert float(jnp.std(o32["heatmaps"])) > 0.5
    rounded = h.astype(jnp.bfloat16).astype(jnp.float32)
    assert float(jnp.mean(h != rounded)) > 0.9  # bf16-rounded logits would all equal their rounding
    diff = np.abs(np.asarray(o16["joints"]) - np.asarray(o32["joints"]))
    assert float(np.std(np.asarray(o32["joints"]))) > 10 * diff.mean()
    assert diff.max() < 1e-2, diff.max()
