"""The neuron list's filters: layer, status, score range, statistic ranges and text in labels."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.timer import Timer
from textual.validation import ValidationResult, Validator
from textual.widgets import Input, Select

from labeller.catalogue.browse import NeuronStatus, StatRange, parse_stat_ranges
from labeller.errors import UserError

DEBOUNCE_S = 0.25


@dataclass(frozen=True)
class Filters:
    layer: int | None = None
    status: NeuronStatus | None = None
    min_score: float | None = None
    max_score: float | None = None
    text: str = ""
    ranges: tuple[StatRange, ...] = ()


class StatRanges(Validator):
    """`kurt>10 cos<-0.3`: the box turns red (and filters nothing) until it reads."""

    def validate(self, value: str) -> ValidationResult:
        try:
            parse_stat_ranges(value)
        except UserError as exc:
            return self.failure(str(exc))
        return self.success()


def _ranges(value: str) -> tuple[StatRange, ...]:
    try:
        return tuple(parse_stat_ranges(value))
    except UserError:
        return ()


def _number(value: str) -> float | None:
    try:
        return float(value) if value.strip() else None
    except ValueError:
        return None


class FilterBar(Horizontal):
    @dataclass
    class Changed(Message):
        filters: Filters

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.filters = Filters()
        self._debounce: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Select[int]([], prompt="all layers", compact=True, id="layer")
        yield Select[NeuronStatus](
            [(Text(s.value.replace("_", " ")), s) for s in NeuronStatus],
            prompt="any status",
            compact=True,
            id="status",
        )
        yield Input(placeholder="score≥", type="number", compact=True, id="min", classes="score")
        yield Input(placeholder="score≤", type="number", compact=True, id="max", classes="score")
        yield Input(
            placeholder="cos<-.3 kurt>9",
            compact=True,
            id="stats",
            validators=[StatRanges()],
            tooltip="Statistic ranges: cos(w_in,w_out), kurt(osis), skew, d:DETECTOR (its score, "
            "then `s` sorts by it); e.g. kurt>10 cos<-0.3 d:number>0.3",
        )
        yield Input(placeholder="/ text in labels", compact=True, id="text")

    def set_layers(self, layers: list[int]) -> None:
        self.query_one("#layer", Select).set_options((Text(f"layer {n}"), n) for n in layers)

    def reset(self) -> None:
        """Clear every filter without announcing it (the owner starts a fresh query)."""
        if self._debounce is not None:
            self._debounce.stop()
        with self.prevent(Select.Changed, Input.Changed):
            for select in self.query(Select):
                select.clear()
            for field in self.query(Input):
                field.value = ""
        self.filters = Filters()

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self._schedule(0.0)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self._schedule(DEBOUNCE_S)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._schedule(0.0)  # and the screen moves focus to the table

    def _schedule(self, delay: float) -> None:
        if self._debounce is not None:
            self._debounce.stop()
            self._debounce = None
        if delay <= 0:
            self._emit()
        else:
            self._debounce = self.set_timer(delay, self._emit)

    def _read(self) -> Filters:
        layer = self.query_one("#layer", Select).value
        status = self.query_one("#status", Select).value
        return Filters(
            layer=layer if isinstance(layer, int) else None,
            status=status if isinstance(status, NeuronStatus) else None,
            min_score=_number(self.query_one("#min", Input).value),
            max_score=_number(self.query_one("#max", Input).value),
            text=self.query_one("#text", Input).value.strip(),
            ranges=_ranges(self.query_one("#stats", Input).value),
        )

    def _emit(self) -> None:
        filters = self._read()
        if filters != self.filters:
            self.filters = filters
            self.post_message(self.Changed(filters))
