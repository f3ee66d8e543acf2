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
        super().__init__(
            Horizontal(Static(_prefix(example), classes="prefix"), ExampleLine(example, scale))
        )
        self.example = example

    def show(self, example: Example, scale: float) -> None:
        """Another example in this row (the next neuron's, in place)."""
        self.example = example
        self.query_one(".prefix", Static).update(_prefix(example), layout=False)  # fixed size
        self.query_one(ExampleLine).show(example, scale)


def _prefix(example: Example) -> Text:
    place = f"b{example.band}" if example.band is not None else f"{example.rank:>2}"
    prefix = Text(f"{place:>2} ", "dim")
    prefix.append(f"{example.max_activation:>7.3f} ", "bold")
    prefix.append(f"{example.split.value[:5]:<5}", "dim")
    return prefix
