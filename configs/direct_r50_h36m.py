"""The original's experiment: direct joint regression, ResNet-50, Human3.6M, L1, Adam 1e-3, 140 epochs
with x0.1 steps at epochs 90 and 120, 32 images per device."""

from configs import default


def get_config(preset: str = ""):
    """``preset``: "" or "accel" (configs/default.py PRESETS): ``--config=configs/direct_r50_h36m.py:accel``."""
    c = default.get_config()
    c.model.backbone = "resnet50"
    c.model.head = "direct"
    c.loss = "l1"
    c.num_epochs = 140
    c.optim.lr_decay_epochs = (90, 120)
    c.per_device_batch_size = 32
    return default.apply_preset(c, preset)
