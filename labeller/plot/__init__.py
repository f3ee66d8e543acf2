"""Figures as PNG (and SVG) files with matplotlib, an optional extra: `pip install -e '.[plots]'`.
The TUI keeps its terminal charts; these are for reports and papers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labeller.errors import UserError


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, no display needed), or a one-line
    error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(
            "figures need matplotlib: pip install 'labeller[plots]' (or pip install matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(figure: Any, stem: Path, dpi: int, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write `figure` as stem.<format> for each format and close it; the paths written."""
    paths = []
    figure.tight_layout()
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        figure.savefig(path, dpi=dpi, format=fmt)
        paths.append(path)
    pyplot().close(figure)
    return paths
