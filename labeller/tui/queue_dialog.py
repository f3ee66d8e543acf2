"""Start a queue: walk the unlabelled neurons, or those whose label scores under a threshold."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Button, Input, RadioButton, RadioSet, Static

from labeller.tui.dialog import Dialog


@dataclass(frozen=True)
class QueueSpec:
    """`below` None: unlabelled neurons; else neurons not yet accepted scoring under it."""

    below: float | None

    def describe(self) -> str:
        return "unlabelled" if self.below is None else f"score < {self.below:g}"


class QueueDialog(Dialog[QueueSpec]):
    AUTO_FOCUS = "#start"  # enter starts the usual queue; tab reaches the other choices

    def compose_body(self) -> ComposeResult:
        yield Static(Text("Walk a queue of neurons (n: next one)", "bold"))
        with RadioSet(id="mode"):
            yield RadioButton("unlabelled neurons", value=True, id="unlabelled")
            yield RadioButton("labels scoring under (not yet accepted):", id="below")
        yield Input(value="0.3", type="number", id="threshold")
        yield Static(id="problem")
        yield Button("Start", variant="primary", id="start")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self._start()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#below", RadioButton).value = True
        self._start()

    def _start(self) -> None:
        if self.query_one("#unlabelled", RadioButton).value:
            self.dismiss(QueueSpec(None))
            return
        try:
            below = float(self.query_one("#threshold", Input).value)
        except ValueError:
            self.query_one("#problem", Static).update(Text("give a number, e.g. 0.3", "red"))
            return
        self.dismiss(QueueSpec(below))
