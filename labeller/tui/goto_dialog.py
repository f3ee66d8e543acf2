"""Jump to a neuron by `layer.neuron` (or just the neuron, for a one-layer model)."""

from __future__ import annotations

import re

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Input, Static

from labeller.tui.dialog import Dialog

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


class GotoDialog(Dialog[tuple[int, int]]):
    def __init__(self, layers: list[int]) -> None:
        super().__init__()
        self.scanned = layers

    def compose_body(self) -> ComposeResult:
        yield Static(Text("Go to neuron", "bold"))
        hint = "layer.neuron, e.g. 0.42" + (" or just 42" if len(self.scanned) == 1 else "")
        yield Input(placeholder=hint)
        yield Static(id="problem")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        found = parse_neuron(event.value, self.scanned)
        if found is None:
            self.query_one("#problem", Static).update(
                Text("write it as layer.neuron, e.g. 0.42", "red")
            )
            return
        self.dismiss(found)
