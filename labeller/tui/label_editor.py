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


ACCEPT_OFF = "accept it: no, save as proposed"
ACCEPT_ON = "accept it: YES, save as accepted"


class LabelEditor(Dialog[LabelDraft]):
    """`accept` starts the checkbox on (a draft brought back after a refused save keeps it)."""

    def __init__(self, title: str, text: str = "", *, accept: bool = False) -> None:
        super().__init__()
        self.title_text = title
        self.initial = text
        self.accept = accept

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
            # The label says the state in words: the box alone looked the same on and off.
            yield Checkbox(ACCEPT_ON if self.accept else ACCEPT_OFF, self.accept, id="accept")
            yield Button("Save", variant="primary", id="save")
            yield Button("Cancel", id="cancel")

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.checkbox.label = ACCEPT_ON if event.value else ACCEPT_OFF

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
