"""The neuron's label, defined once.

A neuron's label is its accepted label; else the best-scoring of its proposed labels; else none.
Rejected, withdrawn and needs-review labels are never the neuron's label. "Best-scoring" reads
each label's primary score (top-and-random) on the valid split, an LLM simulator's before the
offline baseline's, the newest first (`SCORE_OF`); unscored labels come after scored ones, and
among equals the newest label wins. A source's best-of-K candidates are represented by the one
chosen on the calibration split (marked `best`), never by the luckiest on valid.

`LABEL_ID_SQL` is the definition, as an SQL expression over a neuron row aliased `n`; the list and
its sorts (`labeller.catalogue.browse`), `rank`, `show`, every export and the TUI all read it,
through this fragment or `label_ids`. Nothing else decides which label is the neuron's.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlite_utils import Database

from labeller.records import PRIMARY_METHOD, LabelStatus, Split

ACCEPTED = f"'{LabelStatus.ACCEPTED.value}'"
PROPOSED = f"'{LabelStatus.PROPOSED.value}'"
# Labels that can stand for the neuron: only these are ever marked best.
LIVE_STATUSES = (LabelStatus.PROPOSED, LabelStatus.ACCEPTED, LabelStatus.NEEDS_REVIEW)
_LIVE = ", ".join(f"'{s.value}'" for s in LIVE_STATUSES)

SCORE_OF = f"""(select s.score from scores s
    where s.explanation_id = {{e}}.id and s.method = '{PRIMARY_METHOD.value}'
    and s.split = '{Split.VALID.value}'
    and s.score is not null
    order by s.simulator = 'baseline', s.created_at desc, s.id desc limit 1)"""

_LABEL = f"""(select label.{{column}} from (
  select e.id, e.text, {SCORE_OF.format(e="e")} as sc from explanations e
  where e.neuron_id = n.id and (e.status = {ACCEPTED} or (e.status = {PROPOSED} and (
    coalesce(e.best, 0) = 1 or not exists (
      select 1 from explanations o where o.neuron_id = e.neuron_id and o.source = e.source
      and coalesce(o.best, 0) = 1 and o.status in ({_LIVE})))))
  order by e.status = {ACCEPTED} desc, sc desc nulls last, e.id desc limit 1) label)"""

LABEL_ID_SQL = _LABEL.format(column="id")
LABEL_SCORE_SQL = _LABEL.format(column="sc")
LABEL_TEXT_SQL = _LABEL.format(column="text")


def label_ids(db: Database, neuron_ids: Sequence[int]) -> dict[int, int | None]:
    """The label of each of these neurons (by neuron id): an explanation id, or None."""
    found: dict[int, int | None] = {}
    ids = list(neuron_ids)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for neuron_id, label_id in db.execute(
            f"select n.id, {LABEL_ID_SQL} from neurons n where n.id in ({marks})", chunk
        ):
            found[int(neuron_id)] = None if label_id is None else int(label_id)
    return found
