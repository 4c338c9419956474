"""The house plot style: one look for every figure in the book.

Every helper reads the tidy tables the package produces and draws on a Matplotlib ``Axes`` (a new
figure when ``ax`` is not given), then returns that ``Axes``. In a notebook, assign the result
(``ax = plots.scenario_bars(...)``) to keep the ``Axes`` repr out of the output: a trailing ``;``
does not work under nbval, which runs cells with ``store_history=False`` so IPython never sees the
semicolon. Call :func:`set_style` once, in a chapter's first cell.

**Sized for the page** (STYLE lesson 15). The book shows a figure's PNG at one image pixel per CSS
pixel when it fits the text column, and shrinks it (fonts included) when it does not. So every
figure is :data:`COLUMN_WIDTH` inches wide at :data:`DPI` dots per inch, which is the text column of
the rendered book (:data:`COLUMN_PX` CSS pixels in a 1280-pixel-wide browser window, measured by
``tests/test_browser.py``), and fonts of 10 pt or more stay 10 pt or more on the screen.
:func:`set_style` turns on Matplotlib's constrained layout, which keeps legends and colour bars
inside that width; use :func:`figsize` for the height (and several rows, not several columns, of
panels).

* :func:`scenario_bars`: per-scenario bars with error bars over seeds, from an evaluation table with
  columns ``(method, dataset, scenario, metric, seed, value)``.
* :func:`learning_curves`: metrics against epochs or steps, mean ± sd band over seeds.
* :func:`attention_heatmap`: the memory attention ``a_u`` (MAMO Eq. 3) of users over the ``K``
  slots of the profile memory ``M_P``.
* :func:`adaptation_curves`: per-user loss during local adaptation (one thin line per user, the
  mean in bold).

Colours: :data:`SCENARIO_COLORS` gives each cold-start scenario a fixed colour (blues for warm users,
oranges for cold users; the lighter shade marks cold items) and :func:`method_colors` gives each
method the same colour in every chapter. Both come from the Okabe–Ito colour-blind-safe palette.

Matplotlib and seaborn are only in the ``book`` extra, so they are imported inside the functions:
``import mamo_lite.plots`` works without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "COLUMN_PX",
    "COLUMN_WIDTH",
    "DPI",
    "METHOD_COLORS",
    "PALETTE",
    "SCENARIO_COLORS",
    "adaptation_curves",
    "attention_heatmap",
    "figsize",
    "learning_curves",
    "method_colors",
    "scenario_bars",
    "set_style",
]

PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#D55E00",  # vermillion
    "#F0E442",  # yellow
    "#000000",  # black
)
"""The Okabe–Ito palette, the colour cycle of every figure."""

SCENARIO_COLORS: dict[str, str] = {
    "W-W": "#0072B2",  # warm user, warm item: blue
    "W-C": "#56B4E9",  # warm user, cold item: sky blue
    "C-W": "#D55E00",  # cold user, warm item: vermillion
    "C-C": "#E69F00",  # cold user, cold item: orange
}
"""One colour per cold-start scenario (MAMO §3.1.4), in the scenarios' canonical order."""

METHOD_COLORS: dict[str, str] = {
    "MAMO": "#D55E00",
    "MeLU": "#0072B2",
    "MAML": "#56B4E9",
    "MetaCS-DNN": "#009E73",
    "s2Meta": "#CC79A7",
    "RUM": "#000000",
    "Item-level RUM": "#000000",
    "Feature-level RUM": "#F0E442",
    "GreatMeta": "#E69F00",
}
"""Fixed colours for the book's methods, looked up ignoring case, spaces, ``-`` and ``_`` (so the CLI's
``metacs-dnn`` and the paper's ``MetaCS-DNN`` match); other names get the unused palette colours."""

COLUMN_PX = 688
"""Width of the book's text column in CSS pixels (sphinx-book-theme in a 1280-pixel-wide window)."""
DPI = 100
"""Dots per inch of the inline figures: one PNG pixel per CSS pixel."""
COLUMN_WIDTH = 6.8
"""Figure width in inches: :data:`COLUMN_PX` / :data:`DPI`, less a little for the saved figure's padding."""
MIN_FONT_PT = 10


def figsize(height: float = 4.0) -> tuple[float, float]:
    """``(width, height)`` in inches of a figure as wide as the text column and ``height`` inches tall."""
    return (COLUMN_WIDTH, float(height))


_FONT_SIZES = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "legend.title_fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
}


def set_style(context: Literal["paper", "notebook", "talk"] = "notebook") -> None:
    """Apply the house style: seaborn's white grid, the Okabe–Ito cycle, fixed font sizes, figures
    :data:`COLUMN_WIDTH` × 4 inches at :data:`DPI` with constrained layout.

    ``context`` scales the fonts (``"talk"`` for slides), never below 10 pt.
    """
    import seaborn as sns

    scale = {"paper": 0.9, "notebook": 1.0, "talk": 1.3}[context]
    rc: dict[str, Any] = {k: max(MIN_FONT_PT, v * scale) for k, v in _FONT_SIZES.items()}
    rc |= {
        "figure.figsize": figsize(4.0),
        "figure.dpi": DPI,
        "figure.constrained_layout.use": True,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "legend.frameon": False,
        "image.cmap": "viridis",
    }
    sns.set_theme(style="whitegrid", palette=list(PALETTE), rc=rc)


def _key(name: Any) -> str:
    return "".join(ch for ch in str(name).lower().replace("²", "2") if ch not in " -_")


def _assign(values: Iterable[Any], fixed: Mapping[str, str]) -> dict[Any, str]:
    """Fixed colours where known (by :func:`_key`); unused palette colours, in order, for the rest."""
    values = list(dict.fromkeys(values))
    known = {_key(k): c for k, c in fixed.items()}
    spare = [c for c in PALETTE if c not in {known.get(_key(v)) for v in values}]
    return {
        v: known.get(_key(v)) or (spare.pop(0) if spare else PALETTE[i % len(PALETTE)])
        for i, v in enumerate(values)
    }


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    """Colour of each method: :data:`METHOD_COLORS` where known, else unused palette colours in order."""
    return _assign(methods, METHOD_COLORS)


def _colors(column: str | None, values: Sequence[Any]) -> dict[Any, str]:
    """Colours for the values of a hue column: scenarios and methods keep their fixed colours."""
    return _assign(values, {"scenario": SCENARIO_COLORS, "method": METHOD_COLORS}.get(column, {}))


def _order(values: Iterable[Any], first: Sequence[Any] = ()) -> list[Any]:
    """Distinct values, those in ``first`` first (in that order), then the rest in order of appearance."""
    seen = list(dict.fromkeys(values))
    return [v for v in first if v in seen] + [v for v in seen if v not in first]


def _new_axes(ax: Axes | None, figsize: tuple[float, float] | None = None) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)[1]


def _seed_note(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    n = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return f"mean ± sd over {n} seeds" if hi > 1 else "1 seed"


def _to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of an array-like or a (possibly GPU, possibly grad-tracking) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=float)


def scenario_bars(
    df: pd.DataFrame,
    metric: str,
    *,
    dataset: str | None = None,
    group: Literal["scenario", "method"] = "scenario",
    methods: Sequence[str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Grouped bars of one metric per scenario and method, with ± 1 sd error bars over seeds.

    ``df`` is the tidy evaluation table (columns ``method, dataset, scenario, metric, seed, value``);
    rows are averaged over ``seed`` (sd with ``ddof=1``; no error bar for a single seed).
    ``group="scenario"`` puts the scenarios on the x axis and colours bars by method (who wins in
    each scenario); ``group="method"`` puts the methods on the x axis and colours bars by scenario
    (:data:`SCENARIO_COLORS`). ``methods`` selects and orders the methods. ``dataset`` is required
    when the table holds more than one dataset.
    """
    rows = df[df["metric"] == metric]
    if dataset is not None:
        rows = rows[rows["dataset"] == dataset]
    if rows.empty:
        raise ValueError(f"no rows for metric={metric!r}" + (f", dataset={dataset!r}" if dataset else ""))
    if rows["dataset"].nunique() > 1:
        raise ValueError(
            f"the table holds several datasets {sorted(rows['dataset'].unique())}: pass dataset="
        )
    if methods is not None:
        rows = rows[rows["method"].isin(methods)]
    stats = rows.groupby(["method", "scenario"], sort=False)["value"].agg(["mean", "std", "count"])

    scenarios = _order(rows["scenario"], first=tuple(SCENARIO_COLORS))
    method_order = _order(rows["method"], first=methods or ())
    outer, inner = (scenarios, method_order) if group == "scenario" else (method_order, scenarios)
    inner_name = "method" if group == "scenario" else "scenario"
    colors = _colors(inner_name, inner)

    ax = _new_axes(ax, figsize=figsize(4.0))
    width = 0.8 / len(inner)
    x = np.arange(len(outer))
    for j, name in enumerate(inner):
        keys = [(name, o) if group == "scenario" else (o, name) for o in outer]
        s = stats.reindex(keys)
        err = s["std"].where(s["count"] > 1).fillna(0.0).to_numpy()
        ax.bar(
            x + (j - (len(inner) - 1) / 2) * width,
            s["mean"].to_numpy(),
            width,
            yerr=err,
            color=colors[name],
            label=name,
            capsize=3,
            error_kw={"elinewidth": 1},
        )
    ax.set_xticks(x, [str(o) for o in outer])
    ax.set_xlabel("scenario" if group == "scenario" else "method")
    ax.set_ylabel(f"{metric} ({_seed_note(stats['count'])})")
    ax.grid(axis="x", visible=False)
    ax.legend(title=inner_name, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title if title is not None else f"{metric} on {rows['dataset'].iloc[0]}")
    return ax


def learning_curves(
    history_df: pd.DataFrame,
    y: str | Sequence[str] = "loss",
    *,
    x: str = "epoch",
    hue: str | None = None,
    ax: Axes | None = None,
    logy: bool = False,
    title: str | None = None,
) -> Axes:
    """Learning curves: ``y`` against ``x``, one line per ``hue`` value, mean ± sd band over seeds.

    ``history_df`` is long-form (one row per logged step). ``y`` names one column, or several columns
    to draw side by side (e.g. ``["train_loss", "val_MAE"]``; the column name then plays the role of
    ``hue``). When a ``seed`` column holds several seeds, the line is their mean and the band ± 1 sd.
    """
    columns = [y] if isinstance(y, str) else list(y)
    if not isinstance(y, str):
        if hue is not None:
            raise ValueError("pass either several y columns or hue, not both")
        id_vars = [c for c in (x, "seed") if c in history_df.columns]
        history_df = history_df.melt(
            id_vars=id_vars, value_vars=columns, var_name="series", value_name="value"
        )
        hue, value = "series", "value"
    else:
        value = y
    ax = _new_axes(ax)
    groups = _order(history_df[hue]) if hue is not None else [None]
    colors = _colors(hue, groups)
    for g in groups:
        part = history_df if g is None else history_df[history_df[hue] == g]
        stats = part.groupby(x, sort=True)[value].agg(["mean", "std", "count"])
        steps = stats.index.to_numpy()
        color = colors[g] if g is not None else PALETTE[0]
        ax.plot(steps, stats["mean"].to_numpy(), color=color, label=None if g is None else str(g))
        if (stats["count"] > 1).any():
            sd = stats["std"].fillna(0.0).to_numpy()
            ax.fill_between(steps, stats["mean"] - sd, stats["mean"] + sd, color=color, alpha=0.2, lw=0)
    ax.set_xlabel(x)
    ax.set_ylabel(value if isinstance(y, str) else "value")
    if logy:
        ax.set_yscale("log")
    if hue is not None:
        ax.legend(title=None if hue == "series" else hue, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title is not None:
        ax.set_title(title)
    return ax


def attention_heatmap(
    attn: Any,
    *,
    ax: Axes | None = None,
    max_users: int | None = 60,
    sort: bool = True,
    slot_labels: Sequence[str] | None = None,
    title: str | None = "Attention over memory slots",
) -> Axes:
    """Heatmap of the memory attention ``a_u`` (MAMO Eq. 3): one column per user, one row per slot.

    ``attn`` is ``[n_users, K]`` (a tensor or an array; each row sums to 1). Users run along the
    column's width and the ``K`` slots down it, so the picture fills the text column whatever ``K``.
    With ``sort`` the users are grouped by their dominant slot, most confident first, so clusters of
    users show as blocks; ``max_users`` keeps the first users (before sorting).
    """
    a = _to_numpy(attn)
    if a.ndim != 2:
        raise ValueError(f"attn must be [n_users, K], got shape {a.shape}")
    if max_users is not None:
        a = a[:max_users]
    if sort:
        a = a[np.lexsort((-a.max(axis=1), a.argmax(axis=1)))]
    n, k = a.shape
    ax = _new_axes(ax, figsize=figsize(1.4 + 0.45 * k))
    im = ax.imshow(a.T, aspect="auto", interpolation="nearest", vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_yticks(range(k), slot_labels if slot_labels is not None else [f"{j + 1}" for j in range(k)])
    ax.set_xticks([])
    ax.set_ylabel("slot k")
    ax.set_xlabel(f"{n} users" + (", grouped by dominant slot" if sort else ""))
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, label="$a_{u,k}$", aspect=8, pad=0.02)
    if title is not None:
        ax.set_title(title)
    return ax


def adaptation_curves(
    df: pd.DataFrame,
    *,
    x: str = "step",
    y: str = "loss",
    unit: str = "user",
    hue: str | None = "scenario",
    ax: Axes | None = None,
    max_units: int | None = 30,
    title: str | None = None,
) -> Axes:
    """Per-user adaptation curves: ``y`` (e.g. the query loss) against local step ``x``.

    ``df`` has one row per (``unit``, ``x``); each unit (user) is a thin translucent line and the
    mean over units of each ``hue`` group a bold one. With ``hue="scenario"`` the groups take
    :data:`SCENARIO_COLORS`, with ``hue="method"`` :func:`method_colors`. ``max_units`` thins the
    thin lines (the first units per group, in order of appearance); the mean uses all of them.
    """
    ax = _new_axes(ax)
    groups = _order(df[hue], first=tuple(SCENARIO_COLORS)) if hue is not None else [None]
    colors = _colors(hue, groups)
    for g in groups:
        part = df if g is None else df[df[hue] == g]
        color = colors[g] if g is not None else PALETTE[0]
        units = _order(part[unit])
        for u in units[:max_units] if max_units is not None else units:
            line = part[part[unit] == u].sort_values(x)
            ax.plot(line[x].to_numpy(), line[y].to_numpy(), color=color, alpha=0.25, lw=0.8)
        mean = part.groupby(x, sort=True)[y].mean()
        label = f"mean over {len(units)} {unit}s" if g is None else f"{g} ({len(units)} {unit}s)"
        ax.plot(mean.index.to_numpy(), mean.to_numpy(), color=color, lw=2.5, label=label)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.legend(title=hue, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title is not None:
        ax.set_title(title)
    return ax
