"""Start a queue: the list as sorted and filtered, narrowed to the neurons still needing a person.

After `explain` has run every neuron has a proposed label, so the usual queue is the neurons
without an accepted one; the others are the weak ones (best score below a threshold, or no score),
the unlabelled ones, or the list exactly as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Button, Input, RadioButton, RadioSet, Static

from labeller.catalogue.browse import Todo
from labeller.tui.dialog import Dialog

CHOICES: dict[str, Todo | None] = {
    "not-accepted": Todo.NOT_ACCEPTED,
    "below": Todo.SCORE_BELOW,
    "unlabelled": Todo.UNLABELLED,
    "whole-list": None,
}


@dataclass(frozen=True)
class QueueChoice:
    """`todo` None: walk the list as it is; `below`: the threshold of `Todo.SCORE_BELOW`."""

    todo: Todo | None
    below: float | None = None


class QueueDialog(Dialog[QueueChoice]):
    AUTO_FOCUS = "#start"  # enter starts the usual queue; tab reaches the other choices

    def __init__(self, current: QueueChoice | None = None) -> None:
        super().__init__()
        self.current = current or QueueChoice(Todo.NOT_ACCEPTED)

    def compose_body(self) -> ComposeResult:
        yield Static(
            Text("Walk the list, sorted and filtered as it is, one neuron at a time", "bold")
        )
        yield Static(Text("On a neuron: n next, N previous; the page says k of N.", "dim"))
        chosen = self.current.todo
        with RadioSet(id="mode"):
            yield RadioButton(
                "neurons without an accepted label",
                value=chosen is Todo.NOT_ACCEPTED,
                id="not-accepted",
            )
            yield RadioButton(
                "best score below (or none), not accepted:",
                value=chosen is Todo.SCORE_BELOW,
                id="below",
            )
            yield RadioButton(
                "unlabelled neurons", value=chosen is Todo.UNLABELLED, id="unlabelled"
            )
            yield RadioButton("every neuron in the list", value=chosen is None, id="whole-list")
        below = self.current.below if self.current.below is not None else 0.3
        yield Input(value=f"{below:g}", type="number", id="threshold")
        yield Static(id="problem")
        yield Button("Start", variant="primary", id="start")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self._start()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#below", RadioButton).value = True
        self._start()

    def _start(self) -> None:
        pressed = self.query_one(RadioSet).pressed_button
        todo = CHOICES[pressed.id or "not-accepted"] if pressed is not None else Todo.NOT_ACCEPTED
        if todo is not Todo.SCORE_BELOW:
            self.dismiss(QueueChoice(todo))
            return
        try:
            below = float(self.query_one("#threshold", Input).value)
        except ValueError:
            self.query_one("#problem", Static).update(Text("give a number, e.g. 0.3", "red"))
            return
        self.dismiss(QueueChoice(todo, below))
