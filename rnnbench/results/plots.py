"""Plotting helpers shared by the HTML report (rnnbench.results.report) and the gradflow experiment
(rnnbench.gradflow_experiment): one colour per cell, panels side by side, the log-scale axes of
‖∂L/∂h_t‖, and figures rendered in memory then written whole.

Importing this module sets matplotlib's Agg backend; training code never imports it.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

# No display: render in memory. pyplot settles its backend at the first figure, so this holds
# in modules that imported pyplot before this one too.
matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from rnnbench.cellspec import CELL_SPECS  # noqa: E402
from rnnbench.outputs import write_bytes  # noqa: E402

# One colour per cell, the same in every figure.
CELL_COLOURS = {name: spec.colour for name, spec in CELL_SPECS.items()}
OTHER_COLOURS = ("#d62728", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
HIDDEN_GRAD_LABEL = r"$\|\partial L / \partial h_t\|$"


def colour(cell: object, index: int = 0) -> str:
    """The colour of `cell` in every figure; a name that is no known cell gets the `index`-th
    of the other colours."""
    return CELL_COLOURS.get(str(cell), OTHER_COLOURS[index % len(OTHER_COLOURS)])


def panels(
    groups: list,
    width: float = 6.0,
    height: float = 4.0,
    ncols: int = 3,
    layout: str | None = None,
) -> tuple[Figure, list[Axes]]:
    """One subplot per group, side by side (wrapping after `ncols`), each `width` × `height`
    inches; `layout` as plt.subplots takes it ("constrained": the figure keeps its size and
    lays out what is drawn, legends outside the axes included, inside it)."""
    n = max(1, len(groups))
    ncols = max(1, min(n, ncols))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout=layout
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def hidden_grad_axes(ax: Axes, title: str, xlabel: str = "t") -> None:
    """Label `ax` as a ‖∂L/∂h_t‖-against-t panel: log scale, since vanishing gradients span
    orders of magnitude, with a grid at every decade."""
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(HIDDEN_GRAD_LABEL)
    ax.grid(alpha=0.3, which="both")


def figure_format(path: str | Path) -> str:
    """The image format `path` names by its suffix (png when it has none), as savefig reads it;
    ValueError naming the formats when matplotlib cannot write that one."""
    suffix = Path(path).suffix[1:].lower() or "png"
    known = FigureCanvasBase.get_supported_filetypes()
    if suffix not in known:
        raise ValueError(f"{path}: unknown image format {suffix!r}; use one of {', '.join(known)}")
    return suffix


def figure_bytes(fig: Figure, fmt: str = "png", dpi: int = 100, tight: bool = False) -> bytes:
    """`fig` drawn in memory as an image file of format `fmt` (`tight`: cropped to what is
    drawn), then closed, whether or not it drew: pyplot would keep every figure alive."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 90) -> None:
    """Draw `fig` in memory and write it to `path` in one go (see outputs.write_bytes), then
    close it: a figure that fails to draw or write leaves no half file."""
    write_bytes(path, figure_bytes(fig, figure_format(path), dpi))
