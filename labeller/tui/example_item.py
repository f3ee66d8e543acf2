"""A row of the examples list, drawn as one widget: rank (or band), max and split in a fixed
column, then the window's tokens with a hanging indent, cut to `CUT_LINES` lines around the max
unless expanded (wrapped like a terminal).

One widget per row, not a row of containers: a neuron page has some 40 rows, and laying out four
widgets for each was most of the cost of turning to the next neuron. A token cursor (←/→ in the
examples list) and the mouse pick a token; the row says which, so the pane can show that token's
exact activation.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.message import Message
from textual.widgets import ListItem

from labeller.records import Example
from labeller.tui.text import ELLIPSIS, cut_around, hard_wrap, heat, shown

CUT_LINES = 2
PREFIX = 17  # "b3 " or "12 ", the max and the split: the column the window hangs from
_INDENT = Text(" " * PREFIX)


class ExampleItem(ListItem):
    """One example: its prefix column and its window, as a single renderable."""

    @dataclass
    class Pointed(Message):
        """A token of this example is under the mouse or the token cursor."""

        item: ExampleItem
        index: int

    def __init__(self, example: Example, scale: float) -> None:
        super().__init__()
        self.example = example
        self.scale = scale
        self.expanded = False
        # The rendered row for one width: layout asks for the height and then renders, for each
        # of some 40 examples, at every refresh.
        self._cached: tuple[int, Text] | None = None
        self.cursor: int | None = None  # the token cursor, while this example is highlighted
        self._hovered: int | None = None

    def show(self, example: Example, scale: float) -> None:
        """Another example in this row (the next neuron's, in place)."""
        width = self.content_size.width
        before = self._text(width).plain.count("\n") if width else None
        self.example, self.scale, self.expanded = example, scale, False
        self.cursor = self._hovered = None
        self._cached = None
        # A layout pass only when the height changes (a cut window is usually as high).
        self.refresh(layout=before is None or self._text(width).plain.count("\n") != before)

    def prefix(self) -> Text:
        example = self.example
        place = f"b{example.band}" if example.band is not None else f"{example.rank:>2}"
        prefix = Text(f"{place:>2} ", "dim")
        prefix.append(f"{example.max_activation:>7.3f} ", "bold")
        prefix.append(f"{example.split.value[:5]:<5}", "dim")
        prefix.pad_right(PREFIX - len(prefix))
        return prefix

    def _room(self, width: int) -> int:
        """Cells per line for the window, beside the prefix column."""
        return max(width - PREFIX, 10)

    def _range(self, room: int) -> tuple[int, int]:
        e = self.example
        if self.expanded:
            return 0, len(e.tokens)
        return cut_around(e.tokens, e.max_index, max(10, CUT_LINES * room - 2))

    def _text(self, width: int) -> Text:
        if self._cached is not None and self._cached[0] == width:
            return self._cached[1]
        text = self._rendered(width)
        self._cached = (width, text)
        return text

    def _rendered(self, width: int) -> Text:
        e = self.example
        room = self._room(width)
        start, end = self._range(room)
        line = heat(e.tokens, e.activations, self.scale, e.max_index, start=start, end=end)
        if self.cursor is not None and start <= self.cursor < end:
            offset = self._offset(start, self.cursor)
            line.stylize("reverse", offset, offset + len(shown(e.tokens[self.cursor])))
        out = self.prefix()
        for number, part in enumerate(hard_wrap(line, room).split("\n", allow_blank=True)):
            if number:
                out.append("\n")
                out.append_text(_INDENT)
            out.append_text(part)
        return out

    def _offset(self, start: int, index: int) -> int:
        """Where token `index` starts in the window's text (after the ellipsis of a cut one)."""
        lead = len(ELLIPSIS) if start > 0 else 0
        return lead + sum(len(shown(t)) for t in self.example.tokens[start:index])

    def token_at(self, x: int, y: int) -> int | None:
        """The token drawn at cell (x, y) of this row (the prefix column has none)."""
        if x < PREFIX:
            return None
        room = self._room(self.content_size.width or 80)
        start, end = self._range(room)
        where = y * room + x - PREFIX
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
            low, high = self._range(self._room(self.content_size.width or 80))
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
        offset = event.get_content_offset(self)
        index = None if offset is None else self.token_at(offset.x, offset.y)
        if index is not None and index != self._hovered:
            self._hovered = index
            self.post_message(self.Pointed(self, index))

    def on_leave(self, event: events.Leave) -> None:
        self._hovered = None


class SectionItem(ListItem):
    """A heading or note between the examples (never highlighted), drawn as one widget."""

    def __init__(self, text: Text) -> None:
        super().__init__(classes="section", disabled=True)
        self.text = text

    def show(self, text: Text) -> None:
        self.text = text
        self.refresh()  # one line either way

    def render(self) -> Text:
        return self.text
