"""The neuron's label candidates with their scores, and the evidence behind the selected one.

For the selected candidate, each scored window shows the true activations and the simulator's
prediction on the same tokens, one above the other, so a reader sees where the label misses.
Below the candidates, the neuron's best feature detectors (`labeller detect`), scored like labels;
the highlighted one is what `D` turns into a label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Static

from labeller.catalogue.label_state import Scorer
from labeller.records import (
    PRIMARY_METHOD,
    DetectorScore,
    Explanation,
    FeatureBands,
    PredictionKind,
    Score,
    ScoreMethod,
)
from labeller.render import precision_spark
from labeller.tui.backend import SHOWN_DETECTORS
from labeller.tui.score_windows import ScoreWindows
from labeller.tui.text import fmt, plain, status_text

# The candidates table's score columns, primary score first (its header names the scorer).
SCORE_COLUMNS = {
    ScoreMethod.TOP_AND_RANDOM: "T&R",
    ScoreMethod.TOP_ONLY: "top",
    ScoreMethod.RANDOM_ONLY: "rand",
}


class LabelsPane(Vertical):
    """Candidates table on top; the selected label's text, scores and windows below."""

    @dataclass
    class Selected(Message):
        """The candidate under the cursor changed (what accept, edit and reject act on)."""

        explanation: Explanation | None

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.explanations: list[Explanation] = []
        self.chances: dict[int, list[tuple[bool | None, float | None]]] = {}
        self.sealed = True
        self.scorer = Scorer(None, PredictionKind.RULE)
        self.detectors: list[DetectorScore] = []

    def compose(self) -> ComposeResult:
        table: DataTable[Any] = DataTable(cursor_type="row", zebra_stripes=True, id="candidates")
        yield table
        yield Static(id="label-detail")
        yield DataTable(cursor_type="row", zebra_stripes=True, id="detectors")
        yield VerticalScroll(ScoreWindows(), id="windows")

    def show(
        self,
        explanations: list[Explanation],
        select: int | None,
        chances: dict[int, list[tuple[bool | None, float | None]]] | None = None,
        label: int | None = None,
        *,
        sealed: bool = True,
        scorer: Scorer,
        detectors: list[DetectorScore] | None = None,
        bands: Mapping[str, FeatureBands] | None = None,
    ) -> None:
        """`chances`: per explanation id, its scores' (above chance, null p95); a score that
        does not clear its null control is dimmed and marked ≈chance. `label`: the neuron's
        label (`label_state`), marked ▶ in the id column. `sealed`: whether the held-out windows
        are sealed for the annotator (the scored windows then stay hidden). `scorer`: whose
        scores the score columns show (the list's and `rank`'s). `detectors`: the neuron's
        detector scores, best first."""
        self._show_detectors(detectors or [], bands or {})
        self.explanations = explanations
        self.chances = chances or {}
        self.sealed = sealed
        self.scorer = scorer
        table = self.query_one("#candidates", DataTable)
        table.clear(columns=True)
        table.add_column("id", key="id")
        table.add_column("status", key="status")
        table.add_column("source", key="source")
        for method, title in SCORE_COLUMNS.items():
            named = method is PRIMARY_METHOD and scorer.simulator is not None
            table.add_column(f"{title}·{scorer.simulator}" if named else title, key=method)
        table.add_column("blind", key="blind")
        table.add_column("label", key="label")
        for e in explanations:
            table.add_row(
                Text(f"▶{e.id}", "bold") if e.id == label else Text(f" {e.id}"),
                status_text(e.status),
                plain(e.annotator if e.source == "human" and e.annotator else e.source),
                *(self._score_cell(e, scorer.score(e, m)) for m in SCORE_COLUMNS),
                _blind_cell(scorer.score(e, PRIMARY_METHOD)),
                plain(e.text),
                key=str(e.id),
            )
        if not explanations:
            self._detail(None)
            return
        row = next((i for i, e in enumerate(explanations) if e.id == select), 0)
        table.move_cursor(row=row)
        self._detail(explanations[row])

    def _show_detectors(
        self, detectors: list[DetectorScore], bands: Mapping[str, FeatureBands]
    ) -> None:
        """The best few detectors, each with its precision per activation band (one cell a
        band, lowest first); hidden when none was scored."""
        self.detectors = detectors[:SHOWN_DETECTORS]
        table = self.query_one("#detectors", DataTable)
        table.clear(columns=True)
        table.display = bool(self.detectors)
        if not self.detectors:
            return
        table.add_column("detector", key="name")
        table.add_column("r", key="score")
        table.add_column("split", key="split")
        table.add_column("bands", key="bands")
        table.add_column("D: propose as label", key="description")
        for d in self.detectors:
            found = bands.get(f"detector:{d.name}")
            spark = precision_spark([b.precision for b in found.bands]) if found else ""
            table.add_row(
                plain(d.name), Text(fmt(d.score)), d.split.value, spark, plain(d.description)
            )

    def selected_detector(self) -> DetectorScore | None:
        """The highlighted detector (the best one until another is highlighted)."""
        if not self.detectors:
            return None
        row = self.query_one("#detectors", DataTable).cursor_row
        return self.detectors[min(max(row, 0), len(self.detectors) - 1)]

    def _chance(self, explanation: Explanation, score: Score) -> tuple[bool | None, float | None]:
        verdicts = self.chances.get(explanation.id or 0, [])
        for candidate, verdict in zip(explanation.scores, verdicts, strict=False):
            if candidate is score:
                return verdict
        return None, None

    def _score_cell(self, explanation: Explanation, score: Score | None) -> Text:
        if score is None:
            return Text(fmt(None))
        if self._chance(explanation, score)[0] is False:
            return Text(f"{fmt(score.score)} ≈chance", "dim")
        return Text(fmt(score.score))

    def selected(self) -> Explanation | None:
        table = self.query_one("#candidates", DataTable)
        if not self.explanations or table.cursor_row < 0:
            return None
        return self.explanations[min(table.cursor_row, len(self.explanations) - 1)]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.data_table.id == "detectors":
            return
        explanation = self.selected()
        self._detail(explanation)
        self.post_message(self.Selected(explanation))

    def _detail(self, explanation: Explanation | None) -> None:
        detail = self.query_one("#label-detail", Static)
        self.query_one(ScoreWindows).show(explanation, self.scorer, sealed=self.sealed)
        if explanation is None:
            detail.update(Text("No labels yet: press w to write one.", "dim"))
            return
        text = Text()
        text.append_text(status_text(explanation.status))
        text.append("  ")
        text.append_text(plain(explanation.text, "bold"))
        who = explanation.annotator or explanation.producer_model or explanation.source
        text.append(f"\n#{explanation.id} by ", "dim")
        text.append_text(plain(who, "dim"))
        text.append(f" · {explanation.created_at}", "dim")
        by_simulator: dict[str, list[Score]] = {}
        for score in explanation.scores:
            by_simulator.setdefault(score.simulator or "?", []).append(score)
        for simulator, scores in by_simulator.items():
            text.append("\n")
            text.append_text(plain(simulator, "dim"))
            for score in scores:
                subset = f"[{score.subset}]" if score.subset else ""
                text.append(f"  {score.method}{subset} ({score.split.value}) {fmt(score.score)}")
                text.append(" blind" if score.blind else " seen", "dim")
                verdict, p95 = self._chance(explanation, score)
                if verdict is False and p95 is not None:
                    text.append(f" ≈chance (null p95 {p95:.2f})", "dim")
            reasons = {str(s.details.get("reason")) for s in scores if s.details.get("reason")}
            for reason in reasons:
                text.append("\n  ")
                text.append_text(plain(reason, "yellow"))
        detail.update(text)


def _blind_cell(score: Score | None) -> Text:
    """yes: the label's author saw none of the scored windows; seen: they had seen them."""
    if score is None:
        return Text(fmt(None))
    return Text("yes") if score.blind else Text("seen", "dim")
