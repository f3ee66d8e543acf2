"""One neuron: its examples, its label candidates, live text and perturbations, and labelling.

The page remembers the label version it read; every change is made against that version, so if
someone else changed the neuron's labels meanwhile the change is refused, their change is shown,
and the page reloads before anything is overwritten.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import var
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane, TextArea
from textual.worker import Worker, WorkerState, get_current_worker

from labeller.catalogue.labels import StaleLabel
from labeller.records import (
    DetectorScore,
    Explanation,
    LabelStatus,
    RelatedNeuron,
    neuron_name,
)
from labeller.sealing import held_out_count
from labeller.tui.backend import LoadState, ModelStatus, NeuronPage
from labeller.tui.context import annotate_app, backend_of
from labeller.tui.errors import ReportsWorkerErrors, say
from labeller.tui.examples_pane import ExamplesPane
from labeller.tui.history_screen import HistoryScreen
from labeller.tui.label_editor import LabelDraft, LabelEditor
from labeller.tui.labels_pane import LabelsPane
from labeller.tui.live_pane import LivePane
from labeller.tui.perturb_pane import PerturbPane
from labeller.tui.related_dialog import RelatedDialog
from labeller.tui.suggestions_screen import SuggestionsScreen
from labeller.tui.text import editable, fmt, plain, status_text
from labeller.tui.unseal_dialog import UnsealDialog
from labeller.tui.walk import Neuron, Walk

if TYPE_CHECKING:
    from labeller.catalogue.browse import ListPlace
    from labeller.model.loading import LoadedModel
    from labeller.records import Example, NeuronView

FOCUS_IN_TAB = {
    "examples": "#example-list",
    "labels": "#candidates",
    "live": "#live-text",
    "perturb": "#perturb-tokens",
}


class NeuronScreen(ReportsWorkerErrors, Screen[None]):
    BINDING_GROUP_TITLE = "Neuron page"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="neuron.back"),
        Binding("a", "accept", "Accept", id="label.accept"),
        Binding("e", "edit", "Edit", id="label.edit"),
        Binding("w", "write", "Write new", id="label.write"),
        Binding("x", "set_status('rejected')", "Reject", id="label.reject"),
        Binding("v", "set_status('needs_review')", "Needs review", id="label.review"),
        Binding("u", "undo", "Undo", id="label.undo"),
        Binding("h", "history", "History", id="label.history"),
        Binding("l", "llm_score", "LLM score", id="label.llm_score"),
        Binding("t", "suggest", "Suggest tests", id="label.suggest"),
        Binding("p", "perturb_example", "Perturb example", id="neuron.perturb_example"),
        Binding("n", "walk(1)", "Next neuron", id="neuron.next"),
        Binding("N", "walk(-1)", "Previous neuron", id="neuron.previous"),
        Binding("U", "unseal", "Unseal held-out", id="neuron.unseal"),
        Binding("D", "detector_label", "Detector as label", id="label.from_detector"),
        Binding("c", "dla_strip", "Colour by DLA", id="neuron.dla_strip"),
        Binding("o", "related", "Related neurons", id="neuron.related"),
        # Plain digits first (alt+digit is often the terminal's own); in the live text box,
        # where digits type, escape first.
        Binding("1,alt+1", "tab('examples')", "Examples tab", id="tab.examples", show=False),
        Binding("2,alt+2", "tab('labels')", "Labels tab", id="tab.labels", show=False),
        Binding("3,alt+3", "tab('live')", "Live tab", id="tab.live", show=False),
        Binding("4,alt+4", "tab('perturb')", "Perturb tab", id="tab.perturb", show=False),
        Binding("question_mark", "app.help", "Help", id="neuron.help"),
    ]

    @dataclass
    class Loaded(Message):
        page: NeuronPage
        select: int | None

    @dataclass
    class Changed(Message):
        """A label change went through; `notes` say what happened, `select` what to show."""

        notes: list[str]
        select: int | None

    @dataclass
    class ExampleTokens(Message):
        """A stored example's exact tokens, for the live text and the perturbations."""

        token_ids: list[int]
        target: int
        switch: bool

    @dataclass
    class WalkAhead(Message):
        """The current neuron's place in the walked list, the next one, and how many are left."""

        place: ListPlace
        after: ListPlace | None
        left: int | None  # None: still counting

    @dataclass
    class PageAhead(Message):
        """The next neuron's page, read while this one is open (shown at once on `n`)."""

        page: NeuronPage

    @dataclass
    class Stepped(Message):
        step: int
        found: ListPlace | None
        edge: Neuron  # the end of the trail it was found from

    @dataclass
    class Strips(Message):
        """An example's per-token activations and DLA, computed by the model."""

        activations: list[float]
        dla: list[float]

    @dataclass
    class Related(Message):
        related: list[RelatedNeuron]
        source: str
        neuron: tuple[int, int]

    @dataclass
    class Ranks(Message):
        """Per top example: the neuron's rank in its layer at the example's max token."""

        ranks: dict[int, int]
        layer_width: int
        neuron: tuple[int, int]  # (layer, neuron): the page may have turned since

    # The page as last read and the label it acts on; the heading follows them.
    page: var[NeuronPage | None] = var(None)
    selected: var[Explanation | None] = var(None)
    heading: var[Text] = var(Text)
    walk_note = var("")  # "queue: ... · k of N · m left"
    columns = var(80)  # the screen's width, for the heading's first line

    def __init__(
        self,
        model: str,
        layer: int,
        neuron: int,
        walk: Walk | None = None,
    ) -> None:
        """`walk`: the list or queue this page is a step of (n and N step it: the page turns
        to that neuron in place, so its tab, highlighted example and scrolling stay)."""
        super().__init__()
        self.model_name = model
        self.layer_index = layer
        self.neuron = neuron
        self.walk = walk
        # The save in flight, as typed: title, draft, and the label it edits.
        self._draft: tuple[str, LabelDraft, int | None] | None = None
        self.examples_sealed: bool | None = None  # as the Examples tab last showed them
        # While the page turns to another neuron: the heading shown until its data arrives.
        self._held_heading: Text | None = None
        # The top example the Live and Perturb tabs are to start from, fetched when one of them
        # is shown (a page turned on another tab does not trace what nobody sees).
        self._example_due = False
        # The next neuron's page as the look-ahead read it, and whether the page shown came
        # from there (then it is read again once painted: someone may have changed it since).
        self._ahead: NeuronPage | None = None
        self._read_ahead = False

    def compose(self) -> ComposeResult:
        yield Static(id="neuron-title")
        with TabbedContent(initial="examples"):
            with TabPane("Examples", id="examples"):
                yield ExamplesPane()
            with TabPane("Labels", id="labels"):
                yield LabelsPane()
            with TabPane("Live", id="live"):
                yield LivePane()
            with TabPane("Perturb", id="perturb"):
                yield PerturbPane()
        yield Footer()

    def on_mount(self) -> None:
        app = annotate_app(self)
        app.model_signal.subscribe(self, self._model_status)
        app.ensure_model(self.model_name)
        self.load()

    # --- loading --------------------------------------------------------------------------

    def load(self, select: int | None = None) -> None:
        self.load_page(self.model_name, self.layer_index, self.neuron, select)

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def load_page(self, model: str, layer: int, neuron: int, select: int | None) -> None:
        self.post_message(self.Loaded(backend_of(self).neuron(model, layer, neuron), select))

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "label" and event.state is WorkerState.SUCCESS:
            self._draft = None
        if event.state is not WorkerState.ERROR:
            return
        if worker.group == "load" and self.page is None:
            self.dismiss()  # no such neuron: the notification says why
        elif worker.group == "label":
            if isinstance(worker.error, StaleLabel):
                self.load()  # show the other person's change before anything else happens
            if self._draft is not None:  # a refused save: the typed text is not lost
                title, draft, edited_from = self._draft
                self._draft = None
                self._editor(title, draft.text, accept=draft.accept, edited_from=edited_from)

    def on_neuron_screen_loaded(self, event: Loaded) -> None:
        if (event.page.view.layer, event.page.view.neuron) != (self.layer_index, self.neuron):
            return  # read before the page turned to another neuron
        with self.app.batch_update():  # one repaint for the heading and every pane
            self._show(event)

    def _show(self, event: Loaded) -> None:
        first = self.page is None
        self._held_heading = None
        if self.walk is not None:
            self.walk_note = self.walk.describe()
        page = self.page = event.page
        view = page.view
        ids = {e.id for e in page.candidates}
        select = next(
            (
                i
                for i in (event.select, self.selected.id if self.selected else None)
                if i is not None and i in ids
            ),
            _default_selection(page),
        )
        labels = self.query_one(LabelsPane)
        labels.show(
            page.candidates,
            select,
            page.chances,
            page.view.label,
            sealed=page.sealed,
            scorer=page.scorer,
            detectors=view.detectors,
            bands={b.feature: b for b in page.band_precision},
        )
        self.selected = labels.selected()
        if not first and page.sealed == self.examples_sealed:
            return
        self.examples_sealed = page.sealed
        self.query_one(ExamplesPane).show(view, sealed=page.sealed)
        if not first:
            return
        # The work below waits for the paint: textual runs `call_after_refresh` callbacks at the
        # screen's next idle unless the screen itself awaits a layout, and the panes' refreshes
        # reach the screen only after that idle, so without this the look-ahead's query and the
        # ranks started before the frame and competed with it.
        self.refresh(layout=True)
        if self.walk is not None:  # once this page is painted
            self.call_after_refresh(self.look_ahead, self.walk)
        listed = self.query_one("#example-list")
        if self.query_one(TabbedContent).active == "examples" and self.focused is not listed:
            listed.focus()  # (focusing it again would redraw the footer's keys: a page turn)
        self.query_one(LivePane).configure(self.layer_index, self.neuron, max(view.stats.max, 1e-9))
        self.query_one(PerturbPane).configure(self.layer_index, self.neuron)
        # The rest once the page is painted, so it does not compete with the paint.
        self.call_after_refresh(self._after_paint)

    def _after_paint(self) -> None:
        """This neuron's ranks (a page turned in place; else when the model loads), the Live
        and Perturb tabs' example when one of them is shown, and a fresh read of a page that
        was read ahead."""
        if self._read_ahead:
            self._read_ahead = False
            self.load()
        model = annotate_app(self).backend.loaded(self.model_name)
        if model is not None:
            self.example_ranks(model)
        self._example_due = True
        if self.query_one(TabbedContent).active in ("live", "perturb"):
            self._fetch_top_example()

    def _fetch_top_example(self) -> None:
        page = self.page
        self._example_due = False
        if page is not None and page.view.top_examples:
            top = page.view.top_examples[0]
            self.fetch_example(top.kind.value, top.rank, top.max_index, switch=False)

    def compute_heading(self) -> Text:
        page = self.page
        # First line: where the walk is (what matters most when walking), then the neuron; cut
        # to the width so the label below always starts on the second line.
        if page is None and self._held_heading is not None:
            return self._held_heading  # turning to the next neuron: no flash of "loading…"
        title = Text()
        width = max(self.columns - 2, 20)
        if self.walk is not None:
            title.append(self.walk_note or self.walk.describe(), "yellow")
            title.append(" · n/N · ", "dim")
        if page is None:
            title.append_text(plain(f"{self.model_name} {self.layer_index}.{self.neuron}"))
            title.append(" · loading…")
            title.truncate(width, overflow="ellipsis")
            return title
        s = page.view.stats
        title.append_text(plain(self.model_name, "bold"))
        title.append(f" L{self.layer_index} N{self.neuron}", "bold")
        title.append(f" · max {fmt(s.max)} · density {s.density:.1%}")
        title.append(f" · v{page.version}", "dim")
        title.truncate(width, overflow="ellipsis")
        # The neuron's label (accepted, else best-scoring proposed: `label_state`), not merely
        # the row selected in the labels table; the selection follows when it differs.
        label = next((e for e in page.candidates if e.id == page.view.label), None)
        title.append("\n")
        if label is None:
            title.append("no label yet · w: write one", "dim")
        else:
            title.append_text(status_text(label.status))
            title.append(f" #{label.id} ")
            title.append_text(plain(label.text, "bold"))
            score = page.scorer.score(label)
            title.append(f"  score {fmt(score.score if score else None)}", "dim")
        chosen = self.selected
        if chosen is not None and chosen.id != page.view.label:
            title.append(f"  · selected #{chosen.id} ({chosen.status.value})", "dim")
        return title

    def on_resize(self) -> None:
        self.columns = self.size.width

    def watch_heading(self, heading: Text) -> None:
        self.query_one("#neuron-title", Static).update(heading)

    def _model_status(self, status: ModelStatus) -> None:
        if status.name != self.model_name:
            return
        model = annotate_app(self).backend.loaded(self.model_name)
        if status.state is LoadState.READY and model is not None:
            self.query_one(LivePane).set_model(model)
            self.query_one(PerturbPane).set_model(model)
            self.example_ranks(model)
        elif status.state is LoadState.FAILED:
            self.query_one(LivePane).failure = status.describe()

    @work(thread=True, exclusive=True, group="ranks", exit_on_error=False)
    def example_ranks(self, model: LoadedModel) -> None:
        layer, neuron = self.layer_index, self.neuron
        ranks = backend_of(self).example_ranks(model, self.model_name, layer, neuron)
        self.post_message(self.Ranks(ranks, model.d_mlp, (layer, neuron)))

    def on_neuron_screen_ranks(self, event: Ranks) -> None:
        if event.neuron != (self.layer_index, self.neuron):
            return  # computed before the page turned to another neuron
        self.query_one(ExamplesPane).set_ranks(event.ranks, event.layer_width)

    def _model(self) -> LoadedModel | None:
        model = annotate_app(self).backend.loaded(self.model_name)
        if model is None:
            say(self.app, f"the model {self.model_name} is still loading", severity="warning")
        return model

    # --- tabs, live text and perturbations -------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        """Focus moves into the shown pane: focus left in a hidden pane would pull it back."""
        self.query_one(PerturbPane).set_active(event.pane.id == "perturb")
        self.query_one(FOCUS_IN_TAB[event.pane.id or "examples"]).focus()
        if self._example_due and event.pane.id in ("live", "perturb"):
            self._fetch_top_example()

    def on_live_pane_traced(self, event: LivePane.Traced) -> None:
        self.query_one(PerturbPane).set_input(event.trace, event.target)

    def on_labels_pane_selected(self, event: LabelsPane.Selected) -> None:
        self.selected = event.explanation

    def action_perturb_example(self) -> None:
        example = self.query_one(ExamplesPane).highlighted()
        if example is None:
            say(self.app, "highlight an example in the Examples tab first", severity="warning")
            return
        self._example_due = False  # this example, not the top one
        self.fetch_example(example.kind.value, example.rank, example.max_index, switch=True)

    @work(thread=True, exclusive=True, group="example", exit_on_error=False)
    def fetch_example(self, kind: str, rank: int, target: int, switch: bool) -> None:
        ids = backend_of(self).example_token_ids(
            self.model_name, self.layer_index, self.neuron, kind, rank
        )
        self.post_message(self.ExampleTokens(ids, target, switch))

    def on_neuron_screen_example_tokens(self, event: ExampleTokens) -> None:
        self.query_one(LivePane).load_tokens(event.token_ids, event.target)
        if event.switch:
            self.action_tab("perturb")

    # --- what the neuron does: DLA strips and related neurons -------------------------------

    def action_dla_strip(self) -> None:
        pane = self.query_one(ExamplesPane)
        example = pane.highlighted()
        if example is None or self.page is None:
            say(self.app, "highlight an example in the Examples tab first", severity="warning")
            return
        if pane.showing_swapped():
            pane.swap_strip([], [])  # back to its own strip: nothing to compute
            return
        model = self._model()
        if model is not None:
            self.example_strips(model, self.page.view, example)

    @work(thread=True, exclusive=True, group="strips", exit_on_error=False)
    def example_strips(self, model: LoadedModel, view: NeuronView, example: Example) -> None:
        activations, dla = backend_of(self).example_dla(model, view, example)
        self.post_message(self.Strips(activations, dla))

    def on_neuron_screen_strips(self, event: Strips) -> None:
        self.query_one(ExamplesPane).swap_strip(event.activations, event.dla)

    def action_related(self) -> None:
        if self.page is None:
            return
        view = self.page.view
        model = annotate_app(self).backend.loaded(self.model_name)
        if not view.related_neurons and model is None:
            model = self._model()  # says it is still loading
            if model is None:
                return
        self.related_neurons(model, view)

    @work(thread=True, exclusive=True, group="related", exit_on_error=False)
    def related_neurons(self, model: LoadedModel | None, view: NeuronView) -> None:
        related, source = backend_of(self).related_neurons(model, view)
        self.post_message(self.Related(related, source, (view.layer, view.neuron)))

    def on_neuron_screen_related(self, event: Related) -> None:
        if event.neuron != (self.layer_index, self.neuron):
            return  # the page turned meanwhile
        if not event.related:
            say(self.app, f"no related neurons: {event.source}", severity="warning")
            return

        def chosen(target: tuple[int, int] | None) -> None:
            if target is not None:
                self.app.push_screen(NeuronScreen(self.model_name, *target, None))

        name = neuron_name(*event.neuron)
        self.app.push_screen(RelatedDialog(name, event.related, event.source), chosen)

    # --- labels ---------------------------------------------------------------------------

    def _candidate(self, verb: str) -> Explanation | None:
        if self.page is None:
            return None
        if self.selected is None:
            say(self.app, f"no label to {verb}: press w to write one", severity="warning")
        return self.selected

    def action_accept(self) -> None:
        chosen = self._candidate("accept")
        if chosen is not None and self.page is not None:
            self.change(self.page, explanation_id=chosen.id, status=LabelStatus.ACCEPTED)

    def action_set_status(self, status: str) -> None:
        chosen = self._candidate(status.replace("_", " "))
        if chosen is not None and self.page is not None:
            self.change(self.page, explanation_id=chosen.id, status=LabelStatus(status))

    def action_edit(self) -> None:
        chosen = self._candidate("edit")
        if chosen is not None:
            self._editor(
                f"Edit label #{chosen.id} (saved as a new label of yours)",
                chosen.text,
                edited_from=chosen.id,
            )

    def action_write(self) -> None:
        if self.page is not None:
            self._editor("New label")

    def _editor(
        self, title: str, text: str = "", *, accept: bool = False, edited_from: int | None = None
    ) -> None:
        def done(draft: LabelDraft | None) -> None:
            # Checked against the page as it is now: after a refusal the page reloads behind
            # the reopened editor (showing the other person's change, which the refusal named),
            # and the save made after that must not be refused again for the same change.
            page = self.page
            if draft is not None and page is not None:
                status = LabelStatus.ACCEPTED if draft.accept else None
                self._draft = (title, draft, edited_from)  # reopened if the save is refused
                self.change(
                    page, text=draft.text, status=status, rescore=True, edited_from=edited_from
                )

        self.app.push_screen(LabelEditor(title, editable(text), accept=accept), done)

    @work(thread=True, exclusive=True, group="label", exit_on_error=False)
    def change(
        self,
        page: NeuronPage,
        *,
        explanation_id: int | None = None,
        text: str | None = None,
        status: LabelStatus | None = None,
        rescore: bool = False,
        edited_from: int | None = None,
    ) -> None:
        backend = backend_of(self)
        entries = backend.change_label(
            page, explanation_id=explanation_id, text=text, status=status, edited_from=edited_from
        )
        notes = [f"{e.action} #{e.explanation_id}" for e in entries] or ["no change"]
        select = next((e.explanation_id for e in reversed(entries)), explanation_id)
        if rescore:
            notes.append(backend.score_baseline(page))
        self.post_message(self.Changed(notes, select))

    def action_undo(self) -> None:
        if self.page is not None:
            self.undo(self.page)

    @work(thread=True, exclusive=True, group="label", exit_on_error=False)
    def undo(self, page: NeuronPage) -> None:
        entries = backend_of(self).undo(page)
        notes = [
            f"undid: #{e.explanation_id} back to {e.after.status.value}" for e in entries if e.after
        ]
        self.post_message(self.Changed(notes, entries[0].explanation_id if entries else None))

    def on_neuron_screen_changed(self, event: Changed) -> None:
        say(self.app, "; ".join(event.notes), title=f"{self.layer_index}.{self.neuron}")
        # Forget the selection (the reload chooses again) but keep showing it until then.
        self.set_reactive(NeuronScreen.selected, None)
        self.load(select=event.select)

    def action_detector_label(self) -> None:
        if self.page is None:
            return
        detector = self.query_one(LabelsPane).selected_detector()
        if detector is None:
            say(self.app, "no detectors scored: run `labeller detect` first", severity="warning")
            return
        self.detector_label(self.page, detector)

    @work(thread=True, exclusive=True, group="label", exit_on_error=False)
    def detector_label(self, page: NeuronPage, detector: DetectorScore) -> None:
        made = backend_of(self).label_from_detector(page, detector)
        note = (
            f"proposed #{made} from detector {detector.name}"
            if made is not None
            else f"detector {detector.name} is already a label"
        )
        self.post_message(self.Changed([note], made))

    def action_llm_score(self) -> None:
        if self.page is not None:
            say(self.app, "scoring with the LLM simulator…")
            self.llm_score(self.page)

    @work(thread=True, exclusive=True, group="llm", exit_on_error=False)
    def llm_score(self, page: NeuronPage) -> None:
        note = backend_of(self).score_llm(page)
        self.post_message(self.Changed([note], self.selected.id if self.selected else None))

    def action_unseal(self) -> None:
        page = self.page
        if page is None:
            return
        if not page.sealed:
            say(self.app, "this neuron's held-out windows are already unsealed for you")
            return
        held_out = held_out_count(page.view)
        if not held_out:
            say(self.app, "this neuron has no held-out windows to unseal")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.unseal(page)

        backend = annotate_app(self).backend
        name = f"L{self.layer_index} N{self.neuron}"
        self.app.push_screen(UnsealDialog(name, held_out, backend.annotator), confirmed)

    @work(thread=True, exclusive=True, group="label", exit_on_error=False)
    def unseal(self, page: NeuronPage) -> None:
        entries = backend_of(self).unseal(page)
        note = "held-out windows unsealed (recorded)" if entries else "already unsealed"
        self.post_message(self.Changed([note], self.selected.id if self.selected else None))

    def action_history(self) -> None:
        self.app.push_screen(HistoryScreen(self.model_name, self.layer_index, self.neuron))

    def action_suggest(self) -> None:
        chosen = self._candidate("test")
        model = self._model() if chosen is not None else None
        if chosen is None or model is None or self.page is None:
            return

        def picked(text: str | None) -> None:
            if text is not None:
                self._example_due = False  # this text, not the top example
                self.query_one(LivePane).load_text(text)
                self.action_tab("live")

        self.app.push_screen(
            SuggestionsScreen(
                model, self.layer_index, self.neuron, chosen.text, self.page.view.stats.max
            ),
            picked,
        )

    # --- navigation -----------------------------------------------------------------------

    def action_back(self) -> None:
        if isinstance(self.focused, TextArea):
            self.query_one("#live-tokens").focus()  # out of the text box first
            return
        self.dismiss()

    # --- walking the list ------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="walk", exit_on_error=False)
    def look_ahead(self, walk: Walk) -> None:
        """Ask for the next neuron now, so `n` need not wait for it, and count what is left."""
        backend = backend_of(self)
        place = walk.places.get(walk.current) or backend.place(walk.model, walk.spec, *walk.current)
        after, left = backend.step(walk.model, walk.spec, place, count=False)
        if get_current_worker().is_cancelled:
            return
        self.post_message(self.WalkAhead(place, after, left))
        if after is not None:
            page = backend.neuron(walk.model, after.layer, after.neuron)
            if get_current_worker().is_cancelled:
                return
            self.post_message(self.PageAhead(page))
        model = backend.loaded(self.model_name)
        if after is not None and model is not None:  # the next page's ranks, ready for `n`
            backend.example_ranks(model, self.model_name, after.layer, after.neuron)
        if left is None:  # the next neuron first; what is left may take a full pass
            _, left = backend.step(walk.model, walk.spec, place)
            if not get_current_worker().is_cancelled:
                self.post_message(self.WalkAhead(place, after, left))

    def on_neuron_screen_walk_ahead(self, event: WalkAhead) -> None:
        walk = self.walk
        if walk is None or (event.place.layer, event.place.neuron) != walk.current:
            return  # looked up from a neuron the walk has since left: its next, its count
        walk.places[walk.current] = event.place
        if event.left is not None:
            walk.left = event.left
            walk.counted = walk.current
        if event.after is not None and walk.known(1) is None:
            walk.extend(1, event.after)
        self.walk_note = walk.describe()

    def on_neuron_screen_page_ahead(self, event: PageAhead) -> None:
        self._ahead = event.page

    def action_walk(self, step: int) -> None:
        walk = self.walk
        if walk is None:
            say(
                self.app,
                "not opened from the list: open a neuron with enter there, or start a queue (d)",
                severity="warning",
            )
            return
        if walk.known(step) is not None:
            self._go(walk, step)
        elif step > 0 and walk.left == 0:
            say(self.app, f"the end of the {_walked(walk)}: {walk.rank:,} of {walk.total:,}")
        else:
            self.find_step(walk, step)

    @work(thread=True, exclusive=True, group="walk", exit_on_error=False)
    def find_step(self, walk: Walk, step: int) -> None:
        backend = backend_of(self)
        edge = walk.trail[-1] if step > 0 else walk.trail[0]
        place = walk.places.get(edge) or backend.place(walk.model, walk.spec, *edge)
        walk.places[edge] = place
        found, _ = backend.step(walk.model, walk.spec, place, backward=step < 0)
        self.post_message(self.Stepped(step, found, edge))

    def on_neuron_screen_stepped(self, event: Stepped) -> None:
        walk = self.walk
        if walk is None or event.edge != (walk.trail[-1] if event.step > 0 else walk.trail[0]):
            return  # the trail has grown past that edge meanwhile (a second key, say)
        if event.found is None:
            where = "end" if event.step > 0 else "start"
            say(self.app, f"the {where} of the {_walked(walk)}: {walk.rank:,} of {walk.total:,}")
            return
        if walk.known(event.step) is None:
            walk.extend(event.step, event.found)
        self._go(walk, event.step)

    def _go(self, walk: Walk, step: int) -> None:
        neuron: Neuron = walk.move(step)
        self.show_neuron(*neuron)

    def show_neuron(self, layer: int, neuron: int) -> None:
        """Turn the page to another neuron: the same widgets show its data (a new screen would
        mount every widget again, several times the 150 ms a step may take), and the tab, the
        highlighted example and the scroll positions stay as the person left them."""
        self.layer_index, self.neuron = layer, neuron
        self._held_heading = self.heading
        self.set_reactive(NeuronScreen.selected, None)
        self.page = None  # label keys wait for the new neuron's data
        ahead, self._ahead = self._ahead, None
        if ahead is not None and (ahead.view.layer, ahead.view.neuron) == (layer, neuron):
            # Read while the last page was open: shown now, without waiting for a read, and
            # read again once painted (`_after_paint`).
            self._read_ahead = True
            self.on_neuron_screen_loaded(self.Loaded(ahead, None))
        else:
            self.load()


def _walked(walk: Walk) -> str:
    return "queue" if walk.spec.todo is not None else "list"


def _default_selection(page: NeuronPage) -> int | None:
    """The neuron's label (`label_state`), else the newest candidate."""
    if page.view.label is not None:
        return page.view.label
    return page.candidates[-1].id if page.candidates else None
