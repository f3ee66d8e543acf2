"""Search across neurons: type a text, see which neurons fire most on it.

The interactive Neuroscope run backwards. The text runs once through the model, every neuron of
every scanned layer is ranked on it (in the model code, in torch), and two tables show the
result: the neurons that fire most anywhere in the text, and those that fire most at the token
under the cursor. The text's tokens are coloured by the highlighted neuron; enter opens its page.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import var
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Input, Static
from textual.worker import get_current_worker

from labeller.tui.backend import LoadState, ModelStatus, SearchResult
from labeller.tui.context import annotate_app, backend_of
from labeller.tui.errors import ReportsWorkerErrors, say
from labeller.tui.text import plain, shown
from labeller.tui.token_view import TokenView

if TYPE_CHECKING:
    from labeller.model.search import NeuronHit

DEBOUNCE_S = 0.12
TOP = 50
PER_TOKEN = 10
HINT = "type a text: the neurons of every scanned layer that fire most on it appear below"


class HitTable(DataTable[Text]):
    """Found neurons, best first; enter opens the highlighted one."""

    BINDING_GROUP_TITLE = "Found neurons"

    def __init__(self, *, id: str) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, id=id)
        self.hits: list[NeuronHit] = []

    def hit(self) -> NeuronHit | None:
        row = self.cursor_row
        return self.hits[row] if 0 <= row < len(self.hits) else None


class SearchScreen(ReportsWorkerErrors, Screen[None]):
    BINDING_GROUP_TITLE = "Search neurons"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="search.back"),
        Binding("ctrl+f", "focus_text", "To the text", id="search.text"),
        Binding("ctrl+l", "clear_text", "Clear text", id="search.clear"),
        Binding("ctrl+r", "toggle_relative", "Rank: raw / share of max", id="search.relative"),
        Binding("question_mark", "app.help", "Help", id="search.help"),
    ]

    @dataclass
    class Found(Message):
        result: SearchResult

    result: var[SearchResult | None] = var(None)
    relative = var(False)
    model_note = var("model loading…")
    status_line: var[Text] = var(Text)

    def __init__(self, model: str, text: str = "") -> None:
        super().__init__()
        self.model_name = model
        self.initial_text = text
        self._debounce: Timer | None = None
        self._focused_table = "#search-overall"
        self._painted: NeuronHit | None = None

    def compose(self) -> ComposeResult:
        title = Text("Search neurons by text", "bold")
        title.append(" · ")
        title.append_text(plain(self.model_name, "bold"))
        title.append(" · enter on a neuron opens it · tab moves between boxes", "dim")
        yield Static(title, id="search-title")
        yield Input(self.initial_text, placeholder=HINT, id="search-text")
        yield Static(id="search-status")
        yield TokenView(id="search-tokens")
        yield Static(id="search-cursor")
        with Vertical(id="search-tables"):
            yield Static(Text("Most active anywhere in the text", "bold"), classes="caption")
            yield HitTable(id="search-overall")
            yield Static(id="search-token-caption", classes="caption")
            yield HitTable(id="search-token")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(TokenView).clear(HINT)
        for table in self.query(HitTable):
            table.add_columns(*self._columns(table.id == "search-overall"))
        self.query_one("#search-text", Input).focus()
        app = annotate_app(self)
        app.model_signal.subscribe(self, self._model_status)
        app.ensure_model(self.model_name)

    def _columns(self, overall: bool) -> list[str]:
        return ["#", "L", "N", "act", "÷max", *(["at token"] if overall else []), "label"]

    def _model_status(self, status: ModelStatus) -> None:
        if status.name != self.model_name:
            return
        self.model_note = status.describe()
        if status.state is LoadState.READY:
            self._schedule(0.0)

    # --- searching ------------------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._schedule(DEBOUNCE_S)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.query_one(self._focused_table).focus()

    def _schedule(self, delay: float) -> None:
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        if delay <= 0:
            self._search_now()
        else:
            self._debounce = self.set_timer(delay, self._search_now)

    def _search_now(self) -> None:
        text = self.query_one("#search-text", Input).value
        model = backend_of(self).loaded(self.model_name)
        if model is None:
            return
        if not text.strip():
            self.result = None
            self._show()
            return
        self.search(text, self.relative)

    @work(thread=True, exclusive=True, group="search", exit_on_error=False)
    def search(self, text: str, relative: bool) -> None:
        backend = backend_of(self)
        model = backend.loaded(self.model_name)
        if model is None:
            return
        result = backend.search_neurons(
            model, self.model_name, text, relative=relative, top=TOP, per_token=PER_TOKEN
        )
        if not get_current_worker().is_cancelled:
            self.post_message(self.Found(result))

    def on_search_screen_found(self, event: Found) -> None:
        if event.result.text != self.query_one("#search-text", Input).value:
            return  # a newer text is on its way
        self.result = event.result
        self._show()

    # --- showing --------------------------------------------------------------------------

    def _show(self) -> None:
        result = self.result
        view = self.query_one(TokenView)
        overall = self.query_one("#search-overall", HitTable)
        if result is None:
            view.clear(HINT)
            self._fill(overall, [], True)
            self._fill(self.query_one("#search-token", HitTable), [], False)
            self.query_one("#search-cursor", Static).update("")
            self.query_one("#search-token-caption", Static).update("")
            return
        self._fill(overall, result.search.overall, True)
        first = result.search.overall[0] if result.search.overall else None
        cursor = first.position if first is not None else 0
        self._paint(first, cursor)
        self._token_table(min(cursor, len(result.encoded.tokens) - 1))

    def _fill(self, table: HitTable, hits: list[NeuronHit], overall: bool) -> None:
        result = self.result
        row_at = table.cursor_row if table.hits else 0
        table.clear()
        table.hits = list(hits)
        for rank, hit in enumerate(hits, 1):
            summary = result.rows.get((hit.layer, hit.neuron)) if result else None
            label = plain(summary.label if summary and summary.label else "", "")
            if summary is None:
                label = Text("not in the catalogue", "dim")
            cells: list[Text] = [
                Text(str(rank), "dim", justify="right"),
                Text(str(hit.layer), justify="right"),
                Text(str(hit.neuron), justify="right"),
                Text(f"{hit.activation:.3g}", "bold" if not self.relative else "", justify="right"),
                Text(_share(hit), "bold" if self.relative else "", justify="right"),
            ]
            if overall and result is not None:
                token = result.encoded.tokens[hit.position]
                cells.append(plain(f"#{hit.position} '{shown(token)}'"))
            cells.append(label)
            table.add_row(*cells, key=f"{hit.layer}.{hit.neuron}")
        if hits:
            table.move_cursor(row=min(row_at, len(hits) - 1))

    def _paint(self, hit: NeuronHit | None, cursor: int | None = None) -> None:
        """The text's tokens coloured by one found neuron's activations, its max underlined."""
        result = self.result
        if result is None:
            return
        tokens = result.encoded.tokens
        values = result.search.traces.get((hit.layer, hit.neuron), []) if hit else []
        if len(values) != len(tokens):
            values = [0.0] * len(tokens)
        scale = max([abs(v) for v in values] + [1e-9])
        self.query_one(TokenView).show(
            tokens, values, scale, mark=hit.position if hit else None, cursor=cursor
        )
        self._painted = hit

    def _token_table(self, index: int) -> None:
        result = self.result
        if result is None or not 0 <= index < len(result.search.per_token):
            return
        token = result.encoded.tokens[index]
        caption = Text("Most active at token ", "bold")
        caption.append(f"#{index} '{shown(token)}'", "bold reverse")
        caption.append("  (←/→ in the tokens move it)", "dim")
        self.query_one("#search-token-caption", Static).update(caption)
        self._fill(self.query_one("#search-token", HitTable), result.search.per_token[index], False)
        self._cursor_line(index)

    def _cursor_line(self, index: int) -> None:
        result = self.result
        hit = self._painted
        line = Text()
        if result is None or not 0 <= index < len(result.encoded.tokens):
            self.query_one("#search-cursor", Static).update(line)
            return
        line.append(f"#{index} ")
        line.append(f"'{shown(result.encoded.tokens[index])}'", "bold")
        if hit is not None:
            values = result.search.traces.get((hit.layer, hit.neuron))
            if values is not None and index < len(values):
                line.append(f" · L{hit.layer} N{hit.neuron} {values[index]:.4g} here", "")
        self.query_one("#search-cursor", Static).update(line)

    def compute_status_line(self) -> Text:
        result = self.result
        if backend_of(self).loaded(self.model_name) is None:
            return Text(self.model_note, "dim")
        if result is None:
            return Text("no text yet", "dim")
        found = result.search
        layers = found.layers
        span = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}–{layers[-1]}"
        line = Text(f"{len(result.encoded.tokens)} tokens · {found.neurons_searched:,} neurons ")
        line.append(f"({span}) · ranked by ")
        line.append(
            "share of each neuron's scanned max" if found.relative else "activation", "bold"
        )
        line.append(" (ctrl+r switches)", "dim")
        if result.encoded.dropped:
            line.append(
                f"\nthe last {result.encoded.dropped} tokens do not fit: not searched", "yellow"
            )
        return line

    def watch_status_line(self, line: Text) -> None:
        self.query_one("#search-status", Static).update(line)

    # --- moving about ---------------------------------------------------------------------

    def on_token_view_moved(self, event: TokenView.Moved) -> None:
        event.stop()
        self._token_table(event.index)

    def on_token_view_chosen(self, event: TokenView.Chosen) -> None:
        event.stop()
        self._token_table(event.index)
        self.query_one("#search-token", HitTable).focus()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = event.data_table
        if not isinstance(table, HitTable) or not table.has_focus:
            return
        hit = table.hit()
        if hit is not None:
            view = self.query_one(TokenView)
            self._paint(hit, view.cursor if table.id == "search-token" else hit.position)
            self._cursor_line(view.cursor)

    def on_descendant_focus(self, event: object) -> None:
        focused = self.focused
        if isinstance(focused, HitTable):
            self._focused_table = f"#{focused.id}"
            hit = focused.hit()
            if hit is not None and self.result is not None:
                view = self.query_one(TokenView)
                self._paint(hit, view.cursor)
                self._cursor_line(view.cursor)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        table = event.data_table
        if not isinstance(table, HitTable):
            return
        event.stop()
        hit = table.hit()
        if hit is None:
            return
        if self.result is None or (hit.layer, hit.neuron) not in self.result.rows:
            say(
                self.app,
                f"L{hit.layer} N{hit.neuron} is not in the catalogue (its layer was not scanned)",
                severity="warning",
            )
            return
        from labeller.tui.neuron_screen import NeuronScreen

        self.app.push_screen(NeuronScreen(self.model_name, hit.layer, hit.neuron, None))

    def action_back(self) -> None:
        self.dismiss()

    def action_focus_text(self) -> None:
        self.query_one("#search-text", Input).focus()

    def action_clear_text(self) -> None:
        text = self.query_one("#search-text", Input)
        text.value = ""
        text.focus()

    def action_toggle_relative(self) -> None:
        self.relative = not self.relative
        self._schedule(0.0)


def _share(hit: NeuronHit) -> str:
    return "–" if hit.relative is None else f"{hit.relative:.0%}"
