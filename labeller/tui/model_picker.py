"""Choose which of the catalogue's models the list shows."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from labeller.tui.dialog import Dialog


class ModelPicker(Dialog[str]):
    def __init__(self, models: list[str], current: str) -> None:
        super().__init__()
        self.models = models
        self.current = current

    def compose_body(self) -> ComposeResult:
        yield Static(Text("Model", "bold"))
        yield OptionList(*(Option(Text(name), id=name) for name in self.models))

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        if self.current in self.models:
            options.highlighted = self.models.index(self.current)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)
