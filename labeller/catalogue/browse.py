"""Read-only queries the annotation TUI needs beyond `Catalogue`: the neuron list and its queue.

Sorting, filtering and paging happen in SQL with LIMIT/OFFSET, so a catalogue of 300,000 neurons
(GPT-2 XL has 307,200) pages as fast as a small one: only the rows shown are ever built in Python.
A neuron's label is chosen by `label_state`'s one definition; its state (for the status filter
and sort) is read from the columns the catalogue keeps in step with its labels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from labeller.catalogue import Catalogue, rows
from labeller.catalogue.label_state import (
    NEURON_STATES,
    Scorer,
    default_scorer,
    label_sql,
    score_of,
)
from labeller.catalogue.rows import real_from_db
from labeller.errors import UserError
from labeller.records import ExampleKind, LabelStatus, neuron_name


class NeuronStatus(StrEnum):
    """A neuron's label status, derived from the statuses of its explanations."""

    UNLABELLED = "unlabelled"
    PROPOSED = "proposed"
    NEEDS_REVIEW = "needs_review"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class SortKey(StrEnum):
    LAYER = "layer"
    NEURON = "neuron"
    MAX = "max"
    DENSITY = "density"
    LABEL = "label"
    SCORE = "score"
    STATUS = "status"
    COSINE = "cos"
    KURTOSIS = "kurtosis"
    SKEW = "skew"
    DETECTOR = "detector"  # the score of the detector the statistic filter names (`d:NAME>x`)


class Stat(StrEnum):
    """A neuron statistic the list sorts and filters by (its `SortKey` has the same value)."""

    COSINE = "cos"  # cos(w_in, w_out): negative erases what it reads, positive boosts it
    KURTOSIS = "kurtosis"  # excess kurtosis of the activations: heavy tails, rare strong firing
    SKEW = "skew"  # skewness of the activations


STAT_COLUMN: dict[Stat, str] = {
    Stat.COSINE: "w_in_w_out_cosine",
    Stat.KURTOSIS: "kurtosis",
    Stat.SKEW: "skewness",
}
# Names a person may type for each statistic in a range filter ("kurt>10 cos<-0.3").
STAT_NAMES: dict[str, Stat] = {
    "cos": Stat.COSINE,
    "cosine": Stat.COSINE,
    "kurt": Stat.KURTOSIS,
    "kurtosis": Stat.KURTOSIS,
    "skew": Stat.SKEW,
    "skewness": Stat.SKEW,
}
DETECTOR_PREFIX = "d:"


@dataclass(frozen=True)
class DetectorStat:
    """A detector's score against each neuron (`labeller detect`: valid split, top and random
    windows) as a statistic the list filters (`d:number>0.3`) and then sorts by."""

    name: str

    @property
    def value(self) -> str:
        return DETECTOR_PREFIX + self.name


# A neuron's score against the detector named {name} (an SQL value), NULL when unscored.
_DETECTOR_SCORE = """(select d.score from detector_scores d where d.neuron_id = n.id
    and d.detector = {name} and d.split = 'valid' and d.windows = 'top_and_random'
    and d.method = 'top_and_random' and typeof(d.score) = 'real')"""


def _literal(text: str) -> str:
    """A string as an SQL literal, for the derived columns that are composed, not bound."""
    return "'" + text.replace("'", "''") + "'"


# A stored statistic that is a number: NULL (no weights, a constant neuron) and the text 'NaN'
# are neither; a range scan on the (model_id, column) index serves it.
_IS_NUMBER = "{column} between -9e999 and 9e999"


@dataclass(frozen=True)
class StatRange:
    """Neurons whose `stat` lies in [low, high] (either bound may be open); neurons without a
    value for it never match."""

    stat: Stat | DetectorStat
    low: float | None = None
    high: float | None = None

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return f"{self.low:g}≤{self.stat.value}≤{self.high:g}"
        if self.low is not None:
            return f"{self.stat.value}≥{self.low:g}"
        return f"{self.stat.value}≤{self.high:g}"


_RANGE_TERM = re.compile(
    r"([a-z]+|d:[a-z0-9][a-z0-9_.-]*)\s*(<=|>=|<|>|=|≤|≥)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)"
)


def parse_stat_ranges(text: str) -> list[StatRange]:
    """`kurt>10 cos<-0.3` as ranges (< and <= alike: the values are continuous), `d:NAME>0.3` a
    detector's score; a term that does not parse is a UserError naming it."""
    ranges: list[StatRange] = []
    rest = text.strip().lower().replace(",", " ")
    position = 0
    for match in _RANGE_TERM.finditer(rest):
        skipped = rest[position : match.start()].strip()
        if skipped:
            raise UserError(f"cannot read {skipped!r}: write e.g. kurt>10 cos<-0.3 skew>=2")
        position = match.end()
        name, op, number = match.groups()
        stat: Stat | DetectorStat | None = STAT_NAMES.get(name)
        if name.startswith(DETECTOR_PREFIX):
            stat = DetectorStat(name.removeprefix(DETECTOR_PREFIX))
        if stat is None:
            raise UserError(f"no statistic {name!r}: use cos, kurt, skew or d:DETECTOR")
        value = float(number)
        if not math.isfinite(value):
            raise UserError(f"{name}{op}{number}: give a finite number")
        low = value if op in (">", ">=", "≥", "=") else None
        high = value if op in ("<", "<=", "≤", "=") else None
        ranges.append(StatRange(stat, low, high))
    skipped = rest[position:].strip()
    if skipped:
        raise UserError(f"cannot read {skipped!r}: write e.g. kurt>10 cos<-0.3 skew>=2")
    return ranges


# Sort rank of each status: the workflow's order, the value of `neurons.label_state` (the
# neuron's state) and `neurons.shown_state` (the status shown beside its label).
STATUS_RANK: dict[NeuronStatus, int] = {
    status: NEURON_STATES.index(status.value) for status in NeuronStatus
}
_STATUS_OF_RANK = {rank: status for status, rank in STATUS_RANK.items()}


def _sql(value: StrEnum) -> str:
    """A vocabulary value as an SQL literal: the fragments below are composed into many queries,
    so their values are written in rather than bound as parameters."""
    return f"'{value.value}'"


_NEEDS_REVIEW = _sql(LabelStatus.NEEDS_REVIEW)
_TO_REVIEW = (
    f"exists (select 1 from explanations e where e.neuron_id = n.id and e.status = {_NEEDS_REVIEW})"
)

# Sort columns: an optional derived one (alias, the `LabelSQL` field), which may be NULL and then
# sorts last, and plain ones that keep SQLite's default NULL order so their indexes still serve
# the ORDER BY.
_SORT_SQL: dict[SortKey, tuple[tuple[str, str] | None, list[str]]] = {
    SortKey.LAYER: (None, ["layer", "neuron"]),
    SortKey.NEURON: (None, ["neuron", "layer"]),
    SortKey.MAX: (None, ["max", "id"]),
    SortKey.DENSITY: (None, ["density", "id"]),
    SortKey.LABEL: (("best_text", "text"), ["layer", "neuron"]),
    SortKey.SCORE: (("best_score", "score"), ["layer", "neuron"]),
    SortKey.STATUS: (None, ["shown_state", "layer", "neuron"]),
    SortKey.COSINE: (None, [STAT_COLUMN[Stat.COSINE], "id"]),
    SortKey.KURTOSIS: (None, [STAT_COLUMN[Stat.KURTOSIS], "id"]),
    SortKey.SKEW: (None, [STAT_COLUMN[Stat.SKEW], "id"]),
    SortKey.DETECTOR: (None, ["layer", "neuron"]),  # derived in `_list_sql`: it names one
}
# Sorts by a statistic some neurons lack: those neurons come after the rest either way.
_STAT_OF_SORT: dict[SortKey, Stat] = {SortKey(stat.value): stat for stat in Stat}


@dataclass(frozen=True)
class NeuronSummary:
    """One row of the neuron list."""

    layer: int
    neuron: int
    max: float
    density: float
    label: str | None
    score: float | None
    status: NeuronStatus  # the neuron's workflow state: what the status filter and sort use
    explanation_id: int | None
    cosine: float | None = None
    kurtosis: float | None = None
    skewness: float | None = None
    label_status: LabelStatus | None = None  # the status of `label`, the neuron's label
    to_review: bool = False  # a label of the neuron needs review (never the one shown)
    detector: float | None = None  # its score against the list's detector (`ListSpec.detector`)

    @property
    def shown_status(self) -> str:
        """What the list's status column says beside `label`: that label's own status, so it
        never reads "needs_review" beside another label's text; with no label, the neuron's
        state (unlabelled, needs_review, rejected) says why there is none."""
        return self.label_status.value if self.label_status else self.status.value

    def stat(self, stat: Stat) -> float | None:
        return {Stat.COSINE: self.cosine, Stat.KURTOSIS: self.kurtosis, Stat.SKEW: self.skewness}[
            stat
        ]


def _model_id(catalogue: Catalogue, model: str | None) -> int:
    name = catalogue.resolve_model(model).name
    return int(catalogue.db.execute("select id from models where name = ?", [name]).fetchone()[0])


def scanned_layers(catalogue: Catalogue, model: str | None) -> list[int]:
    """The layers that have neurons in the catalogue (for the layer filter's choices)."""
    model_id = _model_id(catalogue, model)
    return [
        int(row[0])
        for row in catalogue.db.execute(
            "select distinct layer from neurons where model_id = ? order by layer", [model_id]
        )
    ]


class Todo(StrEnum):
    """What a queue walks, on top of the list's own filters: the neurons still needing a person."""

    NOT_ACCEPTED = "no accepted label"
    UNLABELLED = "unlabelled"
    SCORE_BELOW = "best score below"


@dataclass(frozen=True)
class ListSpec:
    """Which neurons the list shows and in what order: everything but the page.

    `todo` narrows it to a queue; with `Todo.SCORE_BELOW`, `below` is the threshold (a neuron
    not yet accepted whose best label scores under it, or has no score at all). `ranges` keeps
    only neurons whose statistics lie in them.
    """

    sort: SortKey = SortKey.LAYER
    descending: bool = False
    layer: int | None = None
    status: NeuronStatus | None = None
    min_score: float | None = None
    max_score: float | None = None
    text: str = ""
    todo: Todo | None = None
    below: float | None = None
    ranges: tuple[StatRange, ...] = ()

    @property
    def detector(self) -> str | None:
        """The detector the list filters by (its first), which the detector sort orders by."""
        return next((r.stat.name for r in self.ranges if isinstance(r.stat, DetectorStat)), None)


@dataclass(frozen=True)
class ListPlace:
    """A neuron's place in a sorted list: its sort values as SQL stores them, so a walk can step
    from it to its neighbours with the list's own ORDER BY and WHERE, one row at a time, even
    after the neuron's label (and so its place) changed or it left the list."""

    layer: int
    neuron: int
    key: tuple[Any, ...]


@dataclass
class _ListSQL:
    """One list's SQL pieces, shared by its pages and its walk."""

    where: str
    values: list[Any]
    derived: dict[str, str]  # alias -> SQL, computed per neuron in the materialised CTE
    outer: list[str]  # conditions on the derived columns
    outer_values: list[Any]
    sort_alias: str | None  # the derived sort column (NULLs last in either direction)
    columns: list[str]  # the plain sort columns, never NULL
    descending: bool
    # Only indexed columns and no per-neuron subqueries: the page stops early, counted apart.
    plain: bool
    scorer: Scorer  # whose scores pick the neurons' labels (the model's default)
    # A statistic sort: its column's value where it is a number (else NULL), which a plain
    # query computes inline for `sort_alias`, and the statistic.
    sort_expr: str | None = None
    sort_stat: Stat | None = None
    ranges: tuple[StatRange, ...] = ()
    layer: int | None = None

    def _sort(self, inline: bool) -> str | None:
        return self.sort_expr if inline and self.sort_expr is not None else self.sort_alias

    def order(self, backward: bool = False, inline: bool = False) -> str:
        """The list's ORDER BY; `backward` is its exact reverse (derived NULLs first); `inline`
        writes a statistic sort's expression rather than its alias (a query without the CTE)."""
        descending = self.descending != backward
        direction = "desc" if descending else "asc"
        order = ", ".join(f"{column} {direction}" for column in self.columns)
        sort = self._sort(inline)
        if sort is not None:
            nulls = "first" if backward else "last"
            order = f"{sort} {direction} nulls {nulls}, {order}"
        return order

    def key_columns(self, inline: bool = False) -> list[str]:
        sort = self._sort(inline)
        return ([sort] if sort else []) + self.columns

    def beyond(
        self, key: tuple[Any, ...], backward: bool, inline: bool = False
    ) -> tuple[str, list[Any]]:
        """Rows after `key` in the list's order (before it, `backward`)."""
        later = ">" if self.descending == backward else "<"
        marks = ", ".join("?" * len(self.columns))
        rest = f"({', '.join(self.columns)}) {later} ({marks})"
        alias = self._sort(inline)
        if alias is None:
            return rest, list(key)
        value, plain = key[0], list(key[1:])
        if not backward:
            if value is None:
                return f"({alias} is null and {rest})", plain
            return (
                f"({alias} is null or {alias} {later} ? or ({alias} = ? and {rest}))",
                [value, value, *plain],
            )
        if value is None:
            return f"({alias} is not null or {rest})", plain
        return (
            f"({alias} is not null and ({alias} {later} ? or ({alias} = ? and {rest})))",
            [value, value, *plain],
        )


def _list_sql(catalogue: Catalogue, model: str | None, spec: ListSpec) -> _ListSQL:
    model_id = _model_id(catalogue, model)
    scorer = default_scorer(catalogue.db, model_id)
    label = label_sql(scorer)
    clauses: list[str] = ["n.model_id = ?"]
    values: list[Any] = [model_id]
    if spec.layer is not None:
        clauses.append("n.layer = ?")
        values.append(spec.layer)
    if spec.status is not None:
        clauses.append(f"n.label_state = {STATUS_RANK[spec.status]}")
    if spec.todo is Todo.UNLABELLED:
        clauses.append(f"n.label_state = {STATUS_RANK[NeuronStatus.UNLABELLED]}")
    elif spec.todo is not None:
        clauses.append(f"n.label_state != {STATUS_RANK[NeuronStatus.ACCEPTED]}")
    if spec.text.strip():
        escaped = spec.text.strip().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append(
            "exists (select 1 from explanations t where t.neuron_id = n.id "
            "and t.text like ? escape '\\')"
        )
        values.append(f"%{escaped}%")
    for wanted in spec.ranges:
        low = -math.inf if wanted.low is None else wanted.low
        bounds = [low, math.inf if wanted.high is None else wanted.high]
        if isinstance(wanted.stat, DetectorStat):
            clauses.append(f"{_DETECTOR_SCORE.format(name='?')} between ? and ?")
            values += [wanted.stat.name, *bounds]
            continue
        clauses.append(f"n.{STAT_COLUMN[wanted.stat]} between ? and ?")
        values += bounds
    derived: dict[str, str] = {}
    outer: list[str] = []
    outer_values: list[Any] = []
    if spec.min_score is not None or spec.max_score is not None:
        derived["best_score"] = label.score
        outer.append("best_score is not null")
        for bound, op in ((spec.min_score, ">="), (spec.max_score, "<=")):
            if bound is not None:
                outer.append(f"best_score {op} ?")
                outer_values.append(bound)
    if spec.todo is Todo.SCORE_BELOW and spec.below is not None:
        derived["best_score"] = label.score
        outer.append("coalesce(best_score < ?, 1)")  # no score at all is weaker still
        outer_values.append(spec.below)
    sort_derived, columns = _SORT_SQL[spec.sort]
    sort_alias = None
    if sort_derived is not None:
        sort_alias, field = sort_derived
        derived[sort_alias] = getattr(label, field)
    if spec.sort is SortKey.DETECTOR:
        sort_alias = "detector_score"
        named = spec.detector
        derived[sort_alias] = (
            "null" if named is None else _DETECTOR_SCORE.format(name=_literal(named))
        )
    plain = not derived and not spec.text.strip()
    sort_stat = _STAT_OF_SORT.get(spec.sort)
    sort_expr = None
    if sort_stat is not None:
        # NULL and NaN sort last either way, then by id: what `_stat_sorted` pages through.
        column = f"n.{STAT_COLUMN[sort_stat]}"
        sort_expr = f"(case when {_IS_NUMBER.format(column=column)} then {column} end)"
        sort_alias, columns = "stat_value", ["id"]
        if not plain:
            derived[sort_alias] = sort_expr
    return _ListSQL(
        where=" and ".join(clauses),
        values=values,
        derived=derived,
        outer=outer,
        outer_values=outer_values,
        sort_alias=sort_alias,
        columns=columns,
        descending=spec.descending,
        plain=plain,
        scorer=scorer,
        sort_expr=sort_expr,
        sort_stat=sort_stat,
        ranges=tuple(spec.ranges),
        layer=spec.layer,
    )


def _materialised(sql: _ListSQL, select: str, where: list[str], tail: str) -> str:
    """Every matching neuron with its derived columns computed once, then filtered and sorted."""
    extra = "".join(f", {expr} as {alias}" for alias, expr in sql.derived.items())
    inner = sql.where
    if "n.layer = ?" not in inner:
        # Every row is visited anyway: read the table in rowid order rather than through an
        # index on another column, which costs a random lookup per row (4x slower at 300k).
        inner = inner.replace("n.model_id = ?", "+n.model_id = ?", 1)
    return f"""with page as materialized (
        select n.id, n.layer, n.neuron, n.max, n.density{extra} from neurons n where {inner})
        select {select} from page where {" and ".join(where) or "1"} {tail}"""


def neuron_page(
    catalogue: Catalogue,
    model: str | None,
    *,
    sort: SortKey = SortKey.LAYER,
    descending: bool = False,
    layer: int | None = None,
    status: NeuronStatus | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    text: str = "",
    todo: Todo | None = None,
    below: float | None = None,
    ranges: Sequence[StatRange] = (),
    offset: int = 0,
    limit: int = 100,
) -> tuple[list[NeuronSummary], int]:
    """One page of the neuron list and the number of neurons that match the filters.

    Neurons without a label, score or statistic sort last whichever the direction, so the
    interesting ones come first. Plain sorts and filters use indexes and stop at the page; a
    derived sort or score filter computes each neuron's best label once (a materialised CTE) and
    counts in the same pass.
    """
    spec = ListSpec(
        sort, descending, layer, status, min_score, max_score, text, todo, below, tuple(ranges)
    )
    return list_page(catalogue, model, spec, offset=offset, limit=limit)


def list_page(
    catalogue: Catalogue, model: str | None, spec: ListSpec, *, offset: int = 0, limit: int = 100
) -> tuple[list[NeuronSummary], int]:
    """`neuron_page` for a `ListSpec`; with a detector filter, each row carries its score."""
    found, total = _list_page(catalogue, model, spec, offset=offset, limit=limit)
    if spec.detector is None or not found:
        return found, total
    where = " or ".join("(n.layer = ? and n.neuron = ?)" for _ in found)
    scores = {
        (int(r[0]), int(r[1])): r[2]
        for r in catalogue.db.execute(
            f"""select n.layer, n.neuron, {_DETECTOR_SCORE.format(name="?")} from neurons n
            where n.model_id = ? and ({where})""",
            [
                spec.detector,
                _model_id(catalogue, model),
                *(v for s in found for v in (s.layer, s.neuron)),
            ],
        )
    }
    return [replace(s, detector=scores.get((s.layer, s.neuron))) for s in found], total


def _list_page(
    catalogue: Catalogue, model: str | None, spec: ListSpec, *, offset: int = 0, limit: int = 100
) -> tuple[list[NeuronSummary], int]:
    sql = _list_sql(catalogue, model, spec)
    window = [limit, max(offset, 0)]
    if sql.plain and sql.sort_stat is not None:
        # Through the statistic's index, unless one layer's rows (found by the layer index)
        # are fewer, or a range on another statistic narrows the count more than it does.
        index = sql.layer is None
        narrow = index and not any(r.stat is not sql.sort_stat for r in sql.ranges)
        direction = "desc" if sql.descending else "asc"
        return _stat_sorted(catalogue, sql, sql.sort_stat, direction, offset, limit, index, narrow)
    if sql.plain:
        # A statistic range is checked row by row in the sort's own order (which stops at the
        # page) rather than found through its index and then sorted; the count uses the index.
        in_order = _ranges_in_order(sql)
        ids = [
            int(row[0])
            for row in catalogue.db.execute(
                f"select id from neurons n where {in_order} order by {sql.order(inline=True)} "
                "limit ? offset ?",
                [*sql.values, *window],
            )
        ]
        return _summaries(catalogue, sql.scorer, ids), _count(catalogue, sql.where, sql.values)
    rows = catalogue.db.execute(
        _materialised(
            sql, "id, count(*) over ()", sql.outer, f"order by {sql.order()} limit ? offset ?"
        ),
        [*sql.values, *sql.outer_values, *window],
    ).fetchall()
    if rows:
        return _summaries(catalogue, sql.scorer, [int(r[0]) for r in rows]), int(rows[0][1])
    if offset <= 0:
        return [], 0
    _, total = _list_page(catalogue, model, spec, offset=0, limit=1)
    return [], total


def _ranges_in_order(sql: _ListSQL) -> str:
    """The list's WHERE with its statistic ranges kept off their indexes (`+column`), so SQLite
    reads rows in the sort's order and checks the ranges row by row."""
    where = sql.where
    for wanted in sql.ranges:
        if isinstance(wanted.stat, DetectorStat):
            continue
        column = f"n.{STAT_COLUMN[wanted.stat]}"
        where = where.replace(f"{column} between", f"+{column} between")
    return where


def list_place(
    catalogue: Catalogue, model: str | None, spec: ListSpec, layer: int, neuron: int
) -> ListPlace:
    """Where the neuron sits in the list's order (it need not match the list's filters)."""
    sql = _list_sql(catalogue, model, spec)
    computed = dict(sql.derived)
    if sql.sort_alias is not None and sql.sort_expr is not None:
        computed[sql.sort_alias] = sql.sort_expr
    expressions = [computed.get(column, f"n.{column}") for column in sql.key_columns()]
    row = catalogue.db.execute(
        f"select {', '.join(expressions)} from neurons n "
        "where n.model_id = ? and n.layer = ? and n.neuron = ?",
        [_model_id(catalogue, model), layer, neuron],
    ).fetchone()
    if row is None:
        raise UserError(f"neuron {neuron_name(layer, neuron)} has not been scanned")
    return ListPlace(layer, neuron, tuple(row))


def list_step(
    catalogue: Catalogue,
    model: str | None,
    spec: ListSpec,
    place: ListPlace,
    *,
    backward: bool = False,
    count: bool = True,
) -> tuple[ListPlace | None, int | None]:
    """The neuron just after `place` in the list (just before it, `backward`), and how many of
    the list's neurons lie beyond `place` that way: one row of the list's own ORDER BY and WHERE,
    so a walk costs one page query per step however long the list.

    Without a derived sort or score filter the neighbour is read in index order, stopping at the
    first row that matches, and `count=False` skips counting (None): on 307,200 neurons a
    filtered count visits every row, the neighbour only as many as it takes.
    """
    sql = _list_sql(catalogue, model, spec)
    left: int | None
    if sql.plain and sql.sort_stat is not None:
        return _stat_step(catalogue, sql, sql.sort_stat, place, backward, count)
    if not sql.derived:
        beyond, beyond_values = sql.beyond(place.key, backward, inline=True)
        keys = ", ".join(sql.key_columns(inline=True))
        order = sql.order(backward, inline=True)
        where = f"{sql.where} and {beyond}"
        values = [*sql.values, *beyond_values]
        in_order = f"{_ranges_in_order(sql)} and {beyond}"
        row = catalogue.db.execute(
            f"select layer, neuron, {keys} from neurons n where {in_order} "
            f"order by {order} limit 1",
            values,
        ).fetchone()
        left = (_count(catalogue, where, values) if row is not None else 0) if count else None
    else:
        beyond, beyond_values = sql.beyond(place.key, backward)
        keys = ", ".join(sql.key_columns())
        row = catalogue.db.execute(
            _materialised(
                sql,
                f"layer, neuron, {keys}, count(*) over ()",
                [*sql.outer, beyond],
                f"order by {sql.order(backward)} limit 1",
            ),
            [*sql.values, *sql.outer_values, *beyond_values],
        ).fetchone()
        left = int(row[-1]) if row is not None else 0
        row = row[:-1] if row is not None else None
    if row is None:
        return None, 0
    return ListPlace(int(row[0]), int(row[1]), tuple(row[2:])), left


def _stat_step(
    catalogue: Catalogue,
    sql: _ListSQL,
    stat: Stat,
    place: ListPlace,
    backward: bool,
    count: bool,
) -> tuple[ListPlace | None, int | None]:
    """`list_step` on a statistic sort, through the statistic's index: the neurons with a value
    in order, then those without (NULL or NaN) by id, as `_stat_sorted` pages them; each part
    is one index range, so a step reads a row or two however long the list."""
    column = f"n.{STAT_COLUMN[stat]}"
    number = _IS_NUMBER.format(column=column)
    where = _ranges_in_order(sql)
    descending = sql.descending != backward
    direction, later = ("desc", "<") if descending else ("asc", ">")
    value, neuron_id = place.key
    # (WHERE, values, whether its rows have a value): the parts of the list beyond `place`.
    # Bounded at `value` on the index's side, so the index range starts there (the column's
    # own `later` test alone would be read from the index's end).
    bounded = f"{column} between -9e999 and ?" if descending else f"{column} between ? and 9e999"
    numbered = (
        f"{where} and {bounded} and ({column} {later} ? or id {later} ?)",
        [*sql.values, value, value, neuron_id],
        True,
    )
    every_numbered = (f"{where} and {number}", sql.values, True)
    unnumbered = f"{where} and not coalesce({number}, 0)"
    beyond_unnumbered = (f"{unnumbered} and id {later} ?", [*sql.values, neuron_id], False)
    if value is not None:
        parts = [numbered] if backward else [numbered, (unnumbered, sql.values, False)]
    else:
        parts = [beyond_unnumbered, every_numbered] if backward else [beyond_unnumbered]
    for part_where, values, valued in parts:
        order = f"{column} {direction}, id {direction}" if valued else f"id {direction}"
        found = catalogue.db.execute(
            f"select layer, neuron, id, {column if valued else 'null'} from neurons n "
            f"where {part_where} order by {order} limit 1",
            values,
        ).fetchone()
        if found is not None:
            break
    else:
        return None, 0
    left = sum(_count(catalogue, w, v) for w, v, _ in parts) if count else None
    return ListPlace(int(found[0]), int(found[1]), (found[3], int(found[2]))), left


def _stat_sorted(
    catalogue: Catalogue,
    sql: _ListSQL,
    stat: Stat,
    direction: str,
    offset: int,
    limit: int,
    index: bool = True,
    count_by_index: bool = True,
) -> tuple[list[NeuronSummary], int]:
    """Sorted by a statistic: first the neurons that have a value, in order, then those that do
    not (NULL or NaN), by id, wherever the page falls. With `index` the rows are read in the
    order of the statistic's (model_id, column) index and reading stops at the page; without it
    (`+column`: SQLite then uses another index, e.g. the layer's) they are sorted. The count
    uses the index too unless `count_by_index` is off."""
    where, values = sql.where, sql.values
    column = f"n.{STAT_COLUMN[stat]}"
    plain = column if index else f"+{column}"
    number = _IS_NUMBER.format(column=plain)
    offset = max(offset, 0)
    ids = [
        int(row[0])
        for row in catalogue.db.execute(
            f"""select id from neurons n where {where} and {number}
            order by {plain} {direction}, id {direction} limit ? offset ?""",
            [*values, limit, offset],
        )
    ]
    if len(ids) < limit:  # the page runs past the neurons with a value: then those without
        counted = number if count_by_index else _IS_NUMBER.format(column=f"+{column}")
        numbered = _count(catalogue, f"{where} and {counted}", values)
        ids += [
            int(row[0])
            for row in catalogue.db.execute(
                f"""select id from neurons n where {where} and not coalesce({number}, 0)
                order by id {direction} limit ? offset ?""",
                [*values, limit - len(ids), max(0, offset - numbered)],
            )
        ]
    return _summaries(catalogue, sql.scorer, ids), _count(catalogue, where, values)


def _count(catalogue: Catalogue, where: str, values: list[Any]) -> int:
    return int(
        catalogue.db.execute(f"select count(*) from neurons n where {where}", values).fetchone()[0]
    )


def _summaries(catalogue: Catalogue, scorer: Scorer, ids: list[int]) -> list[NeuronSummary]:
    """Label (by `scorer`, the model's), score and status of just these neurons, in order."""
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    rows = {
        int(row[0]): row
        for row in catalogue.db.execute(
            f"""select n.id, n.layer, n.neuron, n.max, n.density, n.label_state, b.id, b.text,
            {score_of("b", scorer)}, b.status, {_TO_REVIEW},
            n.w_in_w_out_cosine, n.kurtosis, n.skewness
            from neurons n left join explanations b on b.id = {label_sql(scorer).id}
            where n.id in ({marks})""",
            ids,
        )
    }
    return [
        NeuronSummary(
            layer=rows[i][1],
            neuron=rows[i][2],
            max=float(rows[i][3]),  # may be stored as the text NaN
            density=float(rows[i][4]),
            status=_STATUS_OF_RANK[rows[i][5]],
            explanation_id=rows[i][6],
            label=rows[i][7],
            score=rows[i][8],
            label_status=None if rows[i][9] is None else LabelStatus(rows[i][9]),
            to_review=bool(rows[i][10]),
            cosine=real_from_db(rows[i][11]),
            kurtosis=real_from_db(rows[i][12]),
            skewness=real_from_db(rows[i][13]),
        )
        for i in ids
    ]


def _examples_with_token_ids(
    catalogue: Catalogue, model: str | None, layer: int, neuron: int
) -> list[tuple[rows.PackedExample, rows.Row]]:
    """The neuron's stored examples, each with its window's token ids (none if not scanned)."""
    found = catalogue.neuron_id(_model_id(catalogue, model), layer, neuron)
    return [] if found is None else catalogue.packed_examples(found, "token_ids")


def example_token_ids(
    catalogue: Catalogue, model: str | None, layer: int, neuron: int, kind: str, rank: int
) -> list[int]:
    """The exact token ids of a stored example window, so perturbing it perturbs what the scan
    saw (re-encoding the decoded text can split differently)."""
    found = neuron_token_ids(catalogue, model, layer, neuron).get((kind, rank))
    if found is None:
        raise UserError(f"neuron {neuron_name(layer, neuron)} has no {kind} example {rank}")
    return found


def neuron_token_ids(
    catalogue: Catalogue, model: str | None, layer: int, neuron: int
) -> dict[tuple[str, int], list[int]]:
    """The exact token ids of every stored example window of a neuron, by (kind, rank)."""
    return {
        (example.kind.value, example.rank): list(window["token_ids"])
        for example, window in _examples_with_token_ids(catalogue, model, layer, neuron)
    }


def layer_maxes(catalogue: Catalogue, model: str | None) -> dict[int, list[float]]:
    """Per scanned layer, each neuron's scanned max by neuron index (NaN where unknown): what
    the search across neurons divides by to rank neurons against their own maxima."""
    model_id = _model_id(catalogue, model)
    width = catalogue.resolve_model(model).d_mlp
    out: dict[int, list[float]] = {}
    for layer, neuron, value in catalogue.db.execute(
        "select layer, neuron, max from neurons where model_id = ?", [model_id]
    ):
        row = out.setdefault(int(layer), [math.nan] * max(width, neuron + 1))
        if neuron >= len(row):
            row.extend([math.nan] * (neuron + 1 - len(row)))
        row[int(neuron)] = float(value)
    return out


def neuron_summaries(
    catalogue: Catalogue, model: str | None, neurons: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], NeuronSummary]:
    """The list's row (label, score, status, statistics) of each (layer, neuron) in the catalogue;
    neurons it does not hold are left out."""
    model_id = _model_id(catalogue, model)
    wanted = list(dict.fromkeys(neurons))
    ids: list[int] = []
    for start in range(0, len(wanted), 400):
        chunk = wanted[start : start + 400]
        pairs = " or ".join("(layer = ? and neuron = ?)" for _ in chunk)
        ids += [
            int(row[0])
            for row in catalogue.db.execute(
                f"select id from neurons where model_id = ? and ({pairs})",
                [model_id, *(v for pair in chunk for v in pair)],
            )
        ]
    scorer = default_scorer(catalogue.db, model_id)
    return {(s.layer, s.neuron): s for s in _summaries(catalogue, scorer, ids)}


def top_example_windows(
    catalogue: Catalogue,
    model: str | None,
    layer: int,
    neuron: int,
    kind: ExampleKind = ExampleKind.TOP,
) -> list[tuple[int, list[int], int]]:
    """The neuron's top (or `kind`) examples as (rank, the window's token ids, the max token's
    position)."""
    stored = _examples_with_token_ids(catalogue, model, layer, neuron)
    return [
        (example.rank, window["token_ids"], example.max_index)
        for example, window in stored
        if example.kind is kind
    ]
