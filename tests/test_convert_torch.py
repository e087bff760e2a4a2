"""PyTorch -> Flax conversion: numerical parity with the independent torch reference
(tests/torch_pose_reference.py) through the whole file path (torch.save -> convert -> orbax ->
restore -> apply), and the error / report cases."""

from __future__ import annotations

import copy
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

torch = pytest.importorskip("torch")

from kinpose_jax import convert_torch as C  # noqa: E402
from kinpose_jax.kinematics import presets  # noqa: E402
from kinpose_jax.models import ResNet, build_pose_net, init_variables, variable_shapes  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import torch_pose_reference as ref  # noqa: E402
from tests.tiny_problem import model_config, short_resnet50  # noqa: E402

TOL = 1e-4
SIZE = 64


def nchw_to_nhwc(x: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def save_seed_checkpoint(model: torch.nn.Module, path, prefix: str = "module.") -> str:
    """Like the original: a dict whose 'network' entry is the (DataParallel-prefixed) state_dict."""
    sd = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"epoch": 3, "network": sd, "optimizer": {"lr": 1e-3}}, str(path))
    return str(path)


def run_converted(ckpt_dir: str, x: torch.Tensor) -> dict:
    meta = C.read_conversion_metadata(ckpt_dir)
    model = build_pose_net(model_config(**meta["model"]))
    variables = C.load_converted(ckpt_dir)
    return jax.jit(lambda v, images: model.apply(v, images, train=False))(variables, nchw_to_nhwc(x))


#: Every head on ResNet-18, and ResNet-50 (bottleneck blocks, 2048 head input channels) with the
#: kinematic head; ResNet-50 with the integral head is SEED_CASES' resnet50-3deconv. The head
#: mapping does not depend on the depth (the converter reads the channel counts from the tensors).
#: The ResNet-50 cases run a short trunk (tests.tiny_problem.short_resnet50; every depth's full key
#: mapping is checked by test_backbone_sizes_and_key_mapping_match_torch_for_every_depth).
CASES = [
    (18, "integral", None), (18, "direct", None), (18, "kinematic", "seed_h36m18"),
    (50, "kinematic", "h36m18"),
]


@pytest.mark.parametrize("depth,head,tree", CASES, ids=[f"resnet{d}-{h}" for d, h, _ in CASES])
def test_converted_seed_checkpoint_matches_torch(tmp_path, monkeypatch, depth, head, tree):
    if depth == 50:
        short_resnet50(monkeypatch, ref.SPECS)
    torch.manual_seed(depth)
    tree_obj = presets.get_tree(tree) if tree else None
    tm = ref.randomize(ref.build(depth, head, depth_bins=8, filters=32, tree=tree_obj, view=tree or "identity"),
                       seed=depth)
    path = save_seed_checkpoint(tm, tmp_path / "seed.pth.tar")
    overrides = dict(depth_bins=8, kinematic_tree=tree or "seed_h36m18", kinematic_view="upright")
    cfg, report = C.convert_file(path, str(tmp_path / "ckpt"), overrides)
    assert cfg["backbone"] == f"resnet{depth}" and cfg["head"] == head  # inferred from the tensors
    assert report.missing == [] and report.unexpected == []
    assert all(k.endswith("num_batches_tracked") for k in report.ignored)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = tm(x)
    got = run_converted(str(tmp_path / "ckpt"), x)
    wj = want["joints"].numpy()
    assert wj.std() > 0.02 and np.abs(wj[0] - wj[1]).max() > 1e-3  # the comparison is not trivial
    np.testing.assert_allclose(np.asarray(got["joints"]), wj, atol=TOL)
    if head == "integral":
        np.testing.assert_allclose(np.asarray(got["heatmaps"]).transpose(0, 3, 1, 2), want["heatmaps"].numpy(),
                                   atol=TOL)


SEED_CASES = [(18, 1), (18, 2), (18, 3), (50, 3)]


@pytest.mark.parametrize("depth,layers", SEED_CASES, ids=[f"resnet{d}-{n}deconv" for d, n in SEED_CASES])
def test_seed_deconv_head_layout_converts_and_matches_torch(tmp_path, monkeypatch, depth, layers):
    """The original's DeconvHead keeps the final 1x1 conv in ``features`` (``head.features.{3L}``)."""
    if depth == 50:
        short_resnet50(monkeypatch, ref.SPECS)
    torch.manual_seed(depth + layers)
    tm = ref.randomize(ref.build(depth, "seed_integral", depth_bins=8, filters=32, num_layers=layers),
                       seed=depth + layers)
    keys = set(tm.state_dict())
    assert {f"head.features.{3 * layers}.weight", f"head.features.{3 * layers}.bias"} <= keys
    assert not any(k.startswith("head.final_layer") for k in keys)
    path = save_seed_checkpoint(tm, tmp_path / "seed.pth.tar")
    cfg, report = C.convert_file(path, str(tmp_path / "ckpt"), strict=True, init_size=SIZE)
    assert (cfg["head"], cfg["backbone"], cfg["num_deconv_layers"], cfg["depth_bins"], cfg["deconv_filters"]) == (
        "integral", f"resnet{depth}", layers, 8, 32)
    assert f"head.features.{3 * layers}.weight" in report.loaded and report.missing == report.unexpected == []
    assert any(f"head.features.{3 * layers}.weight -> head.final_layer.weight" in n for n in report.notes)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = tm(x)
    got = run_converted(str(tmp_path / "ckpt"), x)
    wj = want["joints"].numpy()
    assert wj.std() > 0.02 and np.abs(wj[0] - wj[1]).max() > 1e-3
    np.testing.assert_allclose(np.asarray(got["joints"]), wj, atol=TOL)
    np.testing.assert_allclose(np.asarray(got["heatmaps"]).transpose(0, 3, 1, 2), want["heatmaps"].numpy(), atol=TOL)


def test_seed_kinematic_buffers_are_ignored_so_strict_accepts_the_seed_checkpoint(tmp_path):
    torch.manual_seed(6)
    tm = ref.build(18, "seed_kinematic")
    assert set(C.SEED_KINEMATIC_BUFFERS) <= set(tm.state_dict())
    path = save_seed_checkpoint(tm, tmp_path / "kin.pth.tar")
    _, report = C.convert_file(path, str(tmp_path / "ckpt"), dict(head="kinematic", kinematic_view="identity"),
                               strict=True, init_size=SIZE)
    assert set(C.SEED_KINEMATIC_BUFFERS) <= set(report.ignored) and report.unexpected == []
    assert report.loaded and report.missing == []


def test_canonical_seed_keys_leaves_other_layouts_alone(tiny):
    _, sd, _, _ = tiny  # this repository's naming: head.final_layer.*
    same, renamed = C.canonical_seed_keys(sd)
    assert renamed == {} and same.keys() == sd.keys()
    no_bias = {k: v for k, v in sd.items() if not k.startswith("head.final_layer")}  # deconvs only: no final conv
    assert C.canonical_seed_keys(no_bias)[1] == {}


def _tiny_integral(seed=0, depth=18):
    torch.manual_seed(seed)
    return ref.randomize(ref.build(depth, "integral", depth_bins=8, filters=32), seed=seed)


def _model_and_init(**cfg):
    """The model and an initializer of its variables that compiles nothing (every leaf 1): the
    conversions only fill leaves a checkpoint lacks from it."""
    model = build_pose_net(model_config(**dict(dict(backbone="resnet18", head="integral", depth_bins=8,
                                                     deconv_filters=32), **cfg)))
    shapes = variable_shapes(model, SIZE)
    return model, lambda: jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)


@pytest.fixture(scope="module")
def tiny():
    tm = _tiny_integral()
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    model, init = _model_and_init()
    return tm, sd, model, init


def test_train_mode_matches_torch_and_updates_batch_stats_like_torch(tiny):
    tm, sd, model, init = tiny
    variables, _ = C.convert_state_dict(sd, model, init)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    tm_train = copy.deepcopy(tm).train()
    with torch.no_grad():
        want = tm_train(x)
    got, new = jax.jit(lambda v, images: model.apply(v, images, train=True, mutable=["batch_stats"]))(
        variables, nchw_to_nhwc(x))
    np.testing.assert_allclose(np.asarray(got["heatmaps"]).transpose(0, 3, 1, 2), want["heatmaps"].numpy(), atol=TOL)
    # running mean: torch momentum 0.1 == Flax momentum 0.9
    bn_t, bn_old = tm_train.backbone.layer2[0].bn1, sd["backbone.layer2.0.bn1.running_var"]
    stats = new["batch_stats"]["backbone"]["layer2_0"]["bn1"]
    np.testing.assert_allclose(np.asarray(stats["mean"]), bn_t.running_mean.numpy(), atol=1e-5)
    # running var: torch accumulates the unbiased batch variance, Flax the biased one (n = B*H*W)
    n = 2 * (SIZE // 8) ** 2
    unbiased = (bn_t.running_var.numpy() - 0.9 * bn_old) / 0.1
    np.testing.assert_allclose(np.asarray(stats["var"]), 0.9 * bn_old + 0.1 * unbiased * (n - 1) / n, rtol=1e-4)


def test_seed_kinematic_layer_uses_motion_rows_and_last_row_as_scale(tmp_path):
    """A seed head.fc with 29*18+1 outputs: rows 0..28 are the motion, the last row is the scale."""
    torch.manual_seed(5)
    tm = ref.build(18, "seed_kinematic")
    ref.randomize(tm, seed=5, out_std=0.3)
    with torch.no_grad():  # a realistic scale output (~1/2000 normalized per mm) in the last row
        tm.head.fc.weight[-1].mul_(1 / 4000.0)
        tm.head.fc.bias[-1] = 1 / 2000.0
    path = save_seed_checkpoint(tm, tmp_path / "kin.pth.tar", prefix="")
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = tm(x)["joints"].numpy()
    assert np.abs(want).max() > 0.1 and np.abs(want[0] - want[1]).max() > 1e-3
    for view in ("identity", "upright"):
        out = tmp_path / view
        cfg, report = C.convert_file(path, str(out), dict(head="kinematic", kinematic_tree="seed_h36m18",
                                                          kinematic_view=view))
        assert report.missing == [] and report.unexpected == []
        assert any("29 motion" in n or "motion parameters" in n for n in report.notes)
        assert any("Head_RotX" in n for n in report.notes)
        got = np.asarray(run_converted(str(out), x)["joints"])
        expected = want if view == "identity" else want @ ref.UPRIGHT_VIEWS["seed_h36m18"].numpy().T
        np.testing.assert_allclose(got, expected, atol=TOL)


def test_plain_torchvision_state_dict_imports_the_backbone_only(tmp_path):
    torch.manual_seed(2)
    net = ref.TorchResNet(18, with_fc=True)
    wrapper = ref.TorchPoseNet(net, ref.DirectHead(512, 18))
    ref.randomize(wrapper, seed=2)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), str(path))  # keys: conv1.weight, layer1.0..., fc.weight
    sd = C.load_torch_state_dict(str(path))
    assert C.detect_source(sd) == "torchvision"
    model, init = _model_and_init()
    variables, report = C.convert_state_dict(sd, model, init)
    assert {"fc.weight", "fc.bias"} <= set(report.ignored)
    assert report.unexpected == []
    assert report.missing == []  # the head is not part of a torchvision conversion
    assert any("only the backbone is converted" in n for n in report.notes)
    assert set(variables["params"]) == {"backbone"} and set(variables["batch_stats"]) == {"backbone"}
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = net(x).numpy().transpose(0, 2, 3, 1)
    bb = {"params": variables["params"]["backbone"], "batch_stats": variables["batch_stats"]["backbone"]}
    got = jax.jit(lambda v, images: ResNet(18).apply(v, images, False))(bb, nchw_to_nhwc(x))
    np.testing.assert_allclose(np.asarray(got), want, atol=TOL)


def test_shape_mismatch_names_key_and_both_shapes(tiny):
    _, sd, model, init = tiny
    bad = dict(sd)
    bad["backbone.layer1.0.conv1.weight"] = np.zeros((64, 64, 3, 1), np.float32)
    with pytest.raises(ValueError) as err:
        C.convert_state_dict(bad, model, init)
    msg = str(err.value)
    assert "backbone.layer1.0.conv1.weight" in msg and "params/backbone/layer1_0/conv1/kernel" in msg
    assert "has shape (64, 64, 3, 1)" in msg and "expects (64, 64, 3, 3)" in msg and "(3, 3, 64, 64)" in msg


def test_missing_and_unexpected_keys_are_listed(tiny):
    _, sd, model, init = tiny
    partial = {"module." + k: v for k, v in sd.items() if k != "backbone.layer1.0.bn1.running_var"}
    partial["module.head.extra.weight"] = np.zeros((3, 3), np.float32)
    variables, report = C.convert_state_dict(partial, model, init)
    assert report.missing == ["batch_stats/backbone/layer1_0/bn1/var"]
    assert report.unexpected == ["head.extra.weight"]  # "module." stripped
    np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["layer1_0"]["bn1"]["var"], 1.0)
    np.testing.assert_array_equal(variables["params"]["backbone"]["conv1"]["kernel"],
                                  sd["backbone.conv1.weight"].transpose(2, 3, 1, 0))
    summary = report.summary()
    assert "batch_stats/backbone/layer1_0/bn1/var" in summary and "head.extra.weight" in summary
    with pytest.raises(ValueError, match="strict conversion failed"):
        C.convert_state_dict(partial, model, init, strict=True)


def test_a_complete_checkpoint_converts_without_running_the_initializers(tiny):
    """An initializer function is traced for the shapes and run only when a leaf is missing."""
    _, sd, model, init = tiny
    runs = []

    def initializer():
        jax.debug.callback(lambda: runs.append(1))  # runs when the initializer runs, not when traced
        return init()

    variables, report = C.convert_state_dict(sd, model, initializer)
    assert runs == [] and report.missing == []
    expected, _ = C.convert_state_dict(sd, model, init)
    jax.tree.map(np.testing.assert_array_equal, variables, expected)
    partial = {k: v for k, v in sd.items() if k != "backbone.layer1.0.bn1.running_var"}
    variables, report = C.convert_state_dict(partial, model, initializer)
    assert runs == [1] and report.missing == ["batch_stats/backbone/layer1_0/bn1/var"]
    np.testing.assert_array_equal(variables["batch_stats"]["backbone"]["layer1_0"]["bn1"]["var"], 1.0)


def test_wrong_config_fails_on_shapes(tiny):
    _, sd, _, _ = tiny
    model = build_pose_net(model_config(backbone="resnet18", head="integral", depth_bins=16, deconv_filters=32))
    init = functools.partial(init_variables, model, jax.random.key(0), SIZE)  # shapes only: never run
    with pytest.raises(ValueError, match=r"'head\.final_layer\.bias'.*has shape \(144,\) but the model expects \(288,\)"):
        C.convert_state_dict(sd, model, init)


def test_infer_model_config():
    sd50 = {k: v.numpy() for k, v in ref.TorchResNet(50).state_dict().items()}
    assert C.infer_model_config(sd50)["backbone"] == "resnet50"
    sd18 = {"backbone." + k: v.numpy() for k, v in ref.TorchResNet(18).state_dict().items()}
    sd18["head.fc.weight"], sd18["head.fc.bias"] = np.zeros((54, 512)), np.zeros(54)
    assert C.infer_model_config(sd18) == {"backbone": "resnet18", "head": "direct"}
    sd18.pop("head.fc.weight")
    sd18["head.final_layer.weight"] = np.zeros((18 * 16, 64, 1, 1))
    assert C.infer_model_config(sd18)["depth_bins"] == 16
    assert C.infer_model_config(sd18, {"num_joints": 16})["depth_bins"] == 18
    sd18.pop("head.final_layer.weight")
    sd18["head.fc.weight"] = np.zeros((523, 512))
    assert C.infer_model_config(sd18, {"kinematic_tree": "seed_h36m18"})["head"] == "kinematic"
    with pytest.raises(ValueError, match="cannot infer the ResNet depth"):
        C.infer_model_config({"backbone.conv1.weight": np.zeros(1), "backbone.layer1.0.conv1.weight": np.zeros(1)})


class _NotATensor:
    pass


def test_pickled_objects_need_explicit_permission(tmp_path):
    path = tmp_path / "pickled.pth.tar"
    torch.save({"network": {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}, "config": _NotATensor()}, str(path))
    with pytest.raises(RuntimeError, match="--allow-pickle"):
        C.load_torch_state_dict(str(path))
    sd = C.load_torch_state_dict(str(path), allow_pickle=True)
    assert list(sd) == ["backbone.conv1.weight"]


def test_command_line(tmp_path, capsys, tiny):
    tm = tiny[0]
    path = save_seed_checkpoint(tm, tmp_path / "seed.pth.tar")
    out = tmp_path / "out"
    assert C.main([path, str(out)]) == 0
    text = capsys.readouterr().out
    assert "missing (Flax leaves kept at their initialization): 0" in text and "resnet18" in text
    meta = json.loads((out / C.REPORT_FILE).read_text())
    assert meta["model"]["head"] == "integral" and meta["model"]["deconv_filters"] == 32
    assert meta["model"]["depth_bins"] == 8  # 144 final channels / 18 joints
    restored = C.load_converted(str(out))
    np.testing.assert_array_equal(np.asarray(restored["params"]["head"]["final_layer"]["bias"]),
                                  tm.head.final_layer.bias.detach().numpy())
    # restore into an abstract target (what a training driver does)
    model = build_pose_net(model_config(**meta["model"]))
    target = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), SIZE))
    typed = C.load_converted(str(out), target)
    assert jax.tree.structure(typed) == jax.tree.structure(target)
    assert C.main([path, str(out)]) == 2  # refuses to overwrite without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_command_line_errors_are_one_line(tmp_path, capsys):
    assert C.main([str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "missing.pth" in err and "no such" in err.lower() and "allow-pickle" not in err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert C.main([str(junk), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "junk.pth is not a readable PyTorch checkpoint" in err and "allow-pickle" not in err
    assert not (tmp_path / "out").exists()


#: torchvision's published parameter counts of resnet{18,34,50,101,152} (with the 1000-way fc).
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS))
def test_backbone_sizes_and_key_mapping_match_torch_for_every_depth(depth):
    """Shapes only (torch 'meta' tensors, jax.eval_shape): the Flax backbone has the torch
    reference's parameter and BN-statistic counts, and the converter maps every torch backbone
    key one-to-one onto a Flax leaf of the right (transposed) shape."""
    with torch.device("meta"):
        tnet = ref.TorchResNet(depth, with_fc=True)
    assert sum(p.numel() for p in tnet.parameters()) == TORCHVISION_PARAMS[depth]  # the reference is torchvision's
    shapes = {k: tuple(v.shape) for k, v in tnet.state_dict().items() if not k.startswith("fc.")}
    abstract = jax.eval_shape(lambda: ResNet(depth).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), False))
    flax_leaves = {(col,) + tuple(p.key for p in path): tuple(leaf.shape)
                   for col in ("params", "batch_stats")
                   for path, leaf in jax.tree_util.tree_leaves_with_path(abstract[col])}
    n_params = sum(int(np.prod(s)) for k, s in flax_leaves.items() if k[0] == "params")
    n_stats = sum(int(np.prod(s)) for k, s in flax_leaves.items() if k[0] == "batch_stats")
    assert n_params == sum(p.numel() for n, p in tnet.named_parameters() if not n.startswith("fc."))
    assert n_stats == sum(b.numel() for n, b in tnet.named_buffers() if "running_" in n)
    mapped = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            continue
        dest = C.flax_destination("backbone." + key, shape)
        assert dest is not None, key
        (col, module, *rest), flax_shape = dest
        assert module == "backbone"
        path = (col, *rest)
        assert flax_leaves.get(path) == flax_shape, (key, path, flax_leaves.get(path), flax_shape)
        assert path not in mapped, (key, mapped.get(path))
        mapped[path] = key
    assert set(mapped) == set(flax_leaves)
    assert C.infer_model_config({k: np.empty(0) for k in shapes})["backbone"] == f"resnet{depth}"
