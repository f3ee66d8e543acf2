"""The selected label's scored windows: true activations above the simulator's, token by token.

Its windows are valid ones, held out: while they are sealed for the annotator the view says so
and how to unseal, and shows none of their tokens or activations.
"""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

from labeller.catalogue.label_state import Scorer
from labeller.records import Explanation, PredictionKind
from labeller.sealing import HELD_OUT
from labeller.tui.text import aligned_rows


class ScoreWindows(Widget):
    """The selected label's scored windows, wrapped to whatever width the pane has now."""

    DEFAULT_CSS = "ScoreWindows { height: auto; }"

    def __init__(self) -> None:
        super().__init__()
        self.explanation: Explanation | None = None
        self.scorer = Scorer(None, PredictionKind.RULE)
        self.sealed = True

    def show(self, explanation: Explanation | None, scorer: Scorer, *, sealed: bool = True) -> None:
        """The windows of `explanation`'s primary score by `scorer` (the one its row shows)."""
        self.explanation = explanation
        self.scorer = scorer
        self.sealed = sealed
        self.refresh(layout=True)

    def _text(self, width: int) -> Text:
        explanation = self.explanation
        if explanation is None:
            return Text()
        primary = self.scorer.score(explanation)
        windows = primary.details.get("windows", []) if primary else []
        if primary is None or not windows:
            by = f" by {self.scorer.simulator}" if self.scorer.simulator else ""
            return Text(f"No scored windows{by} for this label yet.", "dim")
        if self.sealed and primary.split in HELD_OUT:
            return Text(
                f"Scored on {len(windows)} {primary.split.value} windows, held out and sealed:\n"
                "their tokens and activations are not shown. U unseals them for you\n"
                "(recorded in the neuron's history; labels you write after it are not blind).",
                "dim",
            )
        out = Text(f"Scored windows: true activations, then {primary.simulator}'s\n", "dim")
        true_scale = max((max(w["true"], default=0.0) for w in windows), default=0.0) or 1.0
        sim_scale = max((max(w["simulated"], default=0.0) for w in windows), default=0.0) or 1.0
        for window in windows:
            out.append(f"{window['kind']} #{window['rank']}\n", "bold")
            for line in aligned_rows(
                window["tokens"],
                [("true", window["true"], true_scale), ("sim", window["simulated"], sim_scale)],
                width,
            ):
                out.append_text(line)
                out.append("\n")
        return out

    def render(self) -> Text:
        return self._text(self.content_size.width or 80)

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        return self._text(width).plain.count("\n") + 1
