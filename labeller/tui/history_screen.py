"""Who changed what on a neuron's labels, newest last, read fresh from the catalogue."""

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


def _state(state: LabelState | None) -> Text:
    if state is None:
        return Text("–", "dim")
    out = Text(f"#{state.explanation_id} {state.status.value} ")
    out.append_text(plain(state.text[:60]))
    return out


def _action(entry: HistoryEntry) -> Text:
    out = Text(entry.action, "bold")
    if entry.edited_from is not None:
        out.append(f" · edited from #{entry.edited_from}", "dim")
    return out


class HistoryScreen(ReportsWorkerErrors, Dialog[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("h,q", "close", "Close", id="history.close")]

    @dataclass
    class Loaded(Message):
        entries: list[HistoryEntry]

    def __init__(self, model: str, layer: int, neuron: int) -> None:
        super().__init__()
        self.model, self.layer_index, self.neuron = model, layer, neuron

    def compose_body(self) -> ComposeResult:
        yield Static(Text(f"History of {self.model} {self.layer_index}.{self.neuron}", "bold"))
        table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True)
        yield table

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
