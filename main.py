"""kinpose-jax entry point.

    python main.py --config=configs/synthetic.py --workdir=workdirs/synthetic
    python main.py --config=configs/integral_r50_mpii_h36m.py --workdir=DIR --config.data.root=/data
    python main.py --config=configs/direct_r50_h36m.py --workdir=DIR --mode=eval --checkpoint=CONVERTED_DIR

Configs are locked ml_collections files: an unknown field or a value of the wrong type is
rejected before anything runs. Multi-host: launch one process per host with
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or set
JAX_COORDINATOR_ADDRESS / KINPOSE_DISTRIBUTED=1 for cluster auto-detection).
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # makes `configs` importable

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/synthetic.py", "Experiment config file (get_config()).",
                                lock_config=True)
flags.DEFINE_string("workdir", "workdirs/synthetic", "Where checkpoints, logs, TensorBoard events and PNGs go.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir) or eval only.")
flags.DEFINE_string("checkpoint", "", "--mode=eval: orbax dir from kinpose_jax.convert_torch (default: workdir's best).")
flags.DEFINE_string("coordinator_address", "", "Multi-host: address of process 0 (host:port).")
flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", -1, "Multi-host: this process's id.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/grain INFO lines drown the progress bar
    from kinpose_jax import config_checks, parallel

    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    try:
        config_checks.validate(config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    from kinpose_jax import train
    from kinpose_jax.data import DataError
    from kinpose_jax.pretrained import PretrainedMismatchError

    try:
        if FLAGS.mode == "train":
            train.train_and_evaluate(config, FLAGS.workdir)
        else:
            train.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint)
    except (train.NonFiniteLossError, train.CheckpointMismatchError, PretrainedMismatchError, DataError,
            FileNotFoundError) as err:
        # Expected failures: a one-paragraph message instead of a traceback.
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
