"""Ask before unsealing a neuron's held-out windows: it is recorded and cannot be taken back."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static

from labeller.tui.dialog import Dialog


class UnsealDialog(Dialog[bool]):
    """y unseals (dismisses True); n or escape keeps the windows sealed (None)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "unseal", "Unseal", id="unseal.yes"),
        Binding("n", "close", "Keep sealed", id="unseal.no"),
    ]

    def __init__(self, neuron: str, held_out: int, annotator: str) -> None:
        super().__init__()
        self.neuron = neuron
        self.held_out = held_out
        self.annotator = annotator

    def compose_body(self) -> ComposeResult:
        yield Static(Text(f"Unseal {self.neuron}'s held-out windows?", "bold"))
        yield Static(
            Text(
                f"You will see its {self.held_out} valid and test windows. The unseal is recorded "
                f"in the neuron's history as {self.annotator}'s and cannot be undone: labels "
                "you write on this neuron after it are scored as not blind on valid and test "
                "(your earlier labels stay blind)."
            )
        )
        yield Static(Text("y: unseal · n / escape: keep sealed", "dim"))

    def action_unseal(self) -> None:
        self.dismiss(True)
