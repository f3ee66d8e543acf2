"""`labeller annotate`: the Textual app, its factory (for tests) and the entry point.

The app owns the backend (catalogue path, annotator, loaded models) and the model-loading
worker; screens subscribe to `model_signal` to hear when a model is ready.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from textual import work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.screen import ModalScreen
from textual.signal import Signal

from labeller.tui.backend import Backend, LoadState, ModelStatus
from labeller.tui.errors import ReportsWorkerErrors, describe
from labeller.tui.help_screen import HelpScreen
from labeller.tui.neuron_list import NeuronListScreen


class AnnotateApp(ReportsWorkerErrors, App[None]):
    TITLE = "labeller annotate"
    CSS_PATH = "app.tcss"
    BINDING_GROUP_TITLE = "Everywhere"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", id="app.help", show=False),
        Binding("ctrl+f", "search", "Search neurons by text", id="app.search"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
    ]

    @dataclass
    class ModelProgress(Message):
        status: ModelStatus

    def __init__(self, backend: Backend, model: str, model_names: list[str]) -> None:
        super().__init__()
        self.backend = backend
        self.initial_model = model
        self.model_names = model_names
        self.model_signal: Signal[ModelStatus] = Signal(self, "model")
        self.model_states: dict[str, ModelStatus] = {}

    def on_mount(self) -> None:
        """The list comes first; it starts the model loading once its first page is shown
        (loading imports torch in a thread, which would slow the first paint)."""
        self.push_screen(NeuronListScreen(self.initial_model))

    def ensure_model(self, name: str) -> None:
        """Start loading `name` unless it is loaded or loading; announce its state either way."""
        state = self.model_states.get(name)
        if state is not None and state.state is not LoadState.FAILED:
            self.model_signal.publish(state)
            return
        self._progress(ModelStatus(name, LoadState.LOADING, "starting"))
        self.load_model(name)

    @work(thread=True, group="model", exit_on_error=False)
    def load_model(self, name: str) -> None:
        def step(detail: str) -> None:
            self.post_message(self.ModelProgress(ModelStatus(name, LoadState.LOADING, detail)))

        try:
            self.backend.load_model(name, step)
        except Exception as exc:  # any failure to load is reported, never raised into the UI
            self.post_message(
                self.ModelProgress(ModelStatus(name, LoadState.FAILED, describe(exc)))
            )
            raise
        self.post_message(self.ModelProgress(ModelStatus(name, LoadState.READY)))

    def on_annotate_app_model_progress(self, event: AnnotateApp.ModelProgress) -> None:
        self._progress(event.status)

    def _progress(self, status: ModelStatus) -> None:
        self.model_states[status.name] = status
        self.model_signal.publish(status)

    def action_search(self) -> None:
        """The search across neurons, for the model of the screen in front (the list's, or the
        neuron page's, whose live text it starts from)."""
        from labeller.tui.search_screen import SearchScreen

        screen = self.screen
        if isinstance(screen, (SearchScreen, ModalScreen)):
            return
        model = getattr(screen, "model_name", None)
        if isinstance(screen, NeuronListScreen):
            model = screen.query_state.model
        text = ""
        live = screen.query("LivePane")
        if live:
            text = str(getattr(live.first(), "text", ""))
        self.push_screen(SearchScreen(model or self.initial_model, text))

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.screen.active_bindings.values()))


def create_app(
    db_path: Path | None,
    annotator: str,
    model: str | None = None,
    llm_config: Path | None = None,
) -> AnnotateApp:
    """The app on a catalogue, checked first: a bad path or model is a UserError, not a screen."""
    from labeller.catalogue import Catalogue, default_db_path

    path = Path(db_path) if db_path is not None else default_db_path()
    with Catalogue.open(path, read_only=True) as catalogue:
        models = [m.name for m in catalogue.models()]
        name = catalogue.resolve_model(model).name if model or len(models) <= 1 else models[0]
    backend = Backend(db_path=path, annotator=annotator, llm_config=llm_config)
    return AnnotateApp(backend, name, models)


def run_annotate(
    db_path: Path | None,
    annotator: str,
    model: str | None = None,
    llm_config: Path | None = None,
) -> None:
    """Open the annotation TUI on the catalogue at `db_path` (default: $LABELLER_DB)."""
    create_app(db_path, annotator, model, llm_config).run()
