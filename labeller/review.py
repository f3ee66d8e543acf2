"""Review statistics from the label history: who wrote, accepted and reviewed what, and how often
annotators agree on the neurons they both judged. Pure functions over history entries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations

from pydantic import BaseModel

from labeller.records import HistoryAction, HistoryEntry

POSITIVE = {HistoryAction.ACCEPT, HistoryAction.CONFIRM}
NEGATIVE = {HistoryAction.REJECT, HistoryAction.DISPUTE, HistoryAction.NEEDS_REVIEW}
# Entries that judge no label: an explainer's proposal, the demotion an accept causes, an undo,
# an unseal.
NOT_JUDGEMENTS = {
    HistoryAction.PROPOSE,
    HistoryAction.DEMOTE,
    HistoryAction.UNDO,
    HistoryAction.UNSEAL,
}


class AnnotatorCounts(BaseModel):
    annotator: str
    written: int = 0
    accepted: int = 0
    rejected: int = 0
    reviewed: int = 0


class PairAgreement(BaseModel):
    first: str
    second: str
    both_judged: int
    agreed: int

    @property
    def rate(self) -> float | None:
        return self.agreed / self.both_judged if self.both_judged else None


def agreement(
    entries: Iterable[HistoryEntry],
) -> tuple[list[AnnotatorCounts], list[PairAgreement]]:
    """A person's verdict on a neuron is their latest accept/confirm (for that label) or
    reject/dispute/needs-review (against it); two people agree when their verdicts match."""
    counts: dict[str, AnnotatorCounts] = {}
    verdicts: dict[str, dict[tuple[int, int], tuple[int | None, bool]]] = defaultdict(dict)
    for entry in entries:
        who, action = entry.annotator, entry.action
        if who is None or action in NOT_JUDGEMENTS:
            continue
        count = counts.setdefault(who, AnnotatorCounts(annotator=who))
        if action is HistoryAction.WRITE:
            count.written += 1
        elif action is HistoryAction.ACCEPT:
            count.accepted += 1
        elif action is HistoryAction.REJECT:
            count.rejected += 1
        elif action in (HistoryAction.CONFIRM, HistoryAction.DISPUTE):
            count.reviewed += 1
        if action in POSITIVE | NEGATIVE:
            neuron = (entry.layer, entry.neuron)
            verdicts[who][neuron] = (entry.explanation_id, action in POSITIVE)
    pairs = []
    for first, second in combinations(sorted(verdicts), 2):
        shared = verdicts[first].keys() & verdicts[second].keys()
        agreed = sum(verdicts[first][n] == verdicts[second][n] for n in shared)
        pairs.append(
            PairAgreement(first=first, second=second, both_judged=len(shared), agreed=agreed)
        )
    return sorted(counts.values(), key=lambda c: c.annotator), pairs
