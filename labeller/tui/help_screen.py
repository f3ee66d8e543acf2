"""Every key, by screen, generated from the bindings themselves so it cannot drift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from labeller.tui.dialog import Dialog

MOUSE = (
    "Mouse: click a column header to sort by it (again to reverse); click a row to highlight "
    "it and again to open it; click a tab to switch, an example to show its whole window, a "
    "token to choose it. Scroll with the wheel."
)


class HelpScreen(Dialog[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark,q", "close", "Close", id="help.close")
    ]

    def __init__(self, sections: Sequence[tuple[str, Sequence[BindingType]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose_body(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self._text())

    def _text(self) -> Text:
        out = Text("Keys", "bold")
        out.append("  (escape closes this)\n", "dim")
        for title, bindings in self.sections:
            out.append(f"\n{title}\n", "bold underline")
            for binding in bindings:
                if not isinstance(binding, Binding) or not binding.description:
                    continue
                keys = ", ".join(
                    self.app.get_key_display(Binding(key, binding.action))
                    for key in binding.key.split(",")
                )
                out.append(f"  {keys:<18}", "bold cyan")
                out.append(f"{binding.description}\n")
        out.append(f"\n{MOUSE}\n", "dim")
        return out
