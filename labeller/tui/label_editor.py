"""Write a new label or edit one: the text, and whether to accept it straight away."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Button, Checkbox, Input, Static

from labeller.tui.dialog import Dialog


@dataclass(frozen=True)
class LabelDraft:
    text: str
    accept: bool


class LabelEditor(Dialog[LabelDraft]):
    def __init__(self, title: str, text: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.initial = text

    def compose_body(self) -> ComposeResult:
        yield Static(Text(self.title_text, "bold"))
        yield Input(value=self.initial, placeholder='e.g. fires on " def" after a newline')
        yield Static(
            Text(
                'Quote the tokens it fires on in "..." so the offline baseline can score '
                "it. Enter saves.",
                "dim",
            )
        )
        with Horizontal():
            yield Checkbox("accept it", id="accept")
            yield Button("Save", variant="primary", id="save")
            yield Button("Cancel", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self._save()
        else:
            self.action_close()

    def _save(self) -> None:
        text = self.query_one(Input).value.strip()
        if not text:
            self.query_one(Input).focus()
            return
        self.dismiss(LabelDraft(text, self.query_one("#accept", Checkbox).value))
