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


def test_bf16_integral_model_decodes_close_to_fp32_from_float32_logits():
    """Same float32 parameters, same fixed input, training-mode BN: the bf16 model's heatmap
    logits are float32 values that are not bf16-rounded (the final 1x1 layer accumulates and
    outputs float32), and its decoded joints stay within 1e-2 normalized units (20 mm at the 2000
    mm box) of the fp32 model's; measured 4.5e-3 max, 1.0e-3 mean (ResNet-18, 64 px, 8 depth bins,
    logits of std 1.1)."""
    cfg = model_config(backbone="resnet18", head="integral", depth_bins=8, deconv_filters=32, num_deconv_layers=2,
                       conv_impl="standard")
    m32, m16 = build_pose_net(cfg), build_pose_net(dict(cfg, dtype="bfloat16"))
    v = init_variables(m32, jax.random.key(0), 64)
    params = dict(v["params"], head=dict(v["params"]["head"]))
    final = params["head"]["final_layer"]
    params["head"]["final_layer"] = dict(final, kernel=final["kernel"] * 300.0)  # logits of std ~1, not ~0
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 64, 64, 3)), jnp.float32)

    def run(model):  # the weights are arguments of the compiled forward, not constants in it
        return jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x, train=True,
                                                   mutable=["batch_stats"])[0])(params, v["batch_stats"], x)

    o32, o16 = run(m32), run(m16)
    h = o16["heatmaps"]
    assert h.dtype == jnp.float32 and o16["joints"].dtype == jnp.float32
    assert float(jnp.std(o32["heatmaps"])) > 0.5
    rounded = h.astype(jnp.bfloat16).astype(jnp.float32)
    assert float(jnp.mean(h != rounded)) > 0.9  # bf16-rounded logits would all equal their rounding
    diff = np.abs(np.asarray(o16["joints"]) - np.asarray(o32["joints"]))
    assert float(np.std(np.asarray(o32["joints"]))) > 10 * diff.mean()
    assert diff.max() < 1e-2, diff.max()
