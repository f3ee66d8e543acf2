"""Falsification help: texts an LLM expects to fire (or not fire) the neuron, run for real."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.message import Message
from textual.widgets import DataTable, Static
from textual.worker import Worker, WorkerState

from labeller.explain.falsify import FIRE_SHARE, Verdict
from labeller.tui.context import backend_of
from labeller.tui.dialog import Dialog
from labeller.tui.errors import ReportsWorkerErrors, describe
from labeller.tui.text import cut_around, heat, plain

if TYPE_CHECKING:
    from labeller.model.loading import LoadedModel


class SuggestionsScreen(ReportsWorkerErrors, Dialog[str]):
    """Returns the text of the chosen row (enter) to load it into Live, or None."""

    @dataclass
    class Ready(Message):
        """The LLM's suggested texts, run through the model and judged."""

        llm: str
        verdicts: list[Verdict]

    def __init__(
        self, model: LoadedModel, layer: int, neuron: int, label: str, neuron_max: float
    ) -> None:
        super().__init__()
        self.model, self.layer_index, self.neuron = model, layer, neuron
        self.label, self.neuron_max = label, neuron_max
        self.verdicts: list[Verdict] = []

    def compose_body(self) -> ComposeResult:
        title = Text("Suggested tests for ", "bold")
        title.append_text(plain(self.label, "bold italic"))
        yield Static(title)
        yield Static(Text("asking the LLM…", "dim"), id="suggest-status")
        table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True)
        yield table

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for column in ("label says", "neuron", "", "peak", "text (enter: try it live)"):
            table.add_column(column)
        self.ask()

    @work(thread=True, exclusive=True, group="suggest", exit_on_error=False)
    def ask(self) -> None:
        llm, verdicts = backend_of(self).suggest_tests(
            self.model, self.layer_index, self.neuron, self.label, self.neuron_max
        )
        self.post_message(self.Ready(llm, verdicts))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.state is WorkerState.ERROR and event.worker.error is not None:
            self.query_one("#suggest-status", Static).update(
                Text(describe(event.worker.error), "red")
            )

    def on_suggestions_screen_ready(self, event: SuggestionsScreen.Ready) -> None:
        self.verdicts = event.verdicts
        hits = sum(v.hit for v in event.verdicts)
        status = Text(f"{event.llm}: {hits} of {len(event.verdicts)} as the label predicts · ")
        status.append(
            f"fires = peak ≥ {FIRE_SHARE:.0%} of the scan max ({self.neuron_max:.3g})", "dim"
        )
        self.query_one("#suggest-status", Static).update(status)
        table = self.query_one(DataTable)
        scale = max(self.neuron_max, 1e-9)
        for verdict in event.verdicts:
            peak_at = max(range(len(verdict.activations)), key=verdict.activations.__getitem__)
            start, end = cut_around(verdict.tokens, peak_at, 70)
            table.add_row(
                Text("fires" if verdict.suggestion.should_fire else "quiet"),
                Text("fired" if verdict.fired else "quiet"),
                Text("✓ hit", "green") if verdict.hit else Text("✗ miss", "bold red"),
                Text(f"{verdict.peak:.3f}"),
                heat(verdict.tokens, verdict.activations, scale, peak_at, start=start, end=end),
            )
        table.focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self.verdicts):
            self.dismiss(self.verdicts[event.cursor_row].suggestion.text)
