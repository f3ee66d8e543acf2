"""Live text: type, and the neuron's activation on every token of your text appears.

The trace runs in a worker a few milliseconds after the last keystroke (typing never waits for
it). The token view below lets you replace one token with another; the text then follows the
tokens, and the pane says when they are no longer how the tokenizer would split that text.
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
from textual.timer import Timer
from textual.widgets import Static, TextArea
from textual.worker import get_current_worker

from labeller.tui.backend import LiveTrace
from labeller.tui.context import backend_of
from labeller.tui.errors import ReportsWorkerErrors, say
from labeller.tui.replace_token import ReplaceToken
from labeller.tui.text import editable, fmt, peak, plain, shown
from labeller.tui.token_view import TokenView

if TYPE_CHECKING:
    from labeller.model.loading import LoadedModel

DEBOUNCE_S = 0.03


class LivePane(ReportsWorkerErrors, Vertical):
    BINDING_GROUP_TITLE = "Live tab"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("ctrl+l", "clear_text", "Clear the text", id="live.clear"),
    ]

    @dataclass
    class Traced(Message):
        """New activations for the current text (the perturbations follow them).

        `native` is False when the tokens are not how the tokenizer splits their own text.
        """

        trace: LiveTrace
        target: int | None
        native: bool = True
        dropped: int = 0

    # The status line follows these: the last trace (with what the model could not read and
    # whether its tokens are the tokenizer's own), a trace waiting for the model, a failed model.
    trace: var[LiveTrace | None] = var(None)
    dropped = var(0)
    native = var(True)
    waiting = var(False)
    failure = var("")
    status_line: var[Text] = var(Text)

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model: LoadedModel | None = None
        self.layer_index = 0
        self.neuron = 0
        self.scale = 1.0
        self.token_ids: list[int] = []
        self._programmatic: str | None = None
        self._debounce: Timer | None = None
        self._pending_target: int | None = None
        self._follow_tokens = False
        self._tokens_waiting = False

    def compose(self) -> ComposeResult:
        yield Static(
            Text(
                "Type or paste text: the neuron's activation on each token appears below. "
                "esc: to the tokens (enter replaces one), then 4: perturb it (alt+4 from the box)"
                " · ctrl+l: clear",
                "dim",
            ),
            id="live-help",
        )
        yield TextArea(id="live-text", soft_wrap=True, tab_behavior="indent")
        yield Static(id="live-status")
        yield Static(id="live-cursor")
        yield TokenView(id="live-tokens")

    def on_mount(self) -> None:
        self.query_one(TokenView).clear("type above; the tokens appear here")

    def configure(self, layer: int, neuron: int, scale: float) -> None:
        self.layer_index, self.neuron, self.scale = layer, neuron, scale

    def set_model(self, model: LoadedModel) -> None:
        self.model = model
        if self._tokens_waiting:
            self._set_tokens(self.token_ids)
        else:
            self._schedule()

    @property
    def text(self) -> str:
        return self.query_one("#live-text", TextArea).text

    def load_text(self, text: str) -> None:
        """Replace the text (a suggested test, say) and trace it."""
        self.query_one("#live-text", TextArea).load_text(editable(text))

    def action_clear_text(self) -> None:
        """Empty the box (and so the trace), ready to type."""
        area = self.query_one("#live-text", TextArea)
        area.clear()
        area.focus()

    def load_tokens(self, token_ids: list[int], target: int | None) -> None:
        """Show exactly these tokens (a stored example), perturbing around `target`."""
        self._pending_target = target
        self._set_tokens(token_ids)

    def _set_tokens(self, token_ids: list[int]) -> None:
        """The text follows these tokens (until the next keystroke)."""
        self.token_ids = token_ids
        self._follow_tokens = True
        self._tokens_waiting = self.model is None
        if self.model is None:
            return
        text = editable(backend_of(self).decode(self.model, token_ids))
        self._programmatic = text
        self.query_one("#live-text", TextArea).load_text(text)
        self.trace_tokens(token_ids)

    def on_text_area_changed(self, event: TextArea.Changed) -> None:
        event.stop()
        text = event.text_area.text
        if editable(text) != text:  # pasted control characters: the box would show them raw
            event.text_area.load_text(editable(text))
            return
        if self._programmatic is not None and event.text_area.text == self._programmatic:
            self._programmatic = None
            return
        self._programmatic = None
        self._follow_tokens = False
        self._pending_target = None
        self._schedule()

    def _schedule(self) -> None:
        if self._debounce is not None:
            self._debounce.stop()
        self._debounce = self.set_timer(DEBOUNCE_S, self._trace_now)

    def _trace_now(self) -> None:
        if self.model is None:
            self.waiting = True
            return
        if self._follow_tokens:
            self.trace_tokens(self.token_ids)
        else:
            self.trace_text(self.text)

    @work(thread=True, exclusive=True, group="trace", exit_on_error=False)
    def trace_text(self, text: str) -> None:
        model = self.model
        if model is None:
            return
        backend = backend_of(self)
        encoded = backend.encode(model, text)
        trace = (
            backend.trace(model, encoded.token_ids, self.layer_index, self.neuron)
            if encoded.token_ids
            else LiveTrace([], [], [])
        )
        if not get_current_worker().is_cancelled:
            self.post_message(self.Traced(trace, None, dropped=encoded.dropped))

    @work(thread=True, exclusive=True, group="trace", exit_on_error=False)
    def trace_tokens(self, token_ids: list[int]) -> None:
        model = self.model
        if model is None or not token_ids:
            return
        backend = backend_of(self)
        trace = backend.trace(model, token_ids, self.layer_index, self.neuron)
        native = backend.encode(model, backend.decode(model, token_ids)).token_ids == token_ids
        if not get_current_worker().is_cancelled:
            self.post_message(self.Traced(trace, self._pending_target, native))

    def on_live_pane_traced(self, event: LivePane.Traced) -> None:
        self.dropped, self.native = event.dropped, event.native
        trace = self.trace = event.trace
        self.token_ids = trace.token_ids
        view = self.query_one(TokenView)
        if not trace.tokens:
            view.clear("type above; the tokens appear here")
            return
        view.show(trace.tokens, trace.activations, self.scale, mark=peak(trace.activations))
        self._cursor_line(view.cursor)

    def compute_status_line(self) -> Text:
        trace = self.trace
        if self.failure:
            return plain(self.failure, "red")
        if trace is None:
            waiting = " the trace starts when it is ready" if self.waiting else ""
            return Text(f"model loading…{waiting}", "dim")
        if not trace.tokens:
            return Text("no text", "dim")
        top = peak(trace.activations)
        status = Text(f"{len(trace.tokens)} tokens · max {fmt(trace.activations[top])} at ")
        status.append(f"'{shown(trace.tokens[top])}'", "bold")
        status.append(f" (#{top}) · colour scale 0–{self.scale:.3g}", "dim")
        if self.dropped:
            status.append(
                f"\nthe model reads {len(trace.tokens)} tokens: the last {self.dropped} are "
                "not traced",
                "yellow",
            )
        if not self.native:
            status.append("\nthese tokens are not how the tokenizer splits this text", "yellow")
        return status

    def watch_status_line(self, line: Text) -> None:
        self.query_one("#live-status", Static).update(line)

    def _cursor_line(self, index: int) -> None:
        """The exact activation of the token under the cursor (colours only approximate it)."""
        trace = self.trace
        line = Text()
        if trace is not None and 0 <= index < len(trace.tokens):
            line.append(f"#{index} ")
            line.append(f"'{shown(trace.tokens[index])}'", "bold")
            line.append(f" {trace.activations[index]:.4g} · ")
        line.append("←/→ or the mouse pick a token, enter to replace it", "dim")
        self.query_one("#live-cursor", Static).update(line)

    def on_token_view_moved(self, event: TokenView.Moved) -> None:
        event.stop()
        self._cursor_line(event.index)

    def on_token_view_chosen(self, event: TokenView.Chosen) -> None:
        event.stop()
        model, trace = self.model, self.trace
        if model is None or trace is None:
            return
        index = event.index
        backend = backend_of(self)

        def tokenize(text: str) -> list[str]:
            return backend.encode(model, text).tokens

        def replaced(new: str | None) -> None:
            if new is None or trace is not self.trace:
                return
            encoded = backend.encode(model, new)
            ids = encoded.token_ids
            if len(ids) != 1:
                pieces = " ".join(f"'{shown(t)}'" for t in encoded.tokens) or "nothing"
                say(
                    self.app,
                    f"'{shown(new)}' is {len(ids)} tokens ({pieces}), not one: "
                    "the edit no longer maps to a single token",
                    severity="warning",
                )
            self._pending_target = None
            self._set_tokens([*self.token_ids[:index], *ids, *self.token_ids[index + 1 :]])

        self.app.push_screen(ReplaceToken(trace.tokens[index], tokenize), replaced)
        self.query_one(TokenView).focus()
