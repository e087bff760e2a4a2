"""Default configuration: every field the training driver reads, with its meaning.

Experiments import this and override fields (configs as code, as in big_vision / flax examples):

    python main.py --config=configs/default.py --workdir=/tmp/run --config.model.head=direct

Units: lengths in mm, images in pixels, angles in degrees unless stated.
"""

from collections.abc import Mapping

import ml_collections

from kinpose_jax.skeleton import BOX_MM
from kinpose_jax.synthetic import DEFAULTS as SYNTHETIC


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # PRNG seed for parameters, augmentation and data order (fixed for a run: resume checks it).

    # ---------------------------------------------------------------- data
    c.data = d = ml_collections.ConfigDict()
    d.root = "data"  # Folder holding hm36/ (and mpii/) in the original's layout (README "Prepare Human3.6M").
    d.records_dir = ""  # ArrayRecord shards; "" = <root>/records.
    d.train_set = "train"  # H36M cache set used for training (train, validmin, ...: docs/DESIGN.md#h36m-on-disk).
    d.eval_set = "validmin"  # H36M cache set used for evaluation.
    d.patch_size = 256  # Network input patch, pixels (square).
    d.record_layout = "full"  # Shards main.py converts: full (image files as they are) | crop (patch-sized JPEG
    #   crops for this patch_size and augmentation, far less to decode; README "which record layout").
    d.mpii_fraction = 0.0  # Fraction of each training batch drawn from MPII (0 = H36M only).
    d.synthetic = False  # Generate the synthetic Human3.6M set under `root` if it is missing.
    # Synthetic generator (its default set, kinpose_jax.synthetic.DEFAULTS: 16 x 40 frames of 320 px):
    d.synthetic_train_folders = SYNTHETIC["train_folders"]  # Synthetic generator: sequence folders for the train split.
    d.synthetic_frames_per_folder = SYNTHETIC["frames_per_folder"]  # Synthetic generator: frames per folder.
    d.synthetic_image_size = SYNTHETIC["image_size"]  # Synthetic generator: image width/height, pixels.
    d.worker_count = -1  # grain worker processes decoding/augmenting: -1 = auto (CPUs of this process - 1,
    #   at most 16 per local device; 0 on one CPU), 0 = in the main process, N = N processes. Exact resume needs
    #   the same count (auto: the same kind of machine).
    d.worker_buffer_size = 2  # Batches each grain worker prefetches.
    d.read_threads = 2  # Threads per decoding process (each worker, or the main one with worker_count=0);
    #   OpenCV itself runs single-threaded in each of them.
    d.augment = True  # Training augmentation, docs/DESIGN.md#augmentation (scale, rotation, flip, colour).
    d.scale_factor = 0.25  # Scale augmentation: s = 1 + scale_factor * clip(N(0,1), -1, 1).
    d.rotation_factor = 30.0  # Rotation augmentation, degrees: r = factor * clip(N(0,1), -2, 2).
    d.rotation_prob = 0.6  # Probability of applying the rotation.
    d.flip_prob = 0.5  # Probability of a horizontal flip.
    d.color_factor = 0.2  # Per-channel colour gain U(1 - f, 1 + f).

    # ---------------------------------------------------------------- model
    c.model = m = ml_collections.ConfigDict()
    m.backbone = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101 | resnet152 | resnet10 (smoke size).
    m.head = "integral"  # integral (3D heatmap + soft-argmax) | direct (joint regression) | kinematic.
    m.num_joints = 18  # Output joints (H36M-18 order, docs/DESIGN.md#joints).
    m.depth_bins = 64  # Integral head: depth bins D of the 3D heatmap.
    m.deconv_filters = 256  # Integral head: filters of each transposed convolution.
    m.num_deconv_layers = 3  # Integral head: number of stride-2 transposed convolutions.
    m.deconv_kernel = 4  # Integral head: kernel side of each transposed convolution (4, as the original).
    m.kinematic_tree = "seed_h36m18"  # Kinematic head: a preset (seed_h36m18 | h36m18 | h36m17 | mpii16) or
    #   "module.path:function" returning a KinematicTree that holds the 18 H36M joints by name (extra joints
    #   are predicted, not supervised), e.g. "kinpose_jax.kinematics.examples:h36m18_toes_spine".
    m.kinematic_view = "upright"  # Kinematic head: 'upright' (rest pose stands facing the camera) or
    #   'identity' (tree output axes used as camera axes, as the original does; needed to reuse the original's weights).
    m.box_mm = BOX_MM  # mm covered by one normalized unit (side of the 3D box the patch shows).
    m.dtype = "float32"  # Compute dtype: float32 | bfloat16 (mixed precision: bf16 convolutions; parameters,
    #   BN statistics, the integral head's heatmap logits, soft-argmax, FK and the loss stay float32).
    m.conv_impl = "auto"  # auto | cpu_fast | standard: 1x1 convs as 2-D matmuls, transposed convs as phase convs
    #   and a hand-written max-pool gradient (cpu_fast, much faster on XLA:CPU) or the native ops (standard,
    #   for GPU/TPU); auto = cpu_fast on the CPU backend, standard elsewhere. Same parameters either way.
    m.bn_sync = "global"  # BatchNorm batch statistics in training: global (over the global batch: ~56
    #   cross-device all-reduces per ResNet-50 step) | per_device (each device's slice, like the original's
    #   per-GPU BN; no BN all-reduces, statistics of per_device_batch_size images). per_device averages the
    #   running statistics over devices (pmean) after each step, so they stay replicated.
    m.pretrained = ""  # Orbax checkpoint from `python -m kinpose_jax.convert_torch` to start from ("" = random).

    # ---------------------------------------------------------------- optimisation
    c.loss = "l1"  # Weighted joint loss: l1 | l2 (docs/DESIGN.md#losses).
    c.num_epochs = 300  # Training length in epochs.
    c.steps_per_epoch = -1  # -1 = dataset size // global batch size.
    c.per_device_batch_size = 32  # Images per device; global batch = this * number of devices.
    c.optim = o = ml_collections.ConfigDict()
    o.learning_rate = 1e-3  # Adam base learning rate.
    o.lr_decay_epochs = (270, 290)  # Multiply the learning rate by `lr_decay_factor` at these epochs.
    o.lr_decay_factor = 0.1  # Factor applied at each of `lr_decay_epochs` (the original's 0.1), in (0, 1].
    o.weight_decay = 0.0  # Decoupled weight decay (AdamW) when > 0.
    o.grad_clip_norm = 0.0  # Clip gradients to this global norm when > 0.

    # ---------------------------------------------------------------- loop, evaluation, output
    c.log_every_steps = 50  # Training metrics to JSON lines / TensorBoard every N steps.
    c.checkpoint_every_steps = 1000  # Mid-epoch checkpoints every N steps (and at each epoch end).
    c.keep_checkpoints = 3  # Keep the latest N checkpoints (plus the best by validation loss).
    c.eval_every_epochs = 1  # Evaluate every N epochs (and after the last).
    c.max_eval_batches = -1  # Cap on evaluation batches (-1 = the whole evaluation set).
    c.flip_test = False  # Evaluation: average with the mirrored patch's prediction.
    c.num_vis_samples = 4  # Validation samples drawn into the PNG at each evaluation.
    c.save_predictions = False  # Evaluation: also write eval/predictions_<step>.npz (image index, folder,
    #   frame, subject/action/subaction/camera, predicted and true camera-space joints in mm, per-sample
    #   loss); `python -m kinpose_jax.evaluate_predictions FILE.npz` recomputes every table from it.
    c.progress_bar = True  # tqdm progress bar per epoch.
    return c


def with_defaults(saved: Mapping) -> ml_collections.ConfigDict:
    """:func:`get_config` with every field of ``saved`` set on it (nested mappings field by field).

    ``saved`` is a whole config (a workdir's ``config.json``) or a part of one, e.g.
    ``{"model": converted_checkpoint_model_fields}``; a field it lacks (a config written before the
    field existed, or a model config read off converted weights) gets its default here."""
    def merge(base: dict, new: Mapping) -> dict:
        for key, value in new.items():
            both = isinstance(base.get(key), dict) and isinstance(value, Mapping)
            base[key] = merge(base[key], value) if both else value
        return base

    return ml_collections.ConfigDict(merge(get_config().to_dict(), saved))


#: Presets selected by a config file argument, ``--config=configs/integral_r50_mpii_h36m.py:accel``
#: (the three R50 configs take it): ``accel`` = GPU/TPU mixed precision, bfloat16 compute with
#: float32 parameters, BN statistics, heatmap logits, soft-argmax, FK and loss (model.dtype), and
#: the native convolution forms (model.conv_impl = standard).
PRESETS = {"": {}, "accel": {"model.dtype": "bfloat16", "model.conv_impl": "standard"}}


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> ml_collections.ConfigDict:
    """Sets the fields of ``PRESETS[preset]`` on ``c`` (ValueError naming the choices otherwise)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown config preset {preset!r}; choose one of {sorted(PRESETS)}")
    for field, value in PRESETS[preset].items():
        group, name = field.split(".")
        c[group][name] = value
    return c
