"""One example window's tokens, cut around its max (or whole), wrapped like a terminal.

A token cursor (←/→ in the examples list) and the mouse pick a token; the line says which, so
the pane can show that token's exact activation.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.message import Message
from textual.widget import Widget

from labeller.records import Example
from labeller.tui.text import ELLIPSIS, cut_around, hard_wrap, heat, shown

CUT_LINES = 2


class ExampleLine(Widget):
    """One example window's tokens, cut to `CUT_LINES` lines around its max unless expanded."""

    DEFAULT_CSS = "ExampleLine { height: auto; width: 1fr; }"

    @dataclass
    class Pointed(Message):
        """A token of this example is under the mouse or the token cursor."""

        line: ExampleLine
        index: int

    def __init__(self, example: Example, scale: float) -> None:
        super().__init__()
        self.example = example
        self.scale = scale
        self.expanded = False
        # The wrapped text for one width: layout asks for the height and then renders, for each
        # of some 40 examples, at every refresh (most of a page paint before this cache).
        self._cached: tuple[int, Text] | None = None
        self.cursor: int | None = None  # the token cursor, while this example is highlighted
        self._hovered: int | None = None

    def _range(self, width: int) -> tuple[int, int]:
        e = self.example
        if self.expanded:
            return 0, len(e.tokens)
        return cut_around(e.tokens, e.max_index, max(10, CUT_LINES * width - 2))

    def _text(self, width: int) -> Text:
        if self._cached is not None and self._cached[0] == width:
            return self._cached[1]
        text = self._wrapped(width)
        self._cached = (width, text)
        return text

    def _wrapped(self, width: int) -> Text:
        e = self.example
        start, end = self._range(width)
        line = heat(e.tokens, e.activations, self.scale, e.max_index, start=start, end=end)
        if self.cursor is not None and start <= self.cursor < end:
            offset = self._offset(start, self.cursor)
            line.stylize("reverse", offset, offset + len(shown(e.tokens[self.cursor])))
        return hard_wrap(line, width)

    def _offset(self, start: int, index: int) -> int:
        """Where token `index` starts in the line's text (after the ellipsis of a cut window)."""
        lead = len(ELLIPSIS) if start > 0 else 0
        return lead + sum(len(shown(t)) for t in self.example.tokens[start:index])

    def token_at(self, x: int, y: int) -> int | None:
        """The token drawn at cell (x, y) of this widget, if any."""
        width = self.content_size.width or 80
        start, end = self._range(width)
        where = y * width + x
        offset = self._offset(start, start)
        for index in range(start, end):
            size = len(shown(self.example.tokens[index]))
            if offset <= where < offset + size:
                return index
            offset += size
        return None

    def render(self) -> Text:
        return self._text(self.content_size.width or 80)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return self._text(width).plain.count("\n") + 1

    def show(self, example: Example, scale: float) -> None:
        width = self.content_size.width
        before = self._text(width).plain.count("\n") if width else None
        self.example, self.scale, self.expanded = example, scale, False
        self.cursor = self._hovered = None
        self._cached = None
        # A layout pass only when the height changes (a cut window is usually as high).
        self.refresh(layout=before is None or self._text(width).plain.count("\n") != before)

    def toggle(self) -> None:
        self.expanded = not self.expanded
        self._cached = None
        self.refresh(layout=True)

    def move_cursor(self, step: int) -> None:
        """Move the token cursor (from the max, the first time) and announce the token."""
        count = len(self.example.tokens)
        if not count:
            return
        start = (self.example.max_index if self.cursor is None else self.cursor) + step
        self.cursor = min(max(start, 0), count - 1)
        if not self.expanded:
            low, high = self._range(self.content_size.width or 80)
            if not low <= self.cursor < high:
                self.expanded = True
        self._cached = None
        self.refresh(layout=True)
        self.post_message(self.Pointed(self, self.cursor))

    def hide_cursor(self) -> None:
        if self.cursor is not None:
            self.cursor = None
            self._cached = None
            self.refresh()

    def on_mouse_move(self, event: events.MouseMove) -> None:
        index = self.token_at(event.x, event.y)
        if index is not None and index != self._hovered:
            self._hovered = index
            self.post_message(self.Pointed(self, index))

    def on_leave(self, event: events.Leave) -> None:
        self._hovered = None
