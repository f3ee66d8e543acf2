"""Live perturbations of the current text (typed, or a stored example) around a target token.

Every experiment (each `PerturbationKind`, in its order) runs one after another in a worker
whenever the text or the target changes while this tab is shown; a newer change cancels the
older run between experiments, and each result appears as soon as it is ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.reactive import var
from textual.timer import Timer
from textual.widgets import Static
from textual.worker import get_current_worker

from labeller.model.perturb_kinds import PerturbationKind
from labeller.tui.backend import LiveTrace
from labeller.tui.context import backend_of
from labeller.tui.errors import ReportsWorkerErrors
from labeller.tui.experiment_view import ExperimentView
from labeller.tui.text import fmt, peak, shown
from labeller.tui.token_view import TokenView

if TYPE_CHECKING:
    from labeller.model.loading import LoadedModel
    from labeller.model.perturb import Perturbation

DEBOUNCE_S = 0.15


class PerturbPane(ReportsWorkerErrors, Vertical):
    BINDING_GROUP_TITLE = "Perturb tab"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("m", "target_max", "Target: max", id="perturb.max"),
        Binding("R", "rerun", "Rerun", id="perturb.rerun"),
    ]

    @dataclass
    class Done(Message):
        generation: int
        kind: PerturbationKind
        result: Perturbation

    # The text and the chosen target (None: its max); the heading follows them.
    trace: var[LiveTrace | None] = var(None)
    target: var[int | None] = var(None)
    heading: var[Text] = var(Text)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model: LoadedModel | None = None
        self.layer_index = 0
        self.neuron = 0
        self.active = False
        self.generation = 0
        self._ran_generation = -1
        self._debounce: Timer | None = None
        # This generation's finished experiments, for the numbers at the cursor.
        self.results: dict[PerturbationKind, Perturbation] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="perturb-head")
        yield TokenView(id="perturb-tokens")
        yield Static(id="perturb-cursor")
        with VerticalScroll(id="experiments"):
            for kind in PerturbationKind:
                yield ExperimentView(kind)

    def on_mount(self) -> None:
        self.query_one(TokenView).clear("type a text in the Live tab, or press p on an example")

    def configure(self, layer: int, neuron: int) -> None:
        self.layer_index, self.neuron = layer, neuron

    def set_model(self, model: LoadedModel) -> None:
        self.model = model
        self._changed()

    def set_input(self, trace: LiveTrace, target: int | None) -> None:
        """A new text (or a new trace of it): perturb it around `target` (None: its max)."""
        self.trace = trace
        self.target = target if target is not None and target < len(trace.tokens) else None
        self._changed()

    def set_active(self, active: bool) -> None:
        self.active = active
        if active and self._ran_generation != self.generation:
            self._schedule()

    def _target(self) -> int | None:
        """The chosen target, else the max (also while a new text has replaced a longer one)."""
        trace = self.trace
        if trace is None or not trace.tokens:
            return None
        if self.target is not None and self.target < len(trace.tokens):
            return self.target
        return peak(trace.activations)

    def _changed(self) -> None:
        self.generation += 1
        self.results = {}
        trace, target = self.trace, self._target()
        view = self.query_one(TokenView)
        if trace is None or target is None:
            view.clear("type a text in the Live tab, or press p on an example")
            return
        view.show(trace.tokens, trace.activations, _scale(trace), mark=target, cursor=target)
        self._cursor_note(target)
        for experiment in self.query(ExperimentView):
            experiment.show_state("waiting for the run…" if self.active else "runs when shown")
        if self.active:
            self._schedule()

    def _schedule(self) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(DEBOUNCE_S, self._start)

    def _start(self) -> None:
        trace, target, model = self.trace, self._target(), self.model
        if trace is None or target is None or model is None or not self.active:
            return
        self._ran_generation = self.generation
        self.run_experiments(self.generation, model, list(trace.token_ids), target)

    @work(thread=True, exclusive=True, group="perturb", exit_on_error=False)
    def run_experiments(
        self, generation: int, model: LoadedModel, token_ids: list[int], target: int
    ) -> None:
        backend = backend_of(self)
        worker = get_current_worker()
        for kind in PerturbationKind:
            if worker.is_cancelled:
                return
            result = backend.perturb(kind, model, token_ids, self.layer_index, self.neuron, target)
            if not worker.is_cancelled:
                self.post_message(self.Done(generation, kind, result))

    def on_perturb_pane_done(self, event: PerturbPane.Done) -> None:
        if event.generation != self.generation or self.trace is None:
            return
        view = self.query_one(f"#experiment-{event.kind}", ExperimentView)
        view.show_result(event.result, self.trace.tokens)
        self.results[event.kind] = event.result
        self._cursor_note(self.query_one(TokenView).cursor)

    def compute_heading(self) -> Text:
        trace, target = self.trace, self._target()
        head = Text()
        if trace is None or target is None:
            head.append("Perturbations of the live text", "bold")
        else:
            head.append("Target ", "bold")
            head.append(f"'{shown(trace.tokens[target])}'", "bold underline")
            head.append(f" #{target} · activation {fmt(trace.activations[target])}")
            head.append(" (the max)" if target == peak(trace.activations) else " (chosen)", "dim")
        head.append("\n←/→ + enter or click: choose the target · m: back to the max", "dim")
        return head

    def watch_heading(self, heading: Text) -> None:
        self.query_one("#perturb-head", Static).update(heading)

    def on_token_view_moved(self, event: TokenView.Moved) -> None:
        event.stop()
        self._cursor_note(event.index)

    def _cursor_note(self, index: int) -> None:
        """The token under the cursor (or the mouse): its activation, and how perturbing it
        moved the target in each experiment run so far."""
        trace = self.trace
        note = Text()
        if trace is not None and 0 <= index < len(trace.tokens):
            note.append(f"#{index} ")
            note.append(f"'{shown(trace.tokens[index])}'", "bold")
            note.append(f" activation {trace.activations[index]:.4g}")
            changes = [
                (kind, change)
                for kind in PerturbationKind
                if kind in self.results
                and (change := change_at(self.results[kind], index)) is not None
            ]
            if changes:
                note.append(" · target Δ when perturbed here: ", "dim")
            for kind, (delta, spread) in changes:
                note.append(f"{SHORT[kind]} ", "dim")
                note.append(f"{delta:+.3g}", "blue" if delta < 0 else "dark_orange")
                if spread > 0:
                    note.append(f"±{spread:.2g}", "dim")
                note.append("  ")
        self.query_one("#perturb-cursor", Static).update(note)

    def on_token_view_chosen(self, event: TokenView.Chosen) -> None:
        event.stop()
        self.target = event.index
        self._changed()

    def action_target_max(self) -> None:
        self.target = None
        self._changed()

    def action_rerun(self) -> None:
        self._changed()


# Each experiment in a word, for the cursor line.
SHORT: dict[PerturbationKind, str] = {
    PerturbationKind.DELETE: "delete",
    PerturbationKind.RESAMPLE: "resample",
    PerturbationKind.NOISE: "noise",
    PerturbationKind.INSERT: "insert after",
    PerturbationKind.TRUNCATE: "start here",
}


def change_at(result: Perturbation, index: int) -> tuple[float, float] | None:
    """How the target moved when token `index` was perturbed (for truncation: when the text
    started at it), with the spread over the draws; None where the experiment did not touch it."""
    position = result.target + 1 - index if result.kind is PerturbationKind.TRUNCATE else index
    if position not in result.positions:
        return None
    at = result.positions.index(position)
    return result.deltas[at], result.spread[at]


def _scale(trace: LiveTrace) -> float:
    return max([abs(v) for v in trace.activations] + [1e-9])
