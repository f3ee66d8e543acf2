"""Review statistics from the label history: who wrote, accepted and reviewed what, and how often
annotators agree on the neurons they both judged. Pure functions over history rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import combinations
from typing import Any

from pydantic import BaseModel

POSITIVE = {"accept", "confirm"}
NEGATIVE = {"reject", "dispute", "needs_review"}


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


def agreement(rows: Iterable[dict[str, Any]]) -> tuple[list[AnnotatorCounts], list[PairAgreement]]:
    """A person's verdict on a neuron is their latest accept/confirm (for that label) or
    reject/dispute/needs-review (against it); two people agree when their verdicts match."""
    counts: dict[str, AnnotatorCounts] = {}
    verdicts: dict[str, dict[int, tuple[int, bool]]] = defaultdict(dict)
    for row in rows:
        who, action = row["annotator"], row["action"]
        if who is None or action in ("propose", "demote", "undo"):
            continue
        count = counts.setdefault(who, AnnotatorCounts(annotator=who))
        if action == "write":
            count.written += 1
        elif action == "accept":
            count.accepted += 1
        elif action == "reject":
            count.rejected += 1
        elif action in ("confirm", "dispute"):
            count.reviewed += 1
        if action in POSITIVE | NEGATIVE:
            verdicts[who][row["neuron_id"]] = (row["explanation_id"], action in POSITIVE)
    pairs = []
    for first, second in combinations(sorted(verdicts), 2):
        shared = verdicts[first].keys() & verdicts[second].keys()
        agreed = sum(verdicts[first][n] == verdicts[second][n] for n in shared)
        pairs.append(
            PairAgreement(first=first, second=second, both_judged=len(shared), agreed=agreed)
        )
    return sorted(counts.values(), key=lambda c: c.annotator), pairs
