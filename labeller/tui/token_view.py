"""A text shown as model tokens, coloured by activation, with a token cursor.

Token boundaries are drawn, so `E|iff|el| Tower` and `Eiffel| Tower` look different. The owner
decides what choosing a token means (replace it, or perturb around it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widget import Widget

from labeller.tui.text import heat_style, shown

SEPARATOR = "│"


@dataclass(frozen=True)
class _Cell:
    index: int
    line: int
    x: int
    width: int


class TokenView(Widget, can_focus=True):
    """Tokens wrapped to the width, each selectable with the keyboard or the mouse."""

    BINDING_GROUP_TITLE = "Tokens"

    DEFAULT_CSS = """
    TokenView { height: auto; min-height: 1; padding: 0 1; }
    TokenView:focus { background: $boost; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1)", "Previous token", id="tokens.left", show=False),
        Binding("right", "move(1)", "Next token", id="tokens.right", show=False),
        Binding("home", "edge(0)", "First token", id="tokens.home", show=False),
        Binding("end", "edge(1)", "Last token", id="tokens.end", show=False),
        Binding("enter", "choose", "Choose token", id="tokens.choose"),
    ]

    cursor: reactive[int] = reactive(0)

    @dataclass
    class Chosen(Message):
        """A token was chosen (enter or click)."""

        view: TokenView
        index: int

        @property
        def control(self) -> TokenView:
            return self.view

    @dataclass
    class Moved(Message):
        """The cursor moved to another token, or the mouse is over one while the cursor stays
        (so its owner can show that token's numbers)."""

        view: TokenView
        index: int

        @property
        def control(self) -> TokenView:
            return self.view

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.tokens: list[str] = []
        self.values: list[float] = []
        self.scale = 1.0
        self.mark: int | None = None
        self.empty_text = ""
        self._cells: list[_Cell] = []
        self._hovered: int | None = None

    def show(
        self,
        tokens: list[str],
        values: list[float],
        scale: float,
        *,
        mark: int | None = None,
        cursor: int | None = None,
    ) -> None:
        self.tokens, self.values, self.scale, self.mark = tokens, values, scale, mark
        if cursor is not None:
            self.cursor = cursor
        self.cursor = min(max(self.cursor, 0), max(len(tokens) - 1, 0))
        self.refresh(layout=True)

    def clear(self, message: str = "") -> None:
        self.empty_text = message
        self.show([], [], 1.0)

    def _layout(self, width: int) -> list[_Cell]:
        cells, line, x = [], 0, 0
        width = max(width, 4)
        for index, token in enumerate(self.tokens):
            size = len(shown(token)) + 1
            if x + size > width and x > 0:
                line, x = line + 1, 0
            cells.append(_Cell(index, line, x, size))
            x += size
        return cells

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        cells = self._layout(width)
        return cells[-1].line + 1 if cells else 1

    def render(self) -> Text:
        if not self.tokens:
            return Text(self.empty_text, "dim")
        self._cells = self._layout(self.content_size.width)
        out = Text()
        line = 0
        for cell in self._cells:
            if cell.line != line:
                out.append("\n")
                line = cell.line
            index = cell.index
            style = heat_style(self.values[index], self.scale) if self.values else ""
            if index == self.mark:
                style = f"{style} bold underline".strip()
            if index == self.cursor and self.has_focus:
                style = f"{style} reverse".strip()
            out.append(shown(self.tokens[index]), style)
            out.append(SEPARATOR, "dim")
        return out

    def watch_cursor(self, cursor: int) -> None:
        self.refresh()
        if self.tokens:
            self.post_message(self.Moved(self, cursor))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def action_move(self, step: int) -> None:
        if self.tokens:
            self.cursor = min(max(self.cursor + step, 0), len(self.tokens) - 1)

    def action_edge(self, end: int) -> None:
        if self.tokens:
            self.cursor = len(self.tokens) - 1 if end else 0

    def action_choose(self) -> None:
        if self.tokens:
            self.post_message(self.Chosen(self, self.cursor))

    def _at(self, event: events.MouseEvent) -> int | None:
        """The token under the mouse (the offset counts from the content, inside the padding)."""
        offset = event.get_content_offset(self)
        if offset is None:
            return None
        for cell in self._cells:
            if cell.line == offset.y and cell.x <= offset.x < cell.x + cell.width:
                return cell.index
        return None

    def on_click(self, event: events.Click) -> None:
        index = self._at(event)
        if index is not None:
            self.cursor = index
            self.post_message(self.Chosen(self, index))

    def on_mouse_move(self, event: events.MouseMove) -> None:
        index = self._at(event)
        if index is not None and index != self._hovered:
            self._hovered = index
            self.post_message(self.Moved(self, index))

    def on_leave(self, event: events.Leave) -> None:
        """Back to the cursor's token when the mouse leaves."""
        self._hovered = None
        if self.tokens:
            self.post_message(self.Moved(self, self.cursor))
