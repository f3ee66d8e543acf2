"""The neuron list's table: one page of rows; moving past either end asks for the next page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual.message import Message
from textual.widgets import DataTable


class NeuronTable(DataTable[Any]):
    BINDING_GROUP_TITLE = "Table"

    @dataclass
    class PageRequested(Message):
        """The cursor tried to leave the page: `step` is +1 (next) or -1 (previous)."""

        step: int

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id=id)
        self.has_next = False
        self.has_previous = False

    def _at_end(self, step: int) -> bool:
        if step > 0:
            return self.has_next and self.cursor_row >= self.row_count - 1
        return self.has_previous and self.cursor_row <= 0

    def action_cursor_down(self) -> None:
        if self._at_end(1):
            self.post_message(self.PageRequested(1))
        else:
            super().action_cursor_down()

    def action_cursor_up(self) -> None:
        if self._at_end(-1):
            self.post_message(self.PageRequested(-1))
        else:
            super().action_cursor_up()

    def action_page_down(self) -> None:
        if self._at_end(1):
            self.post_message(self.PageRequested(1))
        else:
            super().action_page_down()

    def action_page_up(self) -> None:
        if self._at_end(-1):
            self.post_message(self.PageRequested(-1))
        else:
            super().action_page_up()
