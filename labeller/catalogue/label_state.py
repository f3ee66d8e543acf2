"""The neuron's label, defined once.

A neuron's label is its accepted label; else the best-scoring of its proposed labels; else none.
Rejected, withdrawn and needs-review labels are never the neuron's label. "Best-scoring" compares
like with like, by the rule `rank` uses by default (`default_scorer`): each label's primary score
(top-and-random) on the valid split of one prediction kind (expected_value if the model has any,
else integer, else rule) by one simulator (the one with the most such scores), the newest of
them; a label without such a score comes after those with one, and among equals the newest label
wins. A source's best-of-K candidates are represented by the one chosen on the calibration split
(marked `best`), never by the luckiest on valid.

`label_sql(scorer)` is the definition, as SQL expressions over a neuron row aliased `n`; the list
and its sorts (`labeller.catalogue.browse`), `rank`, `show`, every export and the TUI all read it,
through those fragments or `label_ids`. Nothing else decides which label is the neuron's.

Which label is the neuron's depends on scores; its *state* does not. The catalogue keeps two
per-neuron columns up to date by triggers (migration m014), in the same transaction as every
change to a neuron's labels, so the list can filter and sort by them through an index:
`neurons.label_state`, the neuron's workflow state (`NEURON_STATES`: any accepted label ->
accepted; else any needing review -> needs_review; else any proposed -> proposed; else any
rejected or withdrawn -> rejected; none -> unlabelled), and `neurons.shown_state`, the status
shown beside its label: that label's own status (accepted or proposed), else, with no label,
its workflow state. Both hold the position in `NEURON_STATES`. Tests check them against this
definition after every kind of label change.

`score_tally` counts each model's scores by (split, method, prediction, simulator), kept by
triggers too, so `default_scorer` is a lookup, not a pass over every score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from labeller.catalogue.database import Database
from labeller.records import (
    PRIMARY_METHOD,
    Explanation,
    LabelStatus,
    PredictionKind,
    Score,
    ScoreMethod,
    Split,
)

ACCEPTED = f"'{LabelStatus.ACCEPTED.value}'"
PROPOSED = f"'{LabelStatus.PROPOSED.value}'"
# Labels that can stand for the neuron: only these are ever marked best.
LIVE_STATUSES = (LabelStatus.PROPOSED, LabelStatus.ACCEPTED, LabelStatus.NEEDS_REVIEW)
_LIVE = ", ".join(f"'{s.value}'" for s in LIVE_STATUSES)

# The values of `neurons.label_state` and `neurons.shown_state`, in the workflow's order (the
# status sort's): a neuron's state is NEURON_STATES.index(name). Fixed by migration m014.
NEURON_STATES = ("unlabelled", "proposed", "needs_review", "accepted", "rejected")


@dataclass(frozen=True)
class Scorer:
    """Whose scores rank a neuron's proposed labels: one simulator's, of one prediction kind.
    `simulator` None: the model has no such scores, so no label is better scored than another."""

    simulator: str | None
    prediction: PredictionKind

    def score(self, explanation: Explanation, method: ScoreMethod = PRIMARY_METHOD) -> Score | None:
        """The explanation's valid score of `method` by this scorer, the newest with a value:
        for the primary method, the score `score_of` reads in SQL (what the list and `rank`
        show), so a page showing a label beside them shows the same number."""
        if self.simulator is None:
            return None
        found = [
            s
            for s in explanation.scores  # in the order stored
            if s.method is method
            and s.split is Split.VALID
            and s.prediction == self.prediction
            and s.simulator == self.simulator
            and s.score is not None
        ]
        # newest; among equals the last stored, as `order by created_at desc, id desc`
        return max(reversed(found), key=lambda s: s.created_at, default=None)


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def score_of(e: str, scorer: Scorer) -> str:
    """SQL: the primary valid score of explanation `e` (an alias) by `scorer`, or NULL (for
    records already read, `Scorer.score`)."""
    if scorer.simulator is None:
        return "(select null)"
    return f"""(select s.score from scores s
    where s.explanation_id = {e}.id and s.method = '{PRIMARY_METHOD.value}'
    and s.split = '{Split.VALID.value}' and s.prediction = '{scorer.prediction.value}'
    and s.simulator = {_literal(scorer.simulator)} and s.score is not null
    order by s.created_at desc, s.id desc limit 1)"""


@dataclass(frozen=True)
class LabelSQL:
    """SQL expressions over a neuron row `n`: its label's id, that label's score, its text."""

    id: str
    score: str
    text: str


def label_sql(scorer: Scorer) -> LabelSQL:
    """The definition of the neuron's label, for labels compared by `scorer`."""
    label = f"""(select label.{{column}} from (
  select e.id, e.text, {score_of("e", scorer)} as sc from explanations e
  where e.neuron_id = n.id and (e.status = {ACCEPTED} or (e.status = {PROPOSED} and (
    coalesce(e.best, 0) = 1 or not exists (
      select 1 from explanations o where o.neuron_id = e.neuron_id and o.source = e.source
      and coalesce(o.best, 0) = 1 and o.status in ({_LIVE})))))
  order by e.status = {ACCEPTED} desc, sc desc nulls last, e.id desc limit 1) label)"""
    return LabelSQL(
        id=label.format(column="id"),
        score=label.format(column="sc"),
        text=label.format(column="text"),
    )


def scored_predictions(
    db: Database, model_id: int, split: Split, simulator: str | None = None
) -> set[str]:
    """The prediction kinds of the model's primary scores on `split` (by `simulator` if given)."""
    return {
        str(row[0])
        for row in db.execute(
            """select distinct prediction from score_tally where model_id = ? and split = ?
            and method = ? and n > 0 and (? is null or simulator = ?)""",
            [model_id, split.value, PRIMARY_METHOD.value, simulator, simulator],
        )
    }


def scored_simulators(
    db: Database, model_id: int, split: Split, prediction: PredictionKind | None
) -> list[tuple[str, int]]:
    """The simulators with primary scores (not NULL) of this kind (None: any) on `split` for
    the model, and how many each has, most first (then by name)."""
    kind = None if prediction is None else prediction.value
    return [
        (str(row[0]), int(row[1]))
        for row in db.execute(
            """select simulator, sum(scored) as n from score_tally
            where model_id = ? and split = ? and method = ? and simulator != ''
            and (? is null or prediction = ?)
            group by simulator having n > 0 order by n desc, simulator""",
            [model_id, split.value, PRIMARY_METHOD.value, kind, kind],
        )
    ]


def default_prediction(
    db: Database, model_id: int, split: Split, simulator: str | None = None
) -> PredictionKind:
    """The first of expected_value, integer, rule that the model's primary scores on `split`
    have (rule when none is scored)."""
    found = scored_predictions(db, model_id, split, simulator)
    return next((kind for kind in PredictionKind if kind.value in found), PredictionKind.RULE)


def default_scorer(db: Database, model_id: int, split: Split = Split.VALID) -> Scorer:
    """`rank`'s default comparison: `default_prediction`, and the simulator with the most
    primary scores of that kind."""
    prediction = default_prediction(db, model_id, split)
    simulators = scored_simulators(db, model_id, split, prediction)
    return Scorer(simulators[0][0] if simulators else None, prediction)


def label_ids(db: Database, neuron_ids: Sequence[int]) -> dict[int, int | None]:
    """The label of each of these neurons (by neuron id): an explanation id, or None."""
    found: dict[int, int | None] = {}
    ids = list(neuron_ids)
    sql: dict[int, str] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        models = db.execute(
            f"select distinct model_id from neurons where id in ({marks})", chunk
        ).fetchall()
        for (model_id,) in models:
            if model_id not in sql:
                sql[model_id] = label_sql(default_scorer(db, model_id)).id
            for neuron_id, label_id in db.execute(
                f"select n.id, {sql[model_id]} from neurons n "
                f"where n.model_id = ? and n.id in ({marks})",
                [model_id, *chunk],
            ):
                found[int(neuron_id)] = None if label_id is None else int(label_id)
    return found
