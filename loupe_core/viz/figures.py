"""Matplotlib figures without pyplot: the Agg canvas only (no display, no global backend switch)."""
from __future__ import annotations

import os


def new_figure(width: float, height: float):
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str) -> str:
    """Write ``fig`` as PNG to ``path`` (directories created); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path
