"""One place that turns failures into notifications: a worker's error never becomes a traceback."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual.worker import Worker, WorkerState

from labeller.errors import UserError

if TYPE_CHECKING:
    from textual.app import App


def describe(error: BaseException) -> str:
    """A one-line message: a user error as written, anything else with its type."""
    if isinstance(error, UserError | ValueError):
        return str(error)
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def say(app: App[Any], message: str, *, severity: str = "information", title: str = "") -> None:
    """Notify without markup: messages quote labels and tokens, which must show as typed."""
    app.notify(message, title=title, severity=severity, markup=False)  # type: ignore[arg-type]


class ReportsWorkerErrors:
    """Mixin for the screens and widgets that start workers: errors become notifications.

    Worker state messages go only to the node that started the worker, so each such node
    inherits this one handler.
    """

    app: App[Any]

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        error = event.worker.error
        if event.state is WorkerState.ERROR and error is not None:
            self.app.log.error(f"worker {event.worker.name} failed: {error!r}")
            say(self.app, describe(error), severity="error")
