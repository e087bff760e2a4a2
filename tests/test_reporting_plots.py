"""The PNGs a researcher reads: labelled axes, readable ticks, truth and prediction colours that
stand out on the synthetic set's green-rendered legs."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from kinpose_jax.training import reporting


@pytest.fixture
def saved_figures(monkeypatch):
    figures = []
    original = Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def assert_nothing_cropped(fig):
    """Everything the saved figure draws (titles, axis and tick labels, legends) lies inside it:
    the fixed margins crop nothing."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    drawn = fig.get_tightbbox(canvas.get_renderer())  # inches
    width, height = fig.get_size_inches()
    assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= width and drawn.y1 <= height, (drawn, width, height)


def test_learning_curve_axes_are_labelled(tmp_path, saved_figures):
    rows = [{"step": s, "kind": "train", "loss": 1.0 / s} for s in range(1, 5)]
    rows.append({"step": 4, "kind": "eval", "val_loss": 0.3, "mpjpe": 200.0, "pa_mpjpe": 150.0})
    reporting.plot_learning_curve(rows, str(tmp_path / "curve.png"))
    (fig,) = saved_figures
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel(), ax
    assert_nothing_cropped(fig)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_sample_plots_label_3d_axes_with_few_ticks_and_no_green_truth(tmp_path, saved_figures, n):
    rng = np.random.default_rng(n)
    j = 18
    reporting.plot_samples(rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.uniform(0, 32, (n, j, 2)),
                           rng.uniform(0, 32, (n, j, 2)), rng.normal(0, 300, (n, j, 3)), rng.normal(0, 300, (n, j, 3)),
                           str(tmp_path / "samples.png"))
    (fig,) = saved_figures
    axes3d = [ax for ax in fig.axes if ax.name == "3d"]
    assert len(axes3d) == n
    for ax in axes3d:
        assert "mm" in ax.get_xlabel() and "mm" in ax.get_ylabel() and "mm" in ax.get_zlabel()
        for ticks in (ax.get_xticks(), ax.get_yticks(), ax.get_zticks()):
            assert len(ticks) <= 3
    colors = {to_rgb(line.get_color()) for ax in fig.axes for line in ax.get_lines()}
    assert colors == {to_rgb(reporting.TRUTH_COLOR), to_rgb(reporting.PRED_COLOR)}
    for rgb in colors:
        assert not (rgb[1] > 0.5 and rgb[1] > 1.5 * max(rgb[0], rgb[2])), rgb  # no green line
    assert_nothing_cropped(fig)


def test_prediction_plot_is_labelled_and_uncropped(tmp_path, saved_figures):
    rng = np.random.default_rng(1)
    reporting.plot_prediction(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8), rng.uniform(0, 48, (18, 2)),
                              rng.normal(0, 300, (18, 3)), str(tmp_path / "pred.png"), title="image.jpg")
    (fig,) = saved_figures
    (ax3,) = [ax for ax in fig.axes if ax.name == "3d"]
    assert "mm" in ax3.get_xlabel() and "mm" in ax3.get_zlabel()
    assert_nothing_cropped(fig)
