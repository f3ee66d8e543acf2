"""The first screen: every scanned neuron, a page at a time, sorted and filtered in SQL."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import var
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from labeller.catalogue.browse import NeuronSummary, SortKey, Stat
from labeller.tui.backend import ListQuery, LoadState, ModelStatus
from labeller.tui.context import annotate_app, backend_of
from labeller.tui.errors import ReportsWorkerErrors, say
from labeller.tui.filter_bar import FilterBar
from labeller.tui.goto_dialog import GotoDialog
from labeller.tui.model_picker import ModelPicker
from labeller.tui.neuron_table import NeuronTable
from labeller.tui.queue_dialog import QueueChoice, QueueDialog
from labeller.tui.text import fmt, plain, status_text
from labeller.tui.walk import Walk, describe_todo

PAGE_SIZE = 100
# Column key, title, width (None: the label column takes what is left).
COLUMNS: tuple[tuple[SortKey, str, int | None], ...] = (
    (SortKey.LAYER, "L", 3),
    (SortKey.NEURON, "N", 6),
    (SortKey.MAX, "max", 7),
    (SortKey.DENSITY, "dens", 6),
    (SortKey.SCORE, "score", 6),
    (SortKey.STATUS, "status", 12),
    (SortKey.LABEL, "label", None),
)
# Sorting by a statistic shows it in a column after density (at 80 columns there is no room
# for all three all the time).
STAT_COLUMNS: dict[SortKey, tuple[Stat, str]] = {
    SortKey.COSINE: (Stat.COSINE, "cos"),
    SortKey.KURTOSIS: (Stat.KURTOSIS, "kurt"),
    SortKey.SKEW: (Stat.SKEW, "skew"),
}
SORT_CYCLE = [key for key, _, _ in COLUMNS] + list(STAT_COLUMNS)
# Numbers are most interesting largest first (cos too: the most negative come on reversing).
DESCENDING_FIRST = (
    SortKey.MAX,
    SortKey.DENSITY,
    SortKey.SCORE,
    SortKey.KURTOSIS,
    SortKey.SKEW,
    SortKey.DETECTOR,
)
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


def _status_cell(row: NeuronSummary) -> Text:
    """The status of the label shown beside it; `!` when another of the neuron's labels needs
    review (the status filter's "needs review" finds those neurons)."""
    cell = status_text(row.shown_status)
    if row.to_review and row.label_status is not None:
        cell.append(" !", "bold yellow")
    return cell


class NeuronListScreen(ReportsWorkerErrors, Screen[None]):
    """The title and status lines follow the reactives below: set them, and the lines repaint."""

    BINDING_GROUP_TITLE = "Neuron list"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "focus_filter('text')", "Find", id="list.find"),
        Binding("f", "focus_filter('layer')", "Filters", id="list.filters"),
        Binding("s", "cycle_sort", "Sort", id="list.sort"),
        Binding("r", "reverse", "Reverse", id="list.reverse"),
        Binding("g", "goto", "Go to L.N", id="list.goto"),
        Binding("d", "queue", "Queue (to do)", id="list.queue"),
        Binding("M", "pick_model", "Model", id="list.model"),
        Binding("right_square_bracket", "page(1)", "Next page", id="list.next_page"),
        Binding("left_square_bracket", "page(-1)", "Prev page", id="list.prev_page"),
        Binding("escape", "focus_table", "To the table", id="list.table", show=False),
        Binding("question_mark", "app.help", "Help", id="list.help"),
        Binding("q", "app.quit", "Quit", id="list.quit"),
    ]

    @dataclass
    class PageLoaded(Message):
        query: ListQuery
        rows: list[NeuronSummary]
        total: int

    @dataclass
    class LayersLoaded(Message):
        model: str
        layers: list[int]

    @dataclass
    class Located(Message):
        """Where the walk's current neuron stands in the list now (rows before it)."""

        query: ListQuery
        before: int

    query_state: var[ListQuery] = var(ListQuery(model="", sort=SortKey.LAYER))  # see __init__
    rows: var[list[NeuronSummary]] = var(list)
    total = var(0)
    busy = var(False)
    model_note = var("")
    # Seconds the model has been loading, while it loads (the spinner's clock).
    loading_for: var[float | None] = var(None)
    heading: var[Text] = var(Text)
    status_line: var[Text] = var(Text)

    def __init__(self, model: str) -> None:
        super().__init__()
        query = ListQuery(model=model, sort=SortKey.LAYER, limit=PAGE_SIZE)
        self.set_reactive(NeuronListScreen.query_state, query)
        self.scanned: list[int] = []
        self._cursor_after_load: int | None = 0
        self._open_after_load = False  # a queue just started: open its first neuron
        self.walk: Walk | None = None  # the walk the last neuron was opened in
        self._spinner: Timer | None = None
        self._loading_since = 0.0

    def compose(self) -> ComposeResult:
        yield Static(id="list-title")
        yield FilterBar(id="filters")
        yield NeuronTable(id="neurons")
        yield Static(id="list-detail")
        yield Static(id="list-status")
        yield Footer()

    def on_mount(self) -> None:
        annotate_app(self).model_signal.subscribe(self, self._model_status)
        self.reload()
        self.load_layers(self.query_state.model)
        self.query_one(NeuronTable).focus()

    def on_screen_resume(self) -> None:
        """Back from a neuron: its label may have changed, so re-read the page in place, or,
        after a walk, the page of the neuron the walk got to, with the cursor on it."""
        walk = self.walk
        if walk is not None and walk.spec == self.query_state.spec:
            self.busy = True
            self.locate(self.query_state, walk)
        elif self.rows:
            self._cursor_after_load = self.query_one(NeuronTable).cursor_row
            self.reload()

    @work(thread=True, exclusive=True, group="page", exit_on_error=False)
    def locate(self, query: ListQuery, walk: Walk) -> None:
        backend = backend_of(self)
        place = walk.places.get(walk.current) or backend.place(
            query.model, query.spec, *walk.current
        )
        _, before = backend.step(query.model, query.spec, place, backward=True)
        if not get_current_worker().is_cancelled:
            self.post_message(self.Located(query, before or 0))

    def on_neuron_list_screen_located(self, event: Located) -> None:
        if event.query == self.query_state:
            offset = event.before // PAGE_SIZE * PAGE_SIZE
            self._requery(cursor=event.before - offset, offset=offset)

    def _model_status(self, status: ModelStatus) -> None:
        """Loading shows a spinner and the seconds so far; torch takes a few to import."""
        if status.name != self.query_state.model:
            return
        self.model_note = status.describe()
        if status.state is LoadState.LOADING and self._spinner is None:
            self._loading_since = time.monotonic()
            self._spinner = self.set_interval(0.2, self._tick)
            self.loading_for = 0.0
        elif status.state is not LoadState.LOADING and self._spinner is not None:
            self._spinner.stop()
            self._spinner = None
            self.loading_for = None

    def _tick(self) -> None:
        self.loading_for = time.monotonic() - self._loading_since

    def compute_heading(self) -> Text:
        backend = backend_of(self)
        title = Text("labeller annotate", "bold")
        title.append(" · ")
        title.append_text(plain(self.query_state.model, "bold"))
        title.append(" · ")
        title.append_text(plain(str(backend.db_path)))
        title.append(" · annotator ")
        title.append_text(plain(backend.annotator, "bold"))
        return title

    def watch_heading(self, heading: Text) -> None:
        self.query_one("#list-title", Static).update(heading)

    # --- loading --------------------------------------------------------------------------

    def reload(self) -> None:
        self.busy = True
        self.load_page(self.query_state)

    @work(thread=True, exclusive=True, group="page", exit_on_error=False)
    def load_page(self, query: ListQuery) -> None:
        rows, total = backend_of(self).page(query)
        if not get_current_worker().is_cancelled:
            self.post_message(self.PageLoaded(query, rows, total))

    @work(thread=True, exclusive=True, group="layers", exit_on_error=False)
    def load_layers(self, model: str) -> None:
        self.post_message(self.LayersLoaded(model, backend_of(self).layers(model)))

    def on_neuron_list_screen_layers_loaded(self, event: LayersLoaded) -> None:
        if event.model == self.query_state.model:
            self.scanned = event.layers
            self.query_one(FilterBar).set_layers(event.layers)

    def on_neuron_list_screen_page_loaded(self, event: PageLoaded) -> None:
        if event.query != self.query_state:
            return
        if event.total and event.query.offset >= event.total:
            last = (event.total - 1) // PAGE_SIZE * PAGE_SIZE
            self.query_state = replace(self.query_state, offset=last)
            self.reload()
            return
        self.rows, self.total = event.rows, event.total
        self.busy = False
        self._populate()
        if self._open_after_load:
            self._open_after_load = False
            if self.rows:
                self._open_row(0)
            else:
                say(self.app, "nothing to do in this queue: every neuron in the list is done")
        if not self.model_note:
            self.call_after_refresh(annotate_app(self).ensure_model, self.query_state.model)

    def _populate(self) -> None:
        table = self.query_one(NeuronTable)
        table.clear(columns=True)
        query = self.query_state
        columns = list(COLUMNS)
        stat = STAT_COLUMNS.get(query.sort)
        if stat is not None:
            columns.insert(4, (query.sort, stat[1], 6))
        by_detector = query.sort is SortKey.DETECTOR
        if by_detector:  # its score, under the detector's name
            columns.insert(4, (query.sort, (query.spec.detector or "detector")[:6], 6))
        fixed = sum((width or 0) + 2 for _, _, width in columns)
        label_width = max(16, self.size.width - fixed - 3)
        for key, title, width in columns:
            arrow = ("▼" if query.descending else "▲") if key is query.sort else ""
            table.add_column(Text(f"{title}{arrow}"), key=key.value, width=width or label_width)
        for row in self.rows:
            extra = [] if stat is None else [Text(_stat(row.stat(stat[0])), justify="right")]
            if by_detector:
                extra = [Text(_stat(row.detector), justify="right")]
            label = row.label or ""
            if len(label) > label_width:
                label = label[: label_width - 1] + "…"
            table.add_row(
                Text(str(row.layer), justify="right"),
                Text(str(row.neuron), justify="right"),
                Text(fmt(row.max), justify="right"),
                Text(f"{row.density:.1%}" if row.density is not None else "–", justify="right"),
                *extra,
                Text(fmt(row.score, 2), justify="right"),
                _status_cell(row),
                plain(label),
                key=f"{row.layer}.{row.neuron}",
            )
        if not self.rows:
            self.query_one("#list-detail", Static).update("")
        table.has_previous = query.offset > 0
        table.has_next = query.offset + len(self.rows) < self.total
        if self._cursor_after_load is not None and self.rows:
            at = self._cursor_after_load if self._cursor_after_load >= 0 else len(self.rows) - 1
            table.move_cursor(row=min(at, len(self.rows) - 1))
        self._cursor_after_load = None

    def compute_status_line(self) -> Text:
        query = self.query_state
        if self.busy:
            text = Text("loading…", "italic")
        elif not self.total:
            text = Text("no neurons match these filters", "yellow")
        else:
            pages = math.ceil(self.total / PAGE_SIZE)
            text = Text(
                f"{query.offset + 1:,}–{query.offset + len(self.rows):,} of {self.total:,}"
                f" · page {query.offset // PAGE_SIZE + 1}/{pages}"
            )
            text.append(f" · sorted by {query.sort.value}", "dim")
            text.append(" ▼" if query.descending else " ▲", "dim")
        if query.todo is not None:
            text.append(f" · queue: {describe_todo(query.todo, query.below)} (d)", "yellow")
        if self.loading_for is not None:
            elapsed = self.loading_for
            text.append(f" · {SPINNER[int(elapsed * 5) % len(SPINNER)]}", "bold")
            text.append(f" {self.model_note} {elapsed:.0f} s", "dim")
        elif self.model_note:
            text.append(f" · {self.model_note}", "dim")
        return text

    def watch_status_line(self, line: Text) -> None:
        self.query_one("#list-status", Static).update(line)

    def on_resize(self) -> None:
        if self.rows:
            self._cursor_after_load = self.query_one(NeuronTable).cursor_row
            self._populate()

    # --- changing the query ---------------------------------------------------------------

    def _requery(self, cursor: int | None = 0, **changes: object) -> None:
        self.query_state = replace(self.query_state, **changes)  # type: ignore[arg-type]
        self._cursor_after_load = cursor
        self.reload()

    def on_filter_bar_changed(self, event: FilterBar.Changed) -> None:
        f = event.filters
        sort = self.query_state.sort
        if (
            sort is SortKey.DETECTOR
            and replace(self.query_state, ranges=f.ranges).spec.detector is None
        ):
            sort = SortKey.LAYER  # the detector it sorted by is no longer named
        self._requery(
            offset=0,
            sort=sort,
            layer=f.layer,
            status=f.status,
            min_score=f.min_score,
            max_score=f.max_score,
            text=f.text,
            ranges=f.ranges,
        )

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = SortKey(str(event.column_key.value))
        descending = not self.query_state.descending if key is self.query_state.sort else False
        self._requery(offset=0, sort=key, descending=descending)

    def action_cycle_sort(self) -> None:
        # Sorting by a detector comes into the cycle once the filter names one (`d:NAME>x`).
        cycle = SORT_CYCLE + [SortKey.DETECTOR] * (self.query_state.spec.detector is not None)
        index = cycle.index(self.query_state.sort)
        key = cycle[(index + 1) % len(cycle)]
        # Numbers are most interesting largest first; names and positions in order.
        descending = key in DESCENDING_FIRST
        self._requery(offset=0, sort=key, descending=descending)

    def action_reverse(self) -> None:
        self._requery(offset=0, descending=not self.query_state.descending)

    def on_neuron_table_page_requested(self, event: NeuronTable.PageRequested) -> None:
        self._page(event.step, cursor=0 if event.step > 0 else -1)

    def action_page(self, step: int) -> None:
        self._page(step, cursor=0)

    def _page(self, step: int, cursor: int) -> None:
        offset = self.query_state.offset + step * PAGE_SIZE
        if offset < 0 or (step > 0 and offset >= self.total):
            return
        self._requery(cursor=cursor, offset=offset)

    def action_focus_filter(self, which: str) -> None:
        self.query_one(f"#{which}").focus()

    def action_focus_table(self) -> None:
        self.query_one(NeuronTable).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one(NeuronTable).focus()

    # --- going places ---------------------------------------------------------------------

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The highlighted neuron's whole label below the table: the label column is cut to
        the width, to a few characters at 80 columns."""
        detail = self.query_one("#list-detail", Static)
        if not 0 <= event.cursor_row < len(self.rows):
            detail.update("")
            return
        row = self.rows[event.cursor_row]
        text = Text(f"{row.layer}.{row.neuron} ", "bold")
        if row.label:
            text.append_text(plain(row.label))
        else:
            text.append("no label yet", "dim")
        detail.update(text)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self.rows):
            self._open_row(event.cursor_row)

    def _open_row(self, index: int) -> None:
        """Open the row's neuron as a step of a walk through the list as it is shown."""
        row = self.rows[index]
        query = self.query_state
        neuron = (row.layer, row.neuron)
        rank = query.offset + index + 1
        self.walk = Walk.start(query.model, query.spec, self.total, neuron, rank)
        self.open_neuron(*neuron, walk=self.walk)

    def open_neuron(self, layer: int, neuron: int, walk: Walk | None = None) -> None:
        # Imported on first use: the neuron page's widgets are not needed for the first paint.
        from labeller.tui.neuron_screen import NeuronScreen

        if walk is None:
            self.walk = None
        self.app.push_screen(NeuronScreen(self.query_state.model, layer, neuron, walk))

    def action_goto(self) -> None:
        def chosen(found: tuple[int, int] | None) -> None:
            if found is not None:
                self.open_neuron(*found)

        self.app.push_screen(GotoDialog(self.query_state.model, self.scanned), chosen)

    def action_queue(self) -> None:
        """Narrow the list to a queue (or widen it back) and open its first neuron."""
        query = self.query_state
        current = QueueChoice(query.todo, query.below) if query.todo is not None else None

        def chosen(choice: QueueChoice | None) -> None:
            if choice is None:
                return
            self._open_after_load = True
            self._requery(offset=0, todo=choice.todo, below=choice.below)

        self.app.push_screen(QueueDialog(current), chosen)

    def action_pick_model(self) -> None:
        names = annotate_app(self).model_names

        def chosen(name: str | None) -> None:
            if name is None or name == self.query_state.model:
                return
            self.query_state = ListQuery(model=name, sort=SortKey.LAYER, limit=PAGE_SIZE)
            self.walk = None
            self.model_note = ""
            self.query_one(FilterBar).reset()
            self.reload()
            self.load_layers(name)
            annotate_app(self).ensure_model(name)

        self.app.push_screen(ModelPicker(names, self.query_state.model), chosen)


def _stat(value: float | None) -> str:
    """A statistic in six cells: two decimals while they fit, else three significant digits."""
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.3g}"
