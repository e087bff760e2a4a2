"""kinpose_jax.pretrained.load_pretrained: a converted checkpoint loads whole into the model it was
converted for, only its backbone loads for a torchvision source, and everything else is refused
with a message naming the disagreement (tiny ResNet-18 models, 32x32 inputs)."""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np
import pytest

pytestmark = pytest.mark.quick_compile  # programs that run a few times on tiny inputs (conftest.py)

torch = pytest.importorskip("torch")

from kinpose_jax import convert_torch as C  # noqa: E402
from kinpose_jax.models import ResNet, build_pose_net, init_variables, variable_shapes  # noqa: E402
from kinpose_jax.pretrained import PretrainedMismatchError, check_config, load_pretrained  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import torch_pose_reference as ref  # noqa: E402
from tests.tiny_problem import model_config, random_variables  # noqa: E402

SIZE = 32
INTEGRAL = model_config(backbone="resnet18", head="integral", num_joints=18, depth_bins=8, deconv_filters=32,
                        num_deconv_layers=2)
KINEMATIC = model_config(backbone="resnet18", head="kinematic", num_joints=18, kinematic_tree="seed_h36m18",
                         kinematic_view="identity")


def fresh(cfg: dict, seed: int = 1) -> dict:
    return init_variables(build_pose_net(cfg), jax.random.key(seed), SIZE)


def shapes(cfg: dict) -> dict:
    """:func:`fresh`'s ShapeDtypeStructs (no initializer compiled): enough where the checkpoint is
    refused, or fills every leaf."""
    return variable_shapes(build_pose_net(cfg), SIZE)


def convert(tmp, torch_model, name, overrides=None, drop=()):
    path = os.path.join(tmp, name + ".pth.tar")
    sd = {k: v for k, v in torch_model.state_dict().items() if k not in drop}
    torch.save({"network": sd}, path)
    out = os.path.join(tmp, name)
    C.convert_file(path, out, overrides or {}, init_size=SIZE)
    return out


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("pretrained"))
    torch.manual_seed(0)
    integral = ref.build(18, "integral", depth_bins=8, filters=32, num_layers=2)  # 2 deconvs
    kin = ref.build(18, "seed_kinematic")
    return dict(
        integral=convert(tmp, integral, "integral", dict(depth_bins=8)),
        kinematic=convert(tmp, kin, "kinematic", dict(head="kinematic", kinematic_view="identity")),
        torch_integral=integral,
    )


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_matching_config_loads_every_leaf(ckpts):
    init = fresh(INTEGRAL)
    got = load_pretrained(ckpts["integral"], init, INTEGRAL)
    saved = C.load_converted(ckpts["integral"])
    assert jax.tree.structure(got) == jax.tree.structure(init)
    assert leaves_equal(got["params"], saved["params"]) and leaves_equal(got["batch_stats"], saved["batch_stats"])
    w = ckpts["torch_integral"].head.features[3].weight.detach().numpy()
    np.testing.assert_array_equal(got["params"]["head"]["features_3"]["kernel"], w.transpose(2, 3, 1, 0))


def test_more_deconv_layers_than_converted_is_refused(ckpts):
    """The reviewed bug: 2-deconv seed net loaded into a 3-deconv config left head/features_6 random."""
    cfg = dict(INTEGRAL, num_deconv_layers=3)
    with pytest.raises(PretrainedMismatchError, match=r"num_deconv_layers: the checkpoint has 2, the model config has 3"):
        load_pretrained(ckpts["integral"], shapes(cfg), cfg)


def test_kinematic_view_differing_from_the_conversion_is_refused(ckpts):
    cfg = dict(KINEMATIC, kinematic_view="upright")  # same shapes, rotated outputs
    with pytest.raises(ValueError, match=r"kinematic_view: the checkpoint has 'identity', the model config has "
                                         r"'upright'.*--kinematic-view identity"):
        load_pretrained(ckpts["kinematic"], shapes(cfg), cfg)
    got = load_pretrained(ckpts["kinematic"], shapes(KINEMATIC), KINEMATIC)
    assert leaves_equal(got["params"], C.load_converted(ckpts["kinematic"])["params"])


@pytest.mark.parametrize("which,field,value", [
    ("integral", "backbone", "resnet34"), ("integral", "head", "direct"), ("integral", "depth_bins", 16),
    ("integral", "deconv_filters", 64), ("integral", "deconv_kernel", 3), ("integral", "num_deconv_layers", 3),
    ("integral", "num_joints", 16), ("kinematic", "kinematic_tree", "h36m18"), ("kinematic", "box_mm", 1800.0),
    ("kinematic", "kinematic_view", "upright"),
])
def test_every_determined_field_is_checked(ckpts, which, field, value):
    meta = C.read_conversion_metadata(ckpts[which])
    base = INTEGRAL if which == "integral" else KINEMATIC
    check_config(meta, base)  # agrees
    theirs = meta["model"][field]
    with pytest.raises(ValueError, match=rf"{field}: the checkpoint has {theirs!r}, the model config has {value!r}"):
        check_config(meta, dict(base, **{field: value}))


def test_fields_the_converter_did_not_determine_are_free(ckpts):
    meta = C.read_conversion_metadata(ckpts["integral"])
    assert meta["source"] == "seed"
    assert set(meta["determined"]) == {"backbone", "head", "num_joints", "depth_bins", "num_deconv_layers",
                                       "deconv_filters", "deconv_kernel"}
    check_config(meta, dict(INTEGRAL, kinematic_view="upright", kinematic_tree="h36m18", box_mm=1000.0,
                            dtype="bfloat16"))
    check_config(meta, dict(INTEGRAL, backbone="18"))  # the same depth, spelled differently


def test_leaves_missing_from_the_torch_checkpoint_are_refused(tmp_path, ckpts):
    out = convert(str(tmp_path), ckpts["torch_integral"], "partial", dict(depth_bins=8),
                  drop=("head.features.1.running_var",))
    assert C.read_conversion_metadata(out)["report"]["missing"] == ["batch_stats/head/features_1/var"]
    with pytest.raises(ValueError, match=r"1 leaves were missing.*batch_stats/head/features_1/var"):
        load_pretrained(out, fresh(INTEGRAL), INTEGRAL)


def test_model_leaves_absent_from_the_checkpoint_are_refused(tmp_path):
    """Structural check (independent of the report): a checkpoint without some model leaf."""
    init = fresh(INTEGRAL)
    variables = jax.tree.map(np.asarray, init)
    del variables["params"]["head"]["final_layer"]["bias"]
    out = C.save_converted(str(tmp_path / "ckpt"), variables, C.ConversionReport(source="seed"), INTEGRAL)
    with pytest.raises(ValueError, match=r"1 model leaves are not in the checkpoint.*head/final_layer/bias"):
        load_pretrained(out, init, INTEGRAL)
    # and the reverse: a checkpoint leaf the model lacks
    variables = jax.tree.map(np.asarray, init)
    variables["params"]["head"]["extra"] = {"kernel": np.zeros((2, 2), np.float32)}
    out = C.save_converted(str(tmp_path / "ckpt2"), variables, C.ConversionReport(source="seed"), INTEGRAL)
    with pytest.raises(ValueError, match=r"do not exist in this model.*head/extra/kernel"):
        load_pretrained(out, init, INTEGRAL)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """A torchvision-layout ResNet-18 ImageNet state_dict (conv1.weight, layer1.0..., fc.weight, fc.bias)."""
    tmp = tmp_path_factory.mktemp("imagenet")
    torch.manual_seed(3)
    net = ref.TorchResNet(18, with_fc=True)
    ref.randomize(ref.TorchPoseNet(net, ref.DirectHead(512, 18)), seed=3)  # non-trivial BN statistics
    path = str(tmp / "resnet18.pth")
    torch.save(net.state_dict(), path)
    out = str(tmp / "converted")
    cfg, report = C.convert_file(path, out, init_size=SIZE)
    return net, out, report


def test_torchvision_conversion_saves_only_the_backbone(imagenet):
    _, out, report = imagenet
    assert {"fc.weight", "fc.bias"} <= set(report.ignored) and report.unexpected == [] and report.missing == []
    meta = json.loads(open(os.path.join(out, C.REPORT_FILE)).read())
    assert meta["source"] == "torchvision" and meta["determined"] == ["backbone"]
    saved = C.load_converted(out)
    assert set(saved["params"]) == {"backbone"} and set(saved["batch_stats"]) == {"backbone"}


#: ResNet-18 features of NHWC images (inference mode), one compiled program for every head's case.
resnet18_features = jax.jit(lambda variables, images: ResNet(18).apply(variables, images, False))


@pytest.mark.parametrize("cfg", [
    dict(INTEGRAL), model_config(backbone="resnet18", head="direct"),
    model_config(backbone="resnet18", head="kinematic", kinematic_tree="h36m18", kinematic_view="upright"),
], ids=["integral", "direct", "kinematic"])
def test_imagenet_weights_start_any_head(imagenet, cfg):
    net, out, _ = imagenet
    init = random_variables(shapes(cfg), seed=5)  # a trainer's fresh variables (any values; none compiled)
    got = load_pretrained(out, init, cfg)
    assert leaves_equal(got["params"]["head"], init["params"]["head"])  # the trainer's own fresh head
    assert leaves_equal(got.get("batch_stats", {}).get("head", {}), init.get("batch_stats", {}).get("head", {}))
    bb = got["params"]["backbone"]
    np.testing.assert_array_equal(bb["layer2_0"]["downsample_0"]["kernel"],
                                  net.layer2[0].downsample[0].weight.detach().numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(got["batch_stats"]["backbone"]["layer4_1"]["bn2"]["var"],
                                  net.layer4[1].bn2.running_var.numpy())
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = net(x).numpy().transpose(0, 2, 3, 1)
    feats = resnet18_features({"params": bb, "batch_stats": got["batch_stats"]["backbone"]},
                              x.numpy().transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(feats), want, atol=1e-4)


def test_shapes_alone_load_a_whole_conversion_but_not_a_backbone_only_one(ckpts, imagenet):
    """A target of shapes (``jax.eval_shape``, as evaluation and predict pass) fills from a full
    conversion; a torchvision conversion would leave the head at shapes without values: refused."""
    shapes = jax.eval_shape(lambda: fresh(INTEGRAL))
    got = load_pretrained(ckpts["integral"], shapes, INTEGRAL, allow_backbone_only=False)
    assert leaves_equal(got, load_pretrained(ckpts["integral"], fresh(INTEGRAL), INTEGRAL))
    with pytest.raises(ValueError, match=r"leaves keep their initial values, but only their shapes were given: .*head"):
        load_pretrained(imagenet[1], shapes, INTEGRAL)


def test_imagenet_weights_need_the_same_backbone(imagenet):
    cfg = model_config(backbone="resnet34", head="direct")
    with pytest.raises(ValueError, match=r"backbone: the checkpoint has 'resnet18', the model config has 'resnet34'"):
        load_pretrained(imagenet[1], {}, cfg)


def test_older_torchvision_conversion_with_a_saved_head_fills_only_the_backbone(tmp_path):
    """Conversions written before the source was recorded saved the head's random init too."""
    cfg = model_config(backbone="resnet18", head="direct")
    converted = jax.tree.map(lambda a: np.asarray(a) + 1.0, fresh(cfg, seed=7))
    out = C.save_converted(str(tmp_path / "old"), converted, C.ConversionReport(source="torchvision"), cfg)
    meta = json.loads(open(os.path.join(out, C.REPORT_FILE)).read())
    del meta["source"], meta["determined"]
    open(os.path.join(out, C.REPORT_FILE), "w").write(json.dumps(meta))
    init = fresh(cfg)
    got = load_pretrained(out, init, cfg)
    assert leaves_equal(got["params"]["head"], init["params"]["head"])
    assert leaves_equal(got["params"]["backbone"], converted["params"]["backbone"])


def test_eval_mode_refuses_an_imagenet_backbone_conversion(imagenet, tmp_path):
    """--mode=eval --checkpoint=<ImageNet conversion> would evaluate a random head: refused."""
    from configs import default
    from kinpose_jax.training import train

    _, out, _ = imagenet
    config = default.get_config()
    config.data.root = str(tmp_path / "no_data_here")
    config.model.backbone, config.data.patch_size = "resnet18", 64
    with pytest.raises(PretrainedMismatchError, match="only an ImageNet backbone"):
        train.evaluate_checkpoint(config, str(tmp_path / "work"), out)
