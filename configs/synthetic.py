"""The embedded default: a few minutes of CPU training on the synthetic Human3.6M set.

Generates the synthetic set (original layout, docs/DESIGN.md#h36m-on-disk) under ./data if missing, converts it to
ArrayRecord shards, trains a small ResNet-18 integral model at 128x128, evaluates MPJPE and
checkpoints. `--config.model.head=direct|kinematic` compares the other heads.
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.root = "data/synthetic"
    c.data.synthetic = True
    c.data.patch_size = 128
    c.model.backbone = "resnet18"
    c.model.depth_bins = 16
    c.model.deconv_filters = 64
    c.model.num_deconv_layers = 2
    c.model.kinematic_tree = "h36m18"
    c.num_epochs = 15
    c.per_device_batch_size = 16
    c.optim.learning_rate = 1e-3
    c.optim.lr_decay_epochs = (11, 14)
    c.log_every_steps = 10
    c.checkpoint_every_steps = 100
    c.eval_every_epochs = 5
    return c
