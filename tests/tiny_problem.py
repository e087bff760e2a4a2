"""Tiny problems shared by the tests: a model + fixed batch (data-parallel step tests), the
tiny synthetic-data training config (in-process training runs), and configs/default.py's model,
pipeline and augmentation configs with overrides (the library has no defaults of its own)."""

import numpy as np


def tiny_problem(head: str = "integral", image_size: int = 64):
    """Returns (config, model, tx, schedule, batch) for a ResNet-10 at ``image_size`` px square,
    global batch 8."""
    from configs import default
    from kinpose_jax.training import train
    from kinpose_jax.models import build_pose_net

    config = default.get_config()
    config.model.backbone = "resnet10"
    config.model.head = head
    config.model.depth_bins = 4
    config.model.deconv_filters = 16
    config.model.num_deconv_layers = 1
    config.model.kinematic_tree = "h36m18"
    config.data.patch_size = image_size
    model = build_pose_net(config.model)
    schedule = train.learning_rate_schedule(config, 10)
    tx = train.make_optimizer(config, schedule)
    return config, model, tx, schedule, tiny_batch(image_size)


def tiny_batch(image_size: int = 64, seed: int = 0) -> dict:
    """A fixed training batch of 8 (numpy): uint8 images ``image_size`` px square, pixel gains,
    normalized joints [8, 18, 3] and their visibility."""
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, size=(8, image_size, image_size, 3), dtype=np.uint8),
            "gains": rng.uniform(0.8, 1.2, size=(8, 3)).astype(np.float32),
            "joints": rng.uniform(-0.4, 0.4, size=(8, 18, 3)).astype(np.float32),
            "joints_vis": (rng.uniform(size=(8, 18, 3)) > 0.2).astype(np.float32)}


def short_resnet50(monkeypatch, *torch_specs: dict) -> None:
    """ResNet-50's bottleneck blocks in a short trunk, for the test (``monkeypatch``): 2 blocks in
    the first stage (a projection and an identity shortcut), 1 in each later stage. Every block
    form, fast path, tensor name and shape form of ResNet-50 runs at a third of its compile time.
    Set in kinpose_jax's ``RESNET_SPECS`` and in each of ``torch_specs`` (a torch reference's depth
    -> spec table, so that both build the same network; the converter infers the depth from the
    blocks per stage)."""
    from kinpose_jax.models import resnet

    short = ("bottleneck", (2, 1, 1, 1))
    for table in (resnet.RESNET_SPECS, *torch_specs):
        monkeypatch.setitem(table, 50, short)


def first_step_gradients(opt_state) -> dict:
    """The gradients (a params-like tree of numpy arrays) that the first training step fed to
    ``train.make_optimizer``'s Adam, read from ``opt_state`` after that step: Adam's first moment
    after one step from zero is ``(1 - b1) * grads``, ``b1 = 0.9`` (optax.adam's default); valid for
    configs/default.py's optimizer (no gradient clipping, no weight decay)."""
    import jax
    import optax

    mu = jax.device_get(optax.tree.get(opt_state, "mu"))
    return jax.tree.map(lambda m: np.asarray(m) / np.float32(1 - 0.9), mu)


#: ``--config.*`` overrides of configs/synthetic.py for a tiny run (main.py subprocesses take these).
#: Runs differ in length (num_epochs) and cadence but share one training program: the model, the
#: global batch (2 per device) and the learning-rate schedule (lr and its step boundaries, which
#: steps_per_epoch sets) are constants of the compiled step, so runs that keep them load the step,
#: the model init and the evaluation step from the suite's compilation cache instead of compiling.
#: The input pipeline runs in the training process (no worker processes to start: 3-4 s a run);
#: tests of worker processes ask for them (the SIGKILL resume test, tests/test_device_input.py).
TINY = {
    "data.synthetic": True, "data.synthetic_train_folders": 2, "data.synthetic_frames_per_folder": 16,
    "data.synthetic_image_size": 160, "data.patch_size": 32, "model.backbone": "resnet10", "model.depth_bins": 8,
    "model.deconv_filters": 32, "model.num_deconv_layers": 1, "max_eval_batches": 4, "num_vis_samples": 2,
    "progress_bar": False, "per_device_batch_size": 2, "steps_per_epoch": 2, "optim.lr_decay_epochs": (14, 15),
    "data.worker_count": 0,
}


#: The example tree extending h36m18 (toes, spine joints) that the tiny kinematic runs use.
EXTENDED_TREE = "kinpose_jax.kinematics.examples:h36m18_toes_spine"


def tiny_kinematic_config(data_root: str, **overrides):
    """:func:`tiny_config` with the kinematic head on :data:`EXTENDED_TREE`: the model of the
    extended-tree run (tests/test_extended_tree.py) and the 1-vs-4-device kinematic step."""
    return tiny_config(data_root, model__head="kinematic", model__kinematic_tree=EXTENDED_TREE, **overrides)


def tiny_config(data_root: str, **overrides):
    """configs/synthetic.py with :data:`TINY` and ``data.root = data_root``, then ``overrides``
    (keyword names with ``__`` for ``.``, e.g. ``optim__learning_rate=1e-3``)."""
    from configs import synthetic

    config = synthetic.get_config()
    config.data.root = data_root
    for key, value in _with_tiny(overrides).items():
        set_field(config, key, value)
    return config


def set_field(config, dotted: str, value) -> None:
    """``config.<dotted> = value`` for a dotted field name such as ``"optim.learning_rate"``."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        config = config[name]
    config[leaf] = value


def tiny_args(**overrides) -> list[str]:
    """The same as ``--config.*`` arguments for main.py."""
    return [f"--config.{k}={v}" for k, v in _with_tiny(overrides).items()]


def _with_tiny(overrides: dict) -> dict:
    """:data:`TINY` with ``overrides`` (``__`` for ``.`` in their names) winning, by dotted field."""
    return {**TINY, **{k.replace("__", "."): v for k, v in overrides.items()}}


def random_variables(shapes, seed: int = 0) -> dict:
    """Numpy values for a model's ``{'params', 'batch_stats'}`` ShapeDtypeStructs (from
    ``jax.eval_shape``), for comparisons that need plausible weights but not the model's own
    initializers (which compile a program per model): kernels N(0, 2 / fan_in), BN scales near 1,
    biases near 0, running means 0 and variances 1."""
    import jax

    rng = np.random.default_rng(seed)

    def value(path, s):
        name = jax.tree_util.keystr(path[-1:], simple=True)
        if name == "kernel":
            v = rng.normal(size=s.shape) * np.sqrt(2.0 / max(1, int(np.prod(s.shape[:-1]))))
        elif name in ("mean", "var"):
            v = np.full(s.shape, 0.0 if name == "mean" else 1.0)
        else:  # BN scale, biases
            v = (1.0 if name == "scale" else 0.0) + 0.1 * rng.normal(size=s.shape)
        return v.astype(s.dtype)

    return jax.tree_util.tree_map_with_path(value, shapes)


def tiny_model_config(**overrides) -> dict:
    """The tiny runs' ``config.model`` (a dict; :data:`TINY`'s model) with ``overrides``: a model
    built from it shares the tiny runs' compiled initializer (at their 32 px patches)."""
    return dict(tiny_config("unused").model.to_dict(), **overrides)


def model_config(**overrides) -> dict:
    """configs/default.py's ``config.model`` (a dict) with ``overrides``."""
    from configs import default

    return dict(default.get_config().model.to_dict(), **overrides)


def augment_config(**overrides):
    """:class:`~kinpose_jax.data.augment.AugmentConfig` of configs/default.py, ``overrides`` winning."""
    from configs import default
    from kinpose_jax.data import augment

    return augment.AugmentConfig.from_config(default.get_config().data, **overrides)


def pipeline_config(records_dir: str, global_batch_size: int, **overrides):
    """:class:`~kinpose_jax.data.pipeline.PipelineConfig` of configs/default.py reading
    ``records_dir``, in this process (``worker_count=0``) unless ``overrides`` (PipelineConfig
    fields) say otherwise."""
    from configs import default
    from kinpose_jax.data import pipeline

    config = default.get_config()
    config.data.records_dir = records_dir
    return pipeline.PipelineConfig.from_config(config, global_batch_size, **{"worker_count": 0, **overrides})


def crop_layout(**overrides) -> dict:
    """:func:`~kinpose_jax.data.convert.crop_layout` for configs/default.py's patch size and
    augmentation, ``overrides`` (its arguments) winning."""
    from configs import default
    from kinpose_jax.data import convert

    return convert.crop_layout_for(default.get_config().data, **overrides)
