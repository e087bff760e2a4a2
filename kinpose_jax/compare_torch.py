"""Run an original PyTorch checkpoint and its JAX conversion on the same evaluation batches.

    python -m kinpose_jax.compare_torch --torch-checkpoint SEED.pth.tar --config configs/synthetic.py \\
        --data data/synthetic

The original network runs in PyTorch (:mod:`kinpose_jax.torch_reference`, the original's module
structure, loaded from the checkpoint as it is); the same state_dict is converted in memory
(:func:`kinpose_jax.convert_torch.convert_state_dict`) into the JAX model. Both go through the same
evaluation code (:func:`kinpose_jax.training.evaluation.make_predict_fn`: flip test, decoding to camera mm;
:class:`~kinpose_jax.training.evaluation.ErrorAccumulator`) on every batch. Reported:

* the distance between the two predictions per joint, camera space mm, over all joints of all
  valid samples: max and mean;
* both evaluation tables (:func:`kinpose_jax.metrics.h36m_errors`) side by side;
* images/s of each: images over the time of the prediction calls (network, flip test, decoding
  to patch pixels), the first batch left out as warm-up (JAX compiles on it) unless it is the
  only one.

The architecture comes from the checkpoint (backbone, head, depth bins, deconv layers, as
:func:`~kinpose_jax.convert_torch.infer_model_config` reads them); the config gives the data,
patch size, flip test, ``box_mm``, ``num_joints`` and the JAX compute dtype. An original kinematic head
is compared with ``kinematic_tree='seed_h36m18'`` and ``kinematic_view='identity'`` (the original's
output axes). Needs torch (``pip install .[torch]``).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import sys
import time
from typing import Any

import numpy as np

def _table_rows() -> tuple[str, ...]:
    """Rows of the side-by-side table: the evaluation table's entries, then the validation loss."""
    from kinpose_jax import metrics

    return (*metrics.h36m_error_names(), "val_loss")


def load_config(path: str):
    """``get_config()`` of a config file (e.g. ``configs/synthetic.py``); the folder above the
    file's folder goes on ``sys.path`` so it can import the ``configs`` package."""
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    root = os.path.dirname(os.path.dirname(path))
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_kinpose_compare_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} has no get_config()")
    return module.get_config()


def seed_model_config(state_dict: dict, model_config: Any) -> dict:
    """The JAX model config for a seed state_dict: the architecture read off the tensors, the
    remaining fields (num_joints, box_mm, dtype) from ``model_config``."""
    from kinpose_jax.convert_torch import SEED_LAYOUT_OUTPUTS, detect_source, infer_model_config
    from kinpose_jax.models import model_field

    if detect_source(state_dict) != "seed":
        raise ValueError("the checkpoint is a plain torchvision ResNet (no pose head): there is nothing to compare")
    overrides = {k: model_field(model_config, k) for k in ("num_joints", "box_mm", "dtype")}
    cfg = infer_model_config(state_dict, overrides)
    if "head" not in cfg:
        raise ValueError("cannot tell the head from the checkpoint: it has neither an integral head's final conv "
                         "nor a head.fc layer")
    if cfg["head"] == "kinematic":
        n = int(np.shape(state_dict["head.fc.weight"])[0])
        if n not in SEED_LAYOUT_OUTPUTS:
            raise ValueError(f"head.fc has {n} outputs; an original kinematic layer has one of {SEED_LAYOUT_OUTPUTS}")
        cfg.update(kinematic_tree="seed_h36m18", kinematic_view="identity")
    return cfg


def comparison_tables(torch_acc, jax_acc) -> dict[str, tuple[dict, dict]]:
    """The tables to show side by side, ``{name: (PyTorch results, JAX results)}``: the overall
    table (every evaluation metric) and one per Human3.6M action (Protocols #1 and #2)."""
    out = {"overall": (torch_acc.result(), jax_acc.result())}
    torch_actions, jax_actions = torch_acc.tables()["per_action"], jax_acc.tables()["per_action"]
    for action, row in torch_actions.items():
        out[f"action {action}"] = (row, jax_actions[action])
    return out


def format_side_by_side(name: str, torch_results: dict, jax_results: dict) -> str:
    """One table: a row per metric (mm; val_loss in normalized units), PyTorch | JAX | JAX - PyTorch."""
    n = int(torch_results["num_samples"])
    lines = [f"{name} ({n} samples)", f"  {'metric':<14}{'PyTorch':>12}{'JAX':>12}{'JAX - PyTorch':>16}"]
    for row in (r for r in _table_rows() if r in torch_results):
        t, j = torch_results[row], jax_results[row]
        lines.append(f"  {row:<14}{t:12.4f}{j:12.4f}{j - t:16.3e}")
    return "\n".join(lines)


def compare(config, torch_checkpoint: str, allow_pickle: bool = False, log=print) -> dict:
    """Runs both networks on ``config``'s evaluation batches (at most ``config.max_eval_batches``
    when >= 0) and returns ``{'model', 'num_samples', 'joint_difference_mm': {'max', 'mean'},
    'tables': {name: {'pytorch', 'jax'}}, 'images_per_s': {'pytorch', 'jax'}, 'conversion'}``."""
    import jax

    from kinpose_jax import convert_torch, torch_reference
    from kinpose_jax.training import evaluation, parallel, train
    from kinpose_jax.data import setup as input_pipeline
    from kinpose_jax.models import build_pose_net, init_variables

    if jax.process_count() > 1:
        raise RuntimeError("compare_torch runs in a single process")
    sd = convert_torch.load_torch_state_dict(torch_checkpoint, allow_pickle=allow_pickle)
    model_cfg = seed_model_config(sd, config.model)
    log(f"model (from the checkpoint): {json.dumps(model_cfg)}")
    for key, value in model_cfg.items():
        config.model[key] = value
    patch = int(config.data.patch_size)

    net = torch_reference.load_network(sd, config.model)
    model = build_pose_net(config.model)
    init = functools.partial(init_variables, model, jax.random.key(0), patch)  # called only if a leaf is missing
    variables, report = convert_torch.convert_state_dict(sd, model, init)
    if report.missing or report.unexpected:
        raise ValueError(f"{torch_checkpoint} does not convert completely:\n{report.summary()}")

    mesh = parallel.make_mesh()
    global_batch = int(config.per_device_batch_size) * jax.device_count()
    variables = jax.device_put(variables, parallel.replicated(mesh))
    jax_predict = train.make_predict(config, model, mesh)
    torch_predict = evaluation.make_predict_fn(torch_reference.TorchPoseModel(net), patch, config.flip_test,
                                               config.loss)
    data = input_pipeline.create(config, global_batch, train=False)

    accs = {"pytorch": evaluation.ErrorAccumulator(), "jax": evaluation.ErrorAccumulator()}
    seconds = {"pytorch": [], "jax": []}
    images, diffs = [], []
    for batch in data.eval_batches(config.max_eval_batches):
        inputs = {k: batch[k] for k in ("image", "joints", "joints_vis")}
        t0 = time.perf_counter()
        out = jax.block_until_ready(jax_predict(variables, parallel.global_batch(mesh, inputs)))
        t1 = time.perf_counter()
        torch_out = torch_predict(None, inputs)
        t2 = time.perf_counter()
        seconds["jax"].append(t1 - t0)
        seconds["pytorch"].append(t2 - t1)
        images.append(len(batch["image"]))
        pred = {}
        for side, (px, loss) in (("jax", parallel.local_rows(mesh, out)), ("pytorch", torch_out)):
            pred[side], _ = accs[side].add(np.asarray(px), np.asarray(loss), batch, patch, config.model.box_mm)
        valid = np.asarray(batch["valid"]).astype(bool)
        diffs.append(np.linalg.norm(pred["jax"][valid] - pred["pytorch"][valid], axis=-1).ravel())
    data.close()
    if not images:
        raise ValueError("the evaluation produced no batches")
    diffs = np.concatenate(diffs)
    timed = slice(1, None) if len(images) > 1 else slice(None)
    speed = {side: float(np.sum(images[timed]) / max(np.sum(s[timed]), 1e-12)) for side, s in seconds.items()}
    tables = comparison_tables(accs["pytorch"], accs["jax"])
    return {
        "model": model_cfg,
        "num_samples": int(accs["jax"].count),
        "joint_difference_mm": {"max": float(diffs.max()), "mean": float(diffs.mean())},
        "tables": {name: {"pytorch": t, "jax": j} for name, (t, j) in tables.items()},
        "images_per_s": speed,
        "conversion": report.summary(),
    }


def format_report(result: dict) -> str:
    diff, speed = result["joint_difference_mm"], result["images_per_s"]
    lines = [f"Prediction difference JAX vs PyTorch over {result['num_samples']} samples (camera space, per joint): "
             f"max {diff['max']:.3e} mm, mean {diff['mean']:.3e} mm"]
    for name, t in result["tables"].items():
        lines.append(format_side_by_side(name, t["pytorch"], t["jax"]))
    lines.append(f"images/s: PyTorch {speed['pytorch']:.1f}, JAX {speed['jax']:.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m kinpose_jax.compare_torch",
        description="Run an original PyTorch checkpoint (in PyTorch, the original's architecture) and its JAX conversion on "
                    "the same evaluation batches; report the difference of their predictions (mm), both metric "
                    "tables side by side, and images/s of each. The architecture is read from the checkpoint.")
    p.add_argument("--torch-checkpoint", required=True,
                   help="checkpoint of the original (.pth.tar: a dict whose 'network' entry is the state_dict, 'module.' "
                        "prefixes allowed) or a bare state_dict of the whole original network")
    p.add_argument("--config", default="configs/synthetic.py",
                   help="config file with get_config() giving data, patch size, flip test, box_mm, num_joints, "
                        "JAX dtype and batch size (default: configs/synthetic.py)")
    p.add_argument("--data", help="data root (config.data.root): the original-layout hm36/ folder's parent; with a "
                                  "synthetic config the synthetic set is generated there if missing")
    p.add_argument("--eval-set", help="H36M set to evaluate on (config.data.eval_set, e.g. validmin)")
    p.add_argument("--patch-size", type=int, help="network input size, px (config.data.patch_size)")
    p.add_argument("--batch-size", type=int, help="evaluation batch size per device (config.per_device_batch_size)")
    p.add_argument("--max-batches", type=int, help="evaluate at most this many batches (config.max_eval_batches; "
                                                   "-1 = the whole set)")
    p.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None,
                   help="also run the mirrored patches and average (config.flip_test)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="torch.load(weights_only=False), for trusted checkpoints holding other pickled objects")
    p.add_argument("--json", help="also write the results to this JSON file")
    a = p.parse_args(argv)

    from kinpose_jax import config_checks

    config = load_config(a.config)
    for value, section, key in ((a.data, "data", "root"), (a.eval_set, "data", "eval_set"),
                                (a.patch_size, "data", "patch_size"), (a.batch_size, None, "per_device_batch_size"),
                                (a.max_batches, None, "max_eval_batches"), (a.flip_test, None, "flip_test")):
        if value is not None:
            (config[section] if section else config)[key] = value
    config.progress_bar = False
    config_checks.validate(config)
    result = compare(config, a.torch_checkpoint, allow_pickle=a.allow_pickle)
    print(format_report(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
