"""kinpose-jax entry point.

    python main.py --config=configs/synthetic.py --workdir=workdirs/synthetic
    python main.py --config=configs/integral_r50_mpii_h36m.py --workdir=DIR --config.data.root=/data
    python main.py --config=configs/direct_r50_h36m.py --workdir=DIR --mode=eval --checkpoint=CONVERTED_DIR

Every config field (``--config.a.b=value``) is documented in configs/default.py. Configs are
locked ml_collections files: an unknown field, a value of the wrong type or an invalid value is
rejected in one line naming the field before JAX starts. Multi-host: launch one process per host
with ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (or set
JAX_COORDINATOR_ADDRESS / KINPOSE_DISTRIBUTED=1 for cluster auto-detection).
"""

import logging
import os
import re
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # makes `configs` importable

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues, sys_argv: list[str] | None = None) -> None:
    """Defines main.py's flags on ``flag_values`` (``sys_argv``: the command line whose
    ``--config.*`` overrides are accepted; default ``sys.argv``). UsageError for an override
    naming no field of the default config (ml_collections resolves them here)."""
    try:
        config_flags.DEFINE_config_file(
            "config", "configs/synthetic.py",
            "Experiment config file (get_config()); override any field with --config.a.b=value, every field "
            "is documented in configs/default.py.", flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
    except (AttributeError, KeyError) as err:
        raise UsageError(_override_problem(sys.argv if sys_argv is None else sys_argv, err)) from None
    flags.DEFINE_string("workdir", "workdirs/synthetic", "Where checkpoints, logs, TensorBoard events and PNGs go.",
                        flag_values=flag_values)
    flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes from workdir) or eval only.",
                      flag_values=flag_values)
    flags.DEFINE_string("checkpoint", "",
                        "--mode=eval: orbax dir from kinpose_jax.convert_torch (default: workdir's best).",
                        flag_values=flag_values)
    flags.DEFINE_string("coordinator_address", "", "Multi-host: address of process 0 (host:port).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", 0, "Multi-host: number of processes.", flag_values=flag_values)
    flags.DEFINE_integer("process_id", -1, "Multi-host: this process's id.", flag_values=flag_values)



class UsageError(Exception):
    """A bad command line or config, in one line."""


def _override_problem(argv: list[str], err: Exception) -> str:
    """The one-line message for a ``--config.*`` override that names no field of the config."""
    bad = re.findall(r"'([^']+)'", str(err))
    for arg in argv[1:]:
        m = re.match(r"--config\.([\w.]+)", arg)
        if m and (not bad or m.group(1) in bad or any(part in bad for part in m.group(1).split("."))):
            return f"{arg.split('=')[0]}: no such config field (every field is listed in configs/default.py)"
    return f"bad --config override: {err} (every field is listed in configs/default.py)"


try:
    define_flags(FLAGS)
    _DEFINE_ERROR = None
except UsageError as _err:  # reported by _flags_parser, in one line
    _DEFINE_ERROR = _err


def parse_flags(argv: list[str], flag_values: flags.FlagValues = FLAGS) -> list[str]:
    """Parses ``argv`` into ``flag_values``; :class:`UsageError` in one line naming the flag or
    config field at fault (instead of a traceback)."""
    try:
        rest = flag_values(argv)
        flag_values.config.to_dict()  # a config file that failed to load raises here
        return rest
    except flags.IllegalFlagValueError as err:
        hint = " (the fields and their values are documented in configs/default.py)" if "--config." in str(err) else ""
        raise UsageError(f"{err}{hint}") from None
    except flags.Error as err:
        if "config." in str(err):
            raise UsageError(_override_problem(argv, err)) from None
        raise UsageError(str(err)) from None
    except (AttributeError, KeyError) as err:
        raise UsageError(_override_problem(argv, err)) from None
    except OSError as err:  # the config file (ml_collections wraps its load error)
        detail = re.findall(r"\[Errno \d+\][^\n]*", str(err))
        raise UsageError(f"--config: cannot load the config file: {detail[0] if detail else err}") from None
    except Exception as err:  # noqa: BLE001 - e.g. an exception raised by the config file's get_config()
        raise UsageError(f"cannot parse the command line / config: {type(err).__name__}: {err}") from None


def _flags_parser(argv: list[str]) -> list[str]:
    try:
        if _DEFINE_ERROR is not None:
            raise _DEFINE_ERROR
        return parse_flags(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from kinpose_jax import config_checks  # no JAX: a bad config stops before JAX starts

    config = FLAGS.config
    try:
        config_checks.validate(config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax/grain INFO lines drown the progress bar
    from kinpose_jax.training import parallel, train

    try:
        parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
        if FLAGS.mode == "train":
            train.train_and_evaluate(config, FLAGS.workdir)
        else:
            train.evaluate_checkpoint(config, FLAGS.workdir, FLAGS.checkpoint)
    except train.EXPECTED_ERRORS as err:
        # Expected failures: one line instead of a traceback.
        print(f"error: {train.describe_error(err)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=_flags_parser)
