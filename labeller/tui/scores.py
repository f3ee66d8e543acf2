"""Which of a label's scores to show: valid split, an LLM simulator's before the baseline's."""

from __future__ import annotations

from labeller.records import Explanation, Score, ScoreMethod, Split


def preferred_scores(explanation: Explanation) -> dict[ScoreMethod, Score]:
    """Valid-split scores by method, from an LLM simulator when there is one, else the baseline."""
    chosen: dict[ScoreMethod, Score] = {}
    for score in sorted(
        explanation.scores, key=lambda s: (s.simulator != "baseline", s.created_at)
    ):
        if score.split is Split.VALID:
            chosen[score.method] = score
    return chosen
