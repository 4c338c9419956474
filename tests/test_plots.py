"""The house plot style sizes figures for the book's text column (STYLE lesson 15).

The book shows a PNG at one pixel per CSS pixel when it fits the column and shrinks it otherwise, so a
figure must be drawn no wider than the column (``plots.COLUMN_PX``) at ``plots.DPI``, with every font
at 10 pt or more. Each helper is rendered as the notebook's inline backend does (``bbox_inches="tight"``).
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("seaborn")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mamo_lite import plots

MIN_FIGURE_SCALE = 0.9  # tests/browser_checks.py: a figure must be shown at >= 90 % of its natural width


def _png_width(fig) -> int:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")  # what IPython's inline backend does
    return struct.unpack(">I", buf.getvalue()[16:20])[0]


def _fonts(fig) -> list[tuple[float, str]]:
    return [(t.get_fontsize(), t.get_text()) for t in fig.findobj(matplotlib.text.Text)
            if t.get_visible() and t.get_text().strip()]


def _metrics_table() -> pd.DataFrame:
    rows = [{"method": m, "dataset": "d", "scenario": s, "metric": "MAE", "seed": seed, "value": 0.8 + 0.01 * seed}
            for m in ("MAML", "MeLU", "MetaCS-DNN", "MAMO") for s in ("W-W", "W-C", "C-W", "C-C")
            for seed in range(3)]
    return pd.DataFrame(rows)


def _curves() -> pd.DataFrame:
    return pd.DataFrame([{"method": m, "epoch": e, "seed": s, "loss": 1 / (e + 1) + 0.01 * s}
                         for m in ("MAML", "MAMO") for e in range(5) for s in range(2)])


def _adaptation() -> pd.DataFrame:
    return pd.DataFrame([{"user": u, "step": k, "loss": 1 / (k + 1), "scenario": ("W-W", "C-C")[u % 2]}
                         for u in range(6) for k in range(4)])


HELPERS = {
    "scenario_bars": lambda: plots.scenario_bars(_metrics_table(), "MAE"),
    "learning_curves": lambda: plots.learning_curves(_curves(), "loss", hue="method"),
    "attention_heatmap_K3": lambda: plots.attention_heatmap(np.full((60, 3), 1 / 3)),
    "attention_heatmap_K8": lambda: plots.attention_heatmap(np.random.default_rng(0).dirichlet(np.ones(8), 60)),
    "adaptation_curves": lambda: plots.adaptation_curves(_adaptation()),
}


@pytest.mark.parametrize("name", HELPERS)
def test_helper_figures_fit_the_column_with_readable_fonts(name: str) -> None:
    plots.set_style()
    try:
        ax = HELPERS[name]()
        fig = ax.figure
        assert fig.get_size_inches()[0] <= plots.COLUMN_PX / plots.DPI
        width = _png_width(fig)
        assert width * MIN_FIGURE_SCALE <= plots.COLUMN_PX, f"{name}: {width} px wide, column {plots.COLUMN_PX} px"
        small = [(size, text) for size, text in _fonts(fig) if size < 10]
        assert not small, f"{name}: text under 10 pt: {small}"
    finally:
        plt.close("all")


def test_attention_heatmap_fills_its_canvas() -> None:
    """Users run along the width: a uniform K=3 attention no longer leaves half the canvas empty."""
    plots.set_style()
    try:
        ax = plots.attention_heatmap(np.full((60, 3), 1 / 3))
        fig = ax.figure
        fig.canvas.draw()
        box = ax.get_window_extent()
        assert box.width / fig.bbox.width > 0.7  # the heatmap spans the figure (the colour bar is the rest)
    finally:
        plt.close("all")


@pytest.mark.parametrize("context", ["paper", "notebook", "talk"])
def test_style_fonts_are_at_least_10_pt(context: str) -> None:
    plots.set_style(context)
    sizes = {k: matplotlib.rcParams[k] for k in ("font.size", "axes.labelsize", "xtick.labelsize",
                                                 "ytick.labelsize", "legend.fontsize", "axes.titlesize")}
    assert all(float(v) >= 10 for v in sizes.values()), sizes
    assert tuple(matplotlib.rcParams["figure.figsize"]) == plots.figsize(4.0)
    assert matplotlib.rcParams["figure.dpi"] == plots.DPI
