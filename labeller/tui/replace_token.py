"""Replace one token: shows, as you type, how the replacement tokenizes."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from labeller.tui.errors import describe
from labeller.tui.text import escaped, shown


class ReplaceToken(ModalScreen[str | None]):
    """Returns the replacement text (enter), or None (escape)."""

    DEFAULT_CSS = """
    ReplaceToken { align: center middle; }
    ReplaceToken > Vertical {
        width: 70; max-width: 100%; height: auto; border: thick $primary; padding: 0 1;
        background: $surface;
    }
    ReplaceToken #feedback { height: auto; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="dialog.cancel")
    ]

    def __init__(self, token: str, tokenize: Callable[[str], list[str]]) -> None:
        super().__init__()
        self.token = token
        self.tokenize = tokenize

    def compose(self) -> ComposeResult:
        with Vertical():
            title = Text("Replace token ")
            title.append(f"'{shown(self.token)}'", "bold")
            title.append(" (\\n for a newline)", "dim")
            yield Static(title)
            yield Input(value=_escape(self.token), id="replacement")
            yield Static(id="feedback")

    def on_mount(self) -> None:
        self._feedback(self.query_one(Input).value)

    def on_input_changed(self, event: Input.Changed) -> None:
        self._feedback(event.value)

    def _feedback(self, value: str) -> None:
        feedback = self.query_one("#feedback", Static)
        try:
            pieces = self.tokenize(_unescape(value))
        except Exception as exc:  # the tokenizer rejects odd input in many ways
            feedback.update(Text(describe(exc), "red"))
            return
        text = Text(f"→ {len(pieces)} token{'s' if len(pieces) != 1 else ''}: ")
        for piece in pieces:
            text.append(shown(piece), "reverse")
            text.append(" ")
        if len(pieces) == 1:
            text.append("✓ a single token", "green")
        else:
            text.append("\nno longer a single token: the text will change length", "yellow")
        feedback.update(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(_unescape(event.value))

    def action_cancel(self) -> None:
        self.dismiss(None)


def _escape(token: str) -> str:
    """Editable one-line form: newline and tab as \\n and \\t, other controls made visible."""
    return escaped(token.replace("\n", "\\n").replace("\t", "\\t"))


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace("\\t", "\t")
