"""Jump to a neuron by `layer.neuron` (or just the neuron, for a one-layer model).

The dialog checks that the neuron was scanned before it closes: a bad target keeps it open with
the reason, so the person can correct what they typed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import Input, Static

from labeller.errors import UserError
from labeller.tui.context import backend_of
from labeller.tui.dialog import Dialog
from labeller.tui.errors import ReportsWorkerErrors

PATTERN = re.compile(r"^\s*(?:L?(\d+)\s*[.:/ ]\s*)?N?(\d+)\s*$", re.I)


def parse_neuron(text: str, layers: list[int]) -> tuple[int, int] | None:
    """'3.42', 'L3.N42' or, when only one layer is scanned, '42'."""
    match = PATTERN.match(text)
    if match is None:
        return None
    if match.group(1) is None:
        if len(layers) != 1:
            return None
        return layers[0], int(match.group(2))
    return int(match.group(1)), int(match.group(2))


class GotoDialog(ReportsWorkerErrors, Dialog[tuple[int, int]]):
    @dataclass
    class Checked(Message):
        neuron: tuple[int, int]
        problem: str | None

    def __init__(self, model: str, layers: list[int]) -> None:
        super().__init__()
        self.model = model
        self.scanned = layers

    def compose_body(self) -> ComposeResult:
        yield Static(Text("Go to neuron", "bold"))
        hint = "layer.neuron, e.g. 0.42" + (" or just 42" if len(self.scanned) == 1 else "")
        yield Input(placeholder=hint)
        yield Static(id="problem")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        found = parse_neuron(event.value, self.scanned)
        if found is None:
            self._problem("write it as layer.neuron, e.g. 0.42")
            return
        self.check(found)

    @work(thread=True, exclusive=True, group="goto", exit_on_error=False)
    def check(self, neuron: tuple[int, int]) -> None:
        try:
            backend_of(self).check_neuron(self.model, *neuron)
        except UserError as exc:
            self.post_message(self.Checked(neuron, str(exc)))
            return
        self.post_message(self.Checked(neuron, None))

    def on_goto_dialog_checked(self, event: Checked) -> None:
        if event.problem is None:
            self.dismiss(event.neuron)
        else:
            self._problem(event.problem)

    def _problem(self, text: str) -> None:
        self.query_one("#problem", Static).update(Text(text, "red"))
