"""Replace one token: shows, as you type, how the replacement tokenizes."""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import Input, Static

from labeller.tui.dialog import Dialog
from labeller.tui.errors import describe
from labeller.tui.text import escaped, shown


class ReplaceToken(Dialog[str]):
    """Returns the replacement text (enter), or None (escape)."""

    def __init__(self, token: str, tokenize: Callable[[str], list[str]]) -> None:
        super().__init__()
        self.token = token
        self.tokenize = tokenize

    def compose_body(self) -> ComposeResult:
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


def _escape(token: str) -> str:
    """Editable one-line form: newline and tab as \\n and \\t, other controls made visible."""
    return escaped(token.replace("\n", "\\n").replace("\t", "\\t"))


def _unescape(value: str) -> str:
    return value.replace("\\n", "\n").replace("\\t", "\t")
