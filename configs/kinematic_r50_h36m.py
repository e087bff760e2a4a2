"""The original's experiment: kinematic regression (this fork's head), ResNet-50, Human3.6M, 256x256:
the network predicts the original tree's joint angles + a scale; forward kinematics gives joints.
Same schedule as the direct-regression experiment."""

from configs import direct_r50_h36m


def get_config(preset: str = ""):
    """``preset``: "" or "accel" (configs/default.py PRESETS): ``--config=configs/kinematic_r50_h36m.py:accel``."""
    c = direct_r50_h36m.get_config(preset)
    c.model.head = "kinematic"
    c.model.kinematic_tree = "seed_h36m18"
    return c
