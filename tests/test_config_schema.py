"""One config schema: configs/default.py defines every field and its default; the pipeline,
augmentation and model configs are derived from it and have no defaults of their own; a config
or conversion written before a field existed is completed from it."""

from __future__ import annotations

import dataclasses
import json

import jax
import numpy as np
import pytest

from configs import default
from kinpose_jax import config_checks, registry
from kinpose_jax.data import augment, pipeline
from kinpose_jax.models import MODEL_FIELDS, PoseNet, build_pose_net, variable_shapes
from tests.tiny_problem import model_config


def test_library_configs_have_no_defaults_of_their_own():
    def defaulted(cls):
        return [f.name for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]

    assert defaulted(augment.AugmentConfig) == []
    assert defaulted(pipeline.PipelineConfig) == ["process_index", "process_count"]  # runtime, not config fields
    assert defaulted(PoseNet) == ["bn_axis_name", "parent", "name"]  # not config fields (flax adds parent, name)


def test_pipeline_config_carries_every_config_field_it_reads():
    """Each config field set to a value unlike its default arrives in PipelineConfig (so none is
    taken from anywhere else)."""
    c = default.get_config()
    d = c.data
    d.records_dir, d.train_set, d.eval_set, d.mpii_fraction, d.patch_size = "/r", "ts", "es", 0.125, 96
    d.augment, d.worker_count, d.worker_buffer_size, d.read_threads = False, 3, 5, 7
    d.scale_factor, d.rotation_factor, d.rotation_prob, d.flip_prob, d.color_factor = 0.1, 11.0, 0.3, 0.7, 0.05
    c.seed, c.model.box_mm = 17, 1234.5
    cfg = pipeline.PipelineConfig.from_config(c, 12)
    assert cfg == pipeline.PipelineConfig(
        records_dir="/r", train_set="ts", eval_set="es", mpii_fraction=0.125, patch_size=96, global_batch_size=12,
        seed=17, augment=False, aug=augment.AugmentConfig(scale_factor=0.1, rotation_factor=11.0, rotation_prob=0.3,
                                                          flip_prob=0.7, color_factor=0.05),
        worker_count=3, worker_buffer_size=5, read_threads=7, box_mm=1234.5)
    d.records_dir, d.root = "", "/data"
    assert pipeline.PipelineConfig.from_config(c, 12).records_dir == "/data/records"


def test_every_augment_field_is_a_data_field_and_every_model_field_a_model_field():
    c = default.get_config()
    assert {f.name for f in dataclasses.fields(augment.AugmentConfig)} <= set(c.data)
    assert set(MODEL_FIELDS) <= set(c.model)
    for head, fields in registry.HEAD_FIELDS.items():
        assert set(fields) <= set(MODEL_FIELDS), head


@pytest.mark.parametrize("field", MODEL_FIELDS)
def test_build_pose_net_names_a_missing_model_field(field):
    cfg = model_config()
    del cfg[field]
    with pytest.raises(ValueError, match=rf"config\.model\.{field} is missing"):
        build_pose_net(cfg)


def test_build_pose_net_reads_every_field_from_the_config():
    """Every PoseNet field comes from config.model, set here unlike its default."""
    model = build_pose_net(model_config(backbone="resnet34", head="kinematic", num_joints=18, depth_bins=5,
                                        deconv_filters=7, num_deconv_layers=2, deconv_kernel=3,
                                        kinematic_tree="h36m18", kinematic_view="identity", box_mm=1500.0,
                                        dtype="bfloat16", conv_impl="standard"))
    assert (model.backbone_depth, model.head, model.num_joints, model.depth_bins, model.deconv_filters,
            model.num_deconv_layers, model.deconv_kernel, model.kinematic_view, model.box_mm, model.dtype,
            model.conv_impl) == (34, "kinematic", 18, 5, 7, 2, 3, "identity", 1500.0, jax.numpy.bfloat16, "standard")
    assert model.tree.num_joints == 18


@pytest.mark.parametrize("field,choices", [("model.head", registry.HEADS), ("model.backbone", registry.BACKBONES),
                                           ("model.kinematic_view", registry.KINEMATIC_VIEWS),
                                           ("model.dtype", registry.DTYPES), ("model.conv_impl", registry.CONV_IMPLS),
                                           ("model.bn_sync", registry.BN_SYNC),
                                           ("data.record_layout", registry.RECORD_LAYOUTS)])
def test_the_checks_accept_exactly_the_registry_choices(field, choices):
    group, name = field.split(".")
    for value in choices:
        c = default.get_config()
        c[group][name] = value
        config_checks.validate(c)
    c[group][name] = "none_of_them"
    with pytest.raises(ValueError, match=rf"config\.{field} = 'none_of_them' is invalid"):
        config_checks.validate(c)


def test_converter_head_and_view_choices_are_the_registry_ones(capsys):
    pytest.importorskip("torch")
    from kinpose_jax import convert_torch

    with pytest.raises(SystemExit):
        convert_torch.main(["--help"])
    out = capsys.readouterr().out
    assert "{" + ",".join(registry.HEADS) + "}" in out and "{" + ",".join(registry.KINEMATIC_VIEWS) + "}" in out


def test_with_defaults_fills_only_the_fields_a_saved_config_lacks():
    saved = json.loads(default.get_config().to_json())
    for group, field in (("model", "kinematic_view"), ("model", "conv_impl"), ("model", "bn_sync"),
                         ("model", "deconv_kernel"), ("data", "record_layout"), ("data", "read_threads"),
                         (None, "save_predictions")):
        del (saved[group] if group else saved)[field]
    saved["model"]["head"], saved["data"]["patch_size"], saved["seed"] = "direct", 64, 3
    c = default.with_defaults(saved)
    assert (c.model.head, c.data.patch_size, c.seed) == ("direct", 64, 3)
    fresh = default.get_config()
    assert (c.model.kinematic_view, c.model.conv_impl, c.model.bn_sync, c.model.deconv_kernel, c.data.record_layout,
            c.data.read_threads, c.save_predictions) == (
        fresh.model.kinematic_view, fresh.model.conv_impl, fresh.model.bn_sync, fresh.model.deconv_kernel,
        fresh.data.record_layout, fresh.data.read_threads, fresh.save_predictions)
    config_checks.validate(c)


def test_a_conversion_recording_only_the_fields_it_fixes_loads(tmp_path):
    """kinpose_conversion.json holds the fields the weights fix; predict completes the rest from
    configs/default.py and gets the converted weights back."""
    from kinpose_jax import predict
    from kinpose_jax.weights_format import ConversionReport, save_converted

    fixed = dict(backbone="resnet18", head="direct", num_joints=18)
    model = build_pose_net(model_config(**fixed))
    rng = np.random.default_rng(3)  # values of the model's shapes (no initializer compiled)
    variables = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), variable_shapes(model, 32))
    save_converted(str(tmp_path / "conv"), variables, ConversionReport(source="seed"), fixed)
    loaded = predict.load_model(str(tmp_path / "conv"), patch_size=32)
    assert loaded.model == model
    for a, b in zip(jax.tree.leaves(loaded.variables), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
