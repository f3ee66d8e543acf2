"""What every dialog shares: a frame centred over the screen it came from, and escape to close.

A dialog's result is what it dismisses with; closing it gives None, which every caller reads as
"nothing chosen". The frame's look is in app.tcss (`Dialog > .frame`), each dialog's size beside it.
"""

from __future__ import annotations

from typing import ClassVar, TypeVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen

ResultT = TypeVar("ResultT")


class Dialog(ModalScreen[ResultT]):
    """A modal dialog: subclasses compose what goes inside the frame (`compose_body`)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close", id="dialog.close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="frame"):
            yield from self.compose_body()

    def compose_body(self) -> ComposeResult:
        raise NotImplementedError

    def action_close(self) -> None:
        self.dismiss(None)
