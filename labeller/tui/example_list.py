"""The examples' list: Home and End move the highlight (what enter and `p` act on), not just
the view, so the example a person sees at the top or bottom is the one they perturb."""

from __future__ import annotations

from typing import ClassVar

from textual.binding import Binding, BindingType
from textual.widgets import ListView


class ExampleList(ListView):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "edge(0)", "First example", id="examples.first", show=False),
        Binding("end", "edge(1)", "Last example", id="examples.last", show=False),
    ]

    def action_edge(self, end: int) -> None:
        enabled = [i for i, item in enumerate(self.children) if not item.disabled]
        if enabled:
            self.index = enabled[-1] if end else enabled[0]
