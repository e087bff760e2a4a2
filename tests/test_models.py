"""Tests of kinpose_jax.models: shapes, dtypes, kinematic head, bf16 regression outputs and
cross-device BatchNorm. Transposed convolutions against torch: test_conv_impl.py; mixed precision:
test_mixed_precision.py; weight-conversion parity: test_convert_torch.py."""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

torch = pytest.importorskip("torch")

from kinpose_jax.kinematics import forward_kinematics, presets  # noqa: E402
from kinpose_jax.models import (  # noqa: E402
    build_pose_net, decode_kinematic, init_variables, kinematic_num_outputs, view_matrix,
)

sys.path.insert(0, os.path.dirname(__file__))
import torch_pose_reference as ref  # noqa: E402
from tests.tiny_problem import model_config, tiny_model_config  # noqa: E402

H36M = {n: i for i, n in enumerate(presets.seed_h36m18().joint_names)}


def small_config(**kw) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(model_config(**dict(dict(
        backbone="resnet10", depth_bins=8, deconv_filters=32, kinematic_tree="seed_h36m18"), **kw)))


def images(b=2, size=64, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, 3)), jnp.float32)


@pytest.mark.parametrize("head", ["integral", "direct", "kinematic"])
def test_output_shapes_and_dtypes(head):
    """Traced only (jax.eval_shape): the shapes and dtypes a compiled run gives, without compiling."""
    model = build_pose_net(small_config(head=head))
    v = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), 64))
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), v, images())
    assert out["joints"].shape == (2, 18, 3) and out["joints"].dtype == jnp.float32
    assert set(v["params"]) == {"backbone", "head"}
    if head == "integral":
        assert out["heatmaps"].shape == (2, 16, 16, 18 * 8)
        assert v["params"]["head"]["features_0"]["kernel"].shape == (4, 4, 32, 512)
    if head == "kinematic":
        tree = presets.seed_h36m18()
        assert v["params"]["head"]["fc"]["kernel"].shape == (512, 3 + tree.num_dofs + 1)
        assert out["angles"].shape == (2, tree.num_dofs) and out["scale"].shape == (2,)


def test_build_errors_are_explicit():
    with pytest.raises(ValueError, match="unknown head 'heat'"):
        build_pose_net(small_config(head="heat"))
    with pytest.raises(ValueError, match="unknown backbone 'resnet42'"):
        build_pose_net(small_config(backbone="resnet42"))
    with pytest.raises(ValueError, match="unknown model dtype 'float8'"):
        build_pose_net(small_config(dtype="float8"))
    model = build_pose_net(small_config(head="kinematic", num_joints=17))
    with pytest.raises(ValueError, match="18 output joints but num_joints=17"):
        init_variables(model, jax.random.key(0), 64)
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, 3\]"):
        build_pose_net(small_config()).init(jax.random.key(0), jnp.zeros((1, 3, 64, 64)))


def _rest_pose_reference(tree_name: str) -> np.ndarray:
    tree = presets.get_tree(tree_name)
    local = ref.generic_fk(ref.tree_spec(tree), torch.zeros(1, tree.num_dofs, dtype=torch.float64),
                           torch.full((1,), 1 / 2000.0, dtype=torch.float64))
    return (local @ ref.UPRIGHT_VIEWS[tree_name].double().T)[0].numpy()


@pytest.mark.parametrize("tree_name", ["seed_h36m18", "h36m18"])
def test_kinematic_head_starts_at_upright_rest_pose(tree_name):
    model = build_pose_net(small_config(head="kinematic", kinematic_tree=tree_name))
    v = init_variables(model, jax.random.key(0), 32)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(v, images(size=32, seed=3))
    want = _rest_pose_reference(tree_name)
    np.testing.assert_allclose(np.asarray(out["joints"]), np.broadcast_to(want, (2, 18, 3)), atol=1e-6)
    j = want
    # camera axes: x right, y down (image), z away from the camera
    assert j[H36M["head"], 1] < j[H36M["neck"], 1] < j[H36M["pelvis"], 1] < j[H36M["r_ankle"], 1]
    assert j[H36M["l_hip"], 0] > j[H36M["r_hip"], 0] and j[H36M["l_shoulder"], 0] > j[H36M["r_shoulder"], 0]
    assert j[H36M["nose"], 2] < j[H36M["neck"], 2]  # faces the camera
    height = j[H36M["r_ankle"], 1] - j[H36M["head"], 1]
    assert 0.3 < height < 1.0  # about 0.6 (seed) / 0.8 (h36m18) of the 2000 mm box
    np.testing.assert_allclose(np.asarray(out["translation"]), 0.0)


@pytest.mark.parametrize("tree_name,view", [("seed_h36m18", "upright"), ("h36m18", "upright"),
                                            ("h36m18", "identity")])
def test_decode_kinematic_matches_torch_loop_fk(tree_name, view):
    tree = presets.get_tree(tree_name)
    raw = np.random.default_rng(0).normal(size=(4, kinematic_num_outputs(tree))) * 0.7
    got = decode_kinematic(jnp.asarray(raw, jnp.float32), tree, view_matrix(tree, view))
    r = torch.as_tensor(raw)
    local = ref.generic_fk(ref.tree_spec(tree), r[:, 3:-1], (1 + r[:, -1]) / 2000.0)
    v = ref.UPRIGHT_VIEWS[tree_name if view == "upright" else "identity"].double()
    want = (r[:, None, :3] + local @ v.T).numpy()
    np.testing.assert_allclose(np.asarray(got["joints"]), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(got["scale"]), (1 + raw[:, -1]) / 2000.0, rtol=1e-6)


def test_seed_tree_reproduces_spec_chains_with_bugs_fixed():
    """presets.seed_h36m18 + seed_motion_to_fk_inputs == the chains of docs/DESIGN.md#original-model in torch."""
    rng = np.random.default_rng(1)
    motion = rng.normal(size=(4, 29)) * 0.6
    scale = rng.uniform(0.5, 1.5, size=4)
    tree = presets.seed_h36m18()
    t, angles = presets.seed_motion_to_fk_inputs(jnp.asarray(motion, jnp.float32), tree)
    got = forward_kinematics(tree, angles, translation=t, scale=jnp.asarray(scale, jnp.float32)).joints
    want = ref.seed_chain_fk(torch.as_tensor(motion), torch.as_tensor(scale)).numpy()
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-3)  # mm scale, fp32
    # bug (a) fixed: the global translation moves the pelvis
    np.testing.assert_allclose(np.asarray(got)[:, 0], motion[:, [0, 2, 1]], atol=1e-5)


def test_batchnorm_statistics_average_across_devices():
    """bn_axis_name: shard_map over 2 devices with 1 image each gives the statistics of the 2-image batch."""
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() >= 2, "tests/conftest.py simulates 4 CPU devices"
    cfg = tiny_model_config()
    single = build_pose_net(cfg)
    synced = build_pose_net(cfg, bn_axis_name="devices")
    v = init_variables(single, jax.random.PRNGKey(0), 32)  # the tiny runs' initializer program (a raw key)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)

    def f(m):
        return lambda v, x: m.apply(v, x, train=True, mutable=["batch_stats"])

    want_out, want = jax.jit(f(single))(v, x)
    mesh = Mesh(np.asarray(jax.devices()[:2]), ("devices",))

    def mapped(m, stats_spec):
        return jax.jit(jax.shard_map(f(m), mesh=mesh, in_specs=(P(), P("devices")),
                                     out_specs=(P("devices"), stats_spec), check_vma=False))

    def rel_err(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - y) / (1 + np.abs(y)))) for x, y in
                   zip(jax.tree.leaves(a), jax.tree.leaves(jax.device_get(b)), strict=True))

    got_out, got = mapped(synced, P())(v, x)
    assert rel_err(got, want) < 1e-5
    np.testing.assert_allclose(np.asarray(got_out["joints"]), np.asarray(want_out["joints"]), atol=1e-4)
    # without the axis name each device normalises with its own image's statistics: the first
    # device's (the first half of each statistic, stacked over devices) are not the batch's
    _, lone = mapped(single, P("devices"))(v, x)
    assert rel_err(jax.tree.map(lambda a: np.asarray(a)[: a.shape[0] // 2], lone), want) > 1e-2


@pytest.mark.parametrize("head", ["direct", "kinematic"])
def test_bfloat16_regression_heads_compute_their_output_in_fp32(head):
    """Under mixed precision only the backbone runs in bf16: the final linear layer (and FK) of the
    direct / kinematic heads must give the fp32 answer for the (bf16) features they receive."""
    model = build_pose_net(small_config(head=head, dtype="bfloat16"))
    v = init_variables(model, jax.random.key(2), 32)
    fc = v["params"]["head"]["fc"]
    rng = np.random.default_rng(2)
    fc = dict(kernel=jnp.asarray(rng.normal(size=fc["kernel"].shape) * 0.05, jnp.float32),
              bias=jnp.asarray(rng.normal(size=fc["bias"].shape) * 0.1, jnp.float32))
    v = dict(v, params=dict(v["params"], head=dict(fc=fc)))
    out, inter = jax.jit(lambda v, x: model.apply(v, x, train=False, capture_intermediates=True))(v, images(size=32))
    feats = inter["intermediates"]["backbone"]["__call__"][0]
    assert feats.dtype == jnp.bfloat16  # the backbone does run in bf16
    pooled = np.asarray(feats, np.float64).mean(axis=(1, 2))
    raw = pooled @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"], np.float64)
    if head == "direct":
        want = raw.reshape(2, 18, 3)
    else:
        tree = presets.seed_h36m18()
        want = np.asarray(decode_kinematic(jnp.asarray(raw, jnp.float32), tree, view_matrix(tree, "upright"))["joints"])
    assert out["joints"].dtype == jnp.float32
    # bf16 rounding of the pooled features / kernel would leave errors of ~1e-3 here
    np.testing.assert_allclose(np.asarray(out["joints"]), want, atol=2e-6, rtol=0)


def _assert_normal_std(name, kernel, std):
    """iid N(0, std^2) samples: the sample std has relative standard error 1/sqrt(2n) and the mean
    standard error std/sqrt(n); allow 5 standard errors (a truncated normal's 0.88 std, or any
    fan-in scaled init, is far outside for every size used here)."""
    k = np.asarray(kernel, np.float64).ravel()
    n = k.size
    assert abs(k.std() / std - 1) < 5 / np.sqrt(2 * n), (name, n, k.std())
    assert abs(k.mean()) < 5 * std / np.sqrt(n), (name, n, k.mean())


def test_head_initialization_follows_the_spec():
    """docs/DESIGN.md#integral-head: deconv and final conv weights ~ N(0, 0.001), biases 0 (deconvs have none), BN
    scale 1 / bias 0 with fresh statistics; the kinematic fc starts at exactly zero (rest pose)."""
    v = init_variables(build_pose_net(small_config()), jax.random.key(0), 32)
    head, stats = v["params"]["head"], v["batch_stats"]["head"]
    assert set(head) == {"features_0", "features_1", "features_3", "features_4", "features_6", "features_7",
                         "final_layer"}
    for name in ("features_0", "features_3", "features_6", "final_layer"):
        _assert_normal_std(name, head[name]["kernel"], 0.001)
    for name in ("features_0", "features_3", "features_6"):
        assert set(head[name]) == {"kernel"}  # bias=False, as in the original
    np.testing.assert_array_equal(head["final_layer"]["bias"], 0.0)
    for name in ("features_1", "features_4", "features_7"):
        np.testing.assert_array_equal(head[name]["scale"], 1.0)
        np.testing.assert_array_equal(head[name]["bias"], 0.0)
        np.testing.assert_array_equal(stats[name]["mean"], 0.0)
        np.testing.assert_array_equal(stats[name]["var"], 1.0)
    direct = init_variables(build_pose_net(small_config(head="direct")), jax.random.key(0), 32)["params"]["head"]
    _assert_normal_std("direct fc", direct["fc"]["kernel"], 0.001)
    np.testing.assert_array_equal(direct["fc"]["bias"], 0.0)
    kin = init_variables(build_pose_net(small_config(head="kinematic")), jax.random.key(0), 32)["params"]["head"]
    np.testing.assert_array_equal(kin["fc"]["kernel"], 0.0)
    np.testing.assert_array_equal(kin["fc"]["bias"], 0.0)
