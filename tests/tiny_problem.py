"""A tiny model + fixed batch shared by the data-parallel tests (run in subprocesses)."""

import numpy as np


def tiny_problem(head: str = "integral"):
    """Returns (config, model, tx, schedule, batch) for a ResNet-18 at 64x64, global batch 8."""
    from configs import default
    from kinpose_jax import train
    from kinpose_jax.models import build_pose_net

    config = default.get_config()
    config.model.backbone = "resnet18"
    config.model.head = head
    config.model.depth_bins = 4
    config.model.deconv_filters = 16
    config.model.num_deconv_layers = 1
    config.model.kinematic_tree = "h36m18"
    config.data.patch_size = 64
    model = build_pose_net(config.model)
    schedule = train.learning_rate_schedule(config, 10)
    tx = train.make_optimizer(config, schedule)
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, size=(8, 64, 64, 3), dtype=np.uint8),
             "gains": rng.uniform(0.8, 1.2, size=(8, 3)).astype(np.float32),
             "joints": rng.uniform(-0.4, 0.4, size=(8, 18, 3)).astype(np.float32),
             "joints_vis": (rng.uniform(size=(8, 18, 3)) > 0.2).astype(np.float32)}
    return config, model, tx, schedule, batch
