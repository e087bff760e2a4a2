"""Recomputes every evaluation number from saved predictions alone.

    python -m kinpose_jax.evaluate_predictions workdirs/synthetic/eval/predictions_00000600.npz

reads an ``.npz`` written by evaluation with ``config.save_predictions=True`` (camera-space
joints in mm, per-sample loss and the image's folder / frame), prints the summary and the
per-action / per-subject / per-camera tables and writes ``<out>.json`` and ``<out>.md`` in the
format of ``eval/eval_<step>.json`` / ``.md`` (default ``<out>``: the file's path without
``.npz`` plus ``_eval``). No model, data or accelerator needed.
"""

from __future__ import annotations

import argparse
import sys

from kinpose_jax.training import evaluation, reporting


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m kinpose_jax.evaluate_predictions",
        description="Recompute Protocol #1/#2, the original's errors, PCK/AUC and the per-action, per-subject and "
                    "per-camera tables from a predictions .npz written by evaluation (config.save_predictions=True).")
    parser.add_argument("predictions", help="eval/predictions_<step>.npz from a workdir")
    parser.add_argument("--out", default="",
                        help="output path without extension: writes OUT.json and OUT.md "
                             "(default: PREDICTIONS without .npz, plus _eval)")
    args = parser.parse_args(argv)
    preds = evaluation.load_predictions(args.predictions)
    acc = evaluation.accumulate_predictions(preds)
    results = acc.result()
    out = args.out or (args.predictions[:-4] if args.predictions.endswith(".npz") else args.predictions) + "_eval"
    title = f"Evaluation of {args.predictions} ({int(results['num_samples'])} samples)"
    reporting.write_eval_report(out, results, acc.tables(), title)
    print(f"wrote {out}.json and {out}.md")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
