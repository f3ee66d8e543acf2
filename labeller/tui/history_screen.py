"""Who changed what on a neuron's labels, newest last, read fresh from the catalogue.

The table cuts each label to fit; the highlighted change is shown whole below it (at 80 columns
the "after" column has room for a few words only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widgets import DataTable, Static

from labeller.records import HistoryEntry, LabelState
from labeller.tui.context import backend_of
from labeller.tui.dialog import Dialog
from labeller.tui.errors import ReportsWorkerErrors
from labeller.tui.text import plain


def _state(state: LabelState | None, cut: int | None = 60) -> Text:
    if state is None:
        return Text("–", "dim")
    out = Text(f"#{state.explanation_id} {state.status.value} ")
    out.append_text(plain(state.text[:cut] if cut else state.text))
    return out


def _action(entry: HistoryEntry) -> Text:
    out = Text(entry.action, "bold")
    if entry.edited_from is not None:
        out.append(f" · edited from #{entry.edited_from}", "dim")
    return out


class HistoryScreen(ReportsWorkerErrors, Dialog[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("h", "close", "Close", id="history.close")]

    @dataclass
    class Loaded(Message):
        entries: list[HistoryEntry]

    def __init__(self, model: str, layer: int, neuron: int) -> None:
        super().__init__()
        self.model, self.layer_index, self.neuron = model, layer, neuron
        self.entries: list[HistoryEntry] = []

    def compose_body(self) -> ComposeResult:
        yield Static(Text(f"History of {self.model} {self.layer_index}.{self.neuron}", "bold"))
        table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True)
        yield table
        yield Static(id="history-detail")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in ("when", "who", "action", "before", "after"):
            table.add_column(column, key=column)
        self.load()

    @work(thread=True, exclusive=True, group="history", exit_on_error=False)
    def load(self) -> None:
        page = backend_of(self).neuron(self.model, self.layer_index, self.neuron)
        self.post_message(self.Loaded(page.history))

    def on_history_screen_loaded(self, event: HistoryScreen.Loaded) -> None:
        table = self.query_one(DataTable)
        self.entries = event.entries
        for entry in event.entries:
            table.add_row(
                Text(entry.at.replace("T", " ")[:19]),
                plain(entry.annotator or "?"),
                _action(entry),
                _state(entry.before),
                _state(entry.after),
            )
        if not event.entries:
            table.add_row(Text("no changes yet", "dim"), "", "", "", "")
        table.move_cursor(row=max(table.row_count - 1, 0))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if not 0 <= event.cursor_row < len(self.entries):
            return
        entry = self.entries[event.cursor_row]
        text = Text("before ", "dim")
        text.append_text(_state(entry.before, cut=None))
        text.append("\nafter  ", "dim")
        text.append_text(_state(entry.after, cut=None))
        self.query_one("#history-detail", Static).update(text)
