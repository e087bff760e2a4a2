"""What a researcher sees: JSON lines + TensorBoard scalars, evaluation tables, and PNGs
(validation samples with 2D joints and 3D skeletons; the learning curve). Host-side only.
Every path may be remote (``gs://...``, :mod:`kinpose_jax.storage`)."""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Iterable, Mapping

import numpy as np

from kinpose_jax import skeleton, storage


class MetricWriter:
    """Appends ``{"step": s, "kind": k, ...}`` lines to ``<workdir>/metrics.jsonl`` and writes the
    same scalars as TensorBoard events under ``<workdir>/tensorboard`` (process 0 only). Object
    stores cannot append: there the file is read and rewritten at each write. A remote workdir
    gets events only where tensorboardX writes that scheme (``gs://``: with google-cloud-storage
    installed); otherwise a warning says none are written."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if enabled:
            storage.path(workdir).mkdir(parents=True, exist_ok=True)
            SummaryWriter = _summary_writer_class()
            try:
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError as err:  # e.g. gs:// without google-cloud-storage
                logging.getLogger("kinpose_jax").warning("no TensorBoard events in %s (metrics.jsonl has the "
                                                         "scalars): %s", workdir, err)

    def write(self, step: int, kind: str, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "kind": kind, **{k: float(v) for k, v in scalars.items()}}
        line = json.dumps(row) + "\n"
        if storage.is_local(self.path):
            with open(self.path, "a") as f:
                f.write(line)
        else:
            path = storage.path(self.path)
            path.write_text((path.read_text() if path.exists() else "") + line)
        if self._tb is None:
            return
        for k, v in scalars.items():
            self._tb.add_scalar(f"{kind}/{k}", float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch when it
    is installed, only to accept torch tensors (2-3 s of a run's start-up; the writer gets floats).
    While tensorboardX is first imported, ``import torch`` fails as if torch were absent; any later
    import of torch is unaffected."""
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def read_metrics(path: str) -> list[dict]:
    """All rows of a metrics.jsonl file (later rows of a step replace earlier ones after a resume).

    A line that is not a JSON object with an integer ``step`` and a string ``kind`` (a torn
    write, a stray edit) is skipped with one warning naming the file and its line numbers."""
    if not storage.path(path).exists():
        return []
    rows, bad = [], []
    text = storage.path(path).read_bytes().decode("utf-8", errors="replace")
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("kind"), str):
            rows.append(row)
        else:
            bad.append(lineno)
    if bad:
        logging.getLogger("kinpose_jax").warning("%s: skipped %d unreadable line(s): %s", path, len(bad),
                                                 ", ".join(map(str, bad[:10])) + (" ..." if len(bad) > 10 else ""))
    return rows


def format_table(results: Mapping[str, float], title: str) -> str:
    """The original's per-group table plus the summary metrics, as aligned text (mm; PCK/AUC in %)."""
    groups = list(skeleton.H36M_EVAL_GROUPS)
    lines = [title, "  " + " ".join(f"{g:>8}" for g in groups), "  " + " ".join(f"{results[g]:8.1f}" for g in groups)]
    lines.append("  Protocol #1 MPJPE {mpjpe:.1f} mm | Protocol #2 PA-MPJPE {pa_mpjpe:.1f} mm | "
                 "original's aligned (rigid, 18 joints) {seed_aligned:.1f} mm | original's bone {bone:.1f} mm | "
                 "x/y/z {x:.1f}/{y:.1f}/{z:.1f} mm".format(**results))
    lines.append("  PCK3D@150mm {pck_150mm:.1f}% | AUC (0-150 mm) {auc:.1f}% | "
                 "original's PCK@5mm {seed_pck_5mm:.1f}% @105mm {seed_pck_105mm:.1f}%".format(**results))
    return "\n".join(lines)


def format_group_tables(tables: Mapping[str, Mapping], title: str = "") -> str:
    """Markdown tables of :meth:`~kinpose_jax.training.evaluation.ErrorAccumulator.tables`: one row per
    action (then the overall rows), one per subject, one per camera; Protocol #1 / #2 in mm."""
    head = ["| {} | Protocol #1 MPJPE (mm) | Protocol #2 PA-MPJPE (mm) | frames |", "| --- | ---: | ---: | ---: |"]
    row = "| {} | {:.1f} | {:.1f} | {} |"
    out = [f"### {title}", ""] if title else []
    for grouping in ("action", "subject", "camera"):
        out += [head[0].format(grouping), head[1]]
        for name, r in tables[f"per_{grouping}"].items():
            out.append(row.format(name, r["mpjpe"], r["pa_mpjpe"], r["num_samples"]))
        if grouping == "action":
            frames, actions = tables["overall"]["mean_over_frames"], tables["overall"]["mean_over_actions"]
            out.append(row.format("**mean over actions**", actions["mpjpe"], actions["pa_mpjpe"],
                                  f"{actions['num_actions']} actions"))
            out.append(row.format("**mean over frames**", frames["mpjpe"], frames["pa_mpjpe"], frames["num_samples"]))
        out.append("")
    out.append("Rows are means over their frames; \"mean over actions\" is the unweighted mean of the action "
               "rows (as papers report Human3.6M). Ground-truth boxes and root depth (docs/DESIGN.md#evaluation).")
    return "\n".join(out)


def write_eval_report(stem: str, results: Mapping[str, float], tables: Mapping[str, Mapping], title: str) -> None:
    """Prints the evaluation (:func:`format_table`, then :func:`format_group_tables`) and writes
    ``<stem>.json`` (``results`` and ``tables`` in one object) and ``<stem>.md`` (the Markdown tables)."""
    markdown = format_group_tables(tables, title)
    print(format_table(results, title))
    print(markdown)
    storage.path(stem).parent.mkdir(parents=True, exist_ok=True)
    storage.path(stem + ".json").write_text(json.dumps({**results, **tables}, indent=2))
    storage.path(stem + ".md").write_text(markdown + "\n")


def plot_learning_curve(rows: Iterable[dict], path: str) -> None:
    """Training loss and validation loss/MPJPE against step."""
    rows = list(rows)
    last = {}
    for r in rows:  # a resumed run re-logs steps: keep the last value per (kind, step)
        last[(r["kind"], r["step"])] = r
    train = sorted((s, r["loss"]) for (k, s), r in last.items() if k == "train" and _is_number(r.get("loss")))
    evals = sorted((s, r) for (k, s), r in last.items() if k == "eval")
    num = lambda r, key: r[key] if _is_number(r.get(key)) else np.nan  # noqa: E731
    fig = _figure((10, 4))
    ax = fig.subplots(1, 2)
    if train:
        ax[0].plot(*zip(*train), label="train loss")
    if evals:
        ax[0].plot([s for s, _ in evals], [num(r, "val_loss") for _, r in evals], "o-", label="val loss")
        ax[1].plot([s for s, _ in evals], [num(r, "mpjpe") for _, r in evals], "o-", label="MPJPE")
        ax[1].plot([s for s, _ in evals], [num(r, "pa_mpjpe") for _, r in evals], "s-", label="PA-MPJPE")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("loss (log scale)")
    ax[0].set_yscale("log")
    ax[0].legend()
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("mm")
    ax[1].legend()
    fig.subplots_adjust(left=0.1, right=0.98, bottom=0.12, top=0.97, wspace=0.22)
    _save_figure(fig, path, dpi=80)


def _figure(size: tuple[float, float]):
    """A matplotlib Figure of ``size`` inches, drawn by the Agg canvas: no pyplot, so no global
    figure registry to close figures from, and any thread may plot. Margins are fixed
    (``subplots_adjust``): ``tight_layout`` would lay out every text once more before the
    drawing, and make ``savefig`` lay the figure out again (together a quarter of the time)."""
    from matplotlib.figure import Figure

    return Figure(figsize=size)


def _save_figure(fig, path: str, dpi: int) -> None:
    """``fig`` as PNG at ``path`` (local or remote)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    storage.path(path).write_bytes(buffer.getvalue())


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


#: Colours of the sample plots: truth / prediction (blue and red stand out on the synthetic
#: set's green-rendered legs and on real images).
TRUTH_COLOR, PRED_COLOR = "dodgerblue", "red"


def plot_samples(images: np.ndarray, pred_px: np.ndarray, gt_px: np.ndarray, pred_cam: np.ndarray,
                 gt_cam: np.ndarray, path: str) -> None:
    """For each sample: the input patch with predicted (red) and true (blue) 2D joints, and a
    3D view of both root-relative skeletons (mm, labelled axes).

    images: [N, H, W, 3] uint8 RGB patches (the evaluation batch's ``image``); *_px: [N, J, >=2]
    patch pixels; *_cam: [N, J, 3] mm.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise TypeError(f"plot_samples draws uint8 RGB patches, got {images.dtype} images")
    n = len(images)
    fig = _figure((6, 3 * n))
    for i in range(n):
        img = images[i]
        ax = fig.add_subplot(n, 2, 2 * i + 1)
        ax.imshow(img)
        for pts, color in ((gt_px[i], TRUTH_COLOR), (pred_px[i], PRED_COLOR)):
            draw_skeleton_2d(ax, pts, color)
        ax.set_axis_off()
        ax3 = fig.add_subplot(n, 2, 2 * i + 2, projection="3d")
        for pts, color in ((gt_cam[i], TRUTH_COLOR), (pred_cam[i], PRED_COLOR)):
            draw_skeleton_3d(ax3, pts - pts[0], color)
        ax3.set_title("3D, root-relative: blue truth, red prediction", fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.95, bottom=0.04 / n, top=1 - 0.06 / n, wspace=0.1, hspace=0.15)
    _save_figure(fig, path, dpi=70)


def draw_skeleton_2d(ax, joints_px: np.ndarray, color: str, bones=skeleton.H36M_BONES) -> None:
    """Bones of [J, >=2] pixel joints on a matplotlib image axis."""
    for a, b in bones:
        ax.plot([joints_px[a, 0], joints_px[b, 0]], [joints_px[a, 1], joints_px[b, 1]], color=color, lw=1.5)


def draw_skeleton_3d(ax3, joints_mm: np.ndarray, color: str, bones=skeleton.H36M_BONES, extent: float = 1000.0
                     ) -> None:
    """Bones of root-relative camera-space joints [J, 3] mm on a 3D axis (camera: x right, y down,
    z forward, plotted as (x, z, -y) so that up is up), limits +-``extent`` mm."""
    for a, b in bones:
        ax3.plot([joints_mm[a, 0], joints_mm[b, 0]], [joints_mm[a, 2], joints_mm[b, 2]],
                 [-joints_mm[a, 1], -joints_mm[b, 1]], color=color)
    for set_lim, set_ticks in ((ax3.set_xlim, ax3.set_xticks), (ax3.set_ylim, ax3.set_yticks),
                               (ax3.set_zlim, ax3.set_zticks)):
        set_lim(-extent, extent)
        set_ticks([-extent, 0, extent])  # three ticks: the labels never overlap
    ax3.set_xlabel("x (mm)", fontsize=6, labelpad=-6)
    ax3.set_ylabel("z, depth (mm)", fontsize=6, labelpad=-6)
    ax3.set_zlabel("-y, up (mm)", fontsize=6, labelpad=-6)
    ax3.tick_params(labelsize=5, pad=-2)


def plot_prediction(image_rgb: np.ndarray, joints_px: np.ndarray, joints_mm: np.ndarray, path: str,
                    title: str = "") -> None:
    """One image with its predicted 2D skeleton (red) next to the root-relative 3D pose.

    image_rgb: [H, W, 3] uint8; joints_px: [18, >=2] image pixels; joints_mm: [18, 3] root-relative
    camera-space mm.
    """
    fig = _figure((8, 4))
    ax = fig.add_subplot(1, 2, 1)
    ax.imshow(image_rgb)
    draw_skeleton_2d(ax, joints_px, "red")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=7)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    draw_skeleton_3d(ax3, joints_mm, "red")
    ax3.set_title("3D, root-relative (mm)", fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.96, bottom=0.04, top=0.94, wspace=0.1)
    _save_figure(fig, path, dpi=80)
