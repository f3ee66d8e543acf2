"""A row of the examples list: rank (or band), max and split, then the window with a hanging
indent."""

from __future__ import annotations

from rich.text import Text
from textual.containers import Horizontal
from textual.widgets import ListItem, Static

from labeller.records import Example
from labeller.tui.example_line import ExampleLine


class ExampleItem(ListItem):
    """Rank, max and split in a fixed column; the window beside it with a hanging indent."""

    DEFAULT_CSS = """
    ExampleItem Horizontal { height: auto; }
    ExampleItem .prefix { width: 17; }
    """

    def __init__(self, example: Example, scale: float) -> None:
        place = f"b{example.band}" if example.band is not None else f"{example.rank:>2}"
        prefix = Text(f"{place:>2} ", "dim")
        prefix.append(f"{example.max_activation:>7.3f} ", "bold")
        prefix.append(f"{example.split.value[:5]:<5}", "dim")
        super().__init__(Horizontal(Static(prefix, classes="prefix"), ExampleLine(example, scale)))
        self.example = example
