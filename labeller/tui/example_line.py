"""One example window's tokens, cut around its max (or whole), wrapped like a terminal."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from labeller.records import Example
from labeller.tui.text import cut_around, hard_wrap, heat

CUT_LINES = 2


class ExampleLine(Widget):
    """One example window's tokens, cut to `CUT_LINES` lines around its max unless expanded."""

    DEFAULT_CSS = "ExampleLine { height: auto; width: 1fr; }"

    def __init__(self, example: Example, scale: float) -> None:
        super().__init__()
        self.example = example
        self.scale = scale
        self.expanded = False
        # The wrapped text for one width: layout asks for the height and then renders, for each
        # of some 40 examples, at every refresh (most of a page paint before this cache).
        self._cached: tuple[int, Text] | None = None

    def _text(self, width: int) -> Text:
        if self._cached is not None and self._cached[0] == width:
            return self._cached[1]
        text = self._wrapped(width)
        self._cached = (width, text)
        return text

    def _wrapped(self, width: int) -> Text:
        e = self.example
        if self.expanded:
            start, end = 0, len(e.tokens)
        else:
            start, end = cut_around(e.tokens, e.max_index, max(10, CUT_LINES * width - 2))
        line = heat(e.tokens, e.activations, self.scale, e.max_index, start=start, end=end)
        return hard_wrap(line, width)

    def render(self) -> Text:
        return self._text(self.content_size.width or 80)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return self._text(width).plain.count("\n") + 1

    def show(self, example: Example, scale: float) -> None:
        width = self.content_size.width
        before = self._text(width).plain.count("\n") if width else None
        self.example, self.scale, self.expanded = example, scale, False
        self._cached = None
        # A layout pass only when the height changes (a cut window is usually as high).
        self.refresh(layout=before is None or self._text(width).plain.count("\n") != before)

    def toggle(self) -> None:
        self.expanded = not self.expanded
        self._cached = None
        self.refresh(layout=True)
