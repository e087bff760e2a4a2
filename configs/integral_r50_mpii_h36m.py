"""The original's experiment: integral regression, ResNet-50, MPII + Human3.6M, 256x256, 64 depth bins,
L1, Adam 1e-3 decayed x0.1 at epochs 270 and 290 of 300, 32 images per device."""

from configs import default


def get_config(preset: str = ""):
    """``preset``: "" or "accel" (configs/default.py PRESETS): ``--config=configs/integral_r50_mpii_h36m.py:accel``."""
    c = default.get_config()
    c.data.mpii_fraction = 0.5
    c.model.backbone = "resnet50"
    c.model.head = "integral"
    c.model.depth_bins = 64
    c.loss = "l1"
    c.num_epochs = 300
    c.optim.lr_decay_epochs = (270, 290)
    c.per_device_batch_size = 32
    return default.apply_preset(c, preset)
