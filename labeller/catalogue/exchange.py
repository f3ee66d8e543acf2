"""SQL for export and import: streaming reads in (model, layer, neuron) order, and merge writes.

Part of the catalogue (the only code that speaks SQL). The file formats and the merge policy live
in `labeller.exchange`; they see only records from `labeller.records` and the small row classes
below, never a cursor. Reads stream one neuron at a time so an export's memory does not grow with
the catalogue; writes happen inside `write_transaction`, which the importer opens per batch.
Rows become records through `labeller.catalogue.rows`, as everywhere in the catalogue.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from labeller.catalogue import Catalogue, rows
from labeller.catalogue.detectors import detector_scores_of
from labeller.catalogue.rows import NeuronRow, Row, WindowRow, params_key
from labeller.records import (
    PRIMARY_METHOD,
    DetectorScore,
    Example,
    ExampleKind,
    Explanation,
    HistoryEntry,
    LabelState,
    LabelStatus,
    ModelRecord,
    NeuronStats,
    RelatedNeuron,
    ScanParams,
    ScanRecord,
    ScanStatus,
    Score,
    Split,
    WeightFacts,
)

# `--min-score X` keeps labels whose primary score (on the valid split: the one `rank` sorts by
# and best-of-K picks with) is at least X.
MIN_SCORE_SPLIT = Split.VALID


@dataclass(frozen=True)
class Selection:
    """Which neurons and labels an export covers; `status`/`min_score` None keep every label."""

    models: list[str]
    layers: list[int] | None = None
    status: LabelStatus | None = None
    min_score: float | None = None

    @property
    def filters_labels(self) -> bool:
        return self.status is not None or self.min_score is not None


@dataclass(frozen=True)
class StoredExample:
    example: Example
    token_ids: list[int]


@dataclass(frozen=True)
class StoredExplanation:
    id: int
    explanation: Explanation
    updated_at: str | None
    scan_id: int | None


@dataclass(frozen=True)
class StoredHistory:
    """One history entry, and for an undo the id of the entry it undid."""

    entry: HistoryEntry
    undoes: int | None


@dataclass(frozen=True)
class StoredNeuron:
    id: int
    model: str
    layer: int
    neuron: int
    scan_id: int | None
    stats: NeuronStats
    weights: WeightFacts | None
    top_examples: list[StoredExample]
    random_examples: list[StoredExample]
    explanations: list[StoredExplanation]
    history: list[StoredHistory]
    label_id: int | None = None  # the neuron's label (`label_state`); may be filtered out
    quantile_examples: list[StoredExample] = field(default_factory=list)
    subset_examples: list[StoredExample] = field(default_factory=list)
    detectors: list[DetectorScore] = field(default_factory=list)
    dla_top_examples: list[StoredExample] = field(default_factory=list)
    dla_bottom_examples: list[StoredExample] = field(default_factory=list)
    related: list[RelatedNeuron] | None = None  # from a scan with --correlations


# --- reading ------------------------------------------------------------------------------------


@contextmanager
def read_snapshot(catalogue: Catalogue) -> Iterator[None]:
    """One read transaction: the export sees a single consistent state while others write (WAL)."""
    catalogue.db.execute("BEGIN")
    try:
        yield
    finally:
        catalogue.db.execute("COMMIT")


def _in(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _explanation_where(selection: Selection, alias: str = "e") -> tuple[str, list[Any]]:
    clauses: list[str] = ["1 = 1"]
    values: list[Any] = []
    if selection.status is not None:
        clauses.append(f"{alias}.status = ?")
        values.append(selection.status.value)
    if selection.min_score is not None:
        clauses.append(
            f"exists (select 1 from scores s where s.explanation_id = {alias}.id "
            "and s.method = ? and s.split = ? and s.score >= ?)"
        )
        values += [PRIMARY_METHOD.value, MIN_SCORE_SPLIT.value, selection.min_score]
    return " and ".join(clauses), values


def _neuron_where(selection: Selection) -> tuple[str, list[Any]]:
    clauses = [f"m.name in ({_in(selection.models)})"]
    values: list[Any] = list(selection.models)
    if selection.layers is not None:
        clauses.append(f"n.layer in ({_in(selection.layers)})")
        values += selection.layers
    if selection.filters_labels:
        where, more = _explanation_where(selection, "fe")
        clauses.append(
            f"exists (select 1 from explanations fe where fe.neuron_id = n.id and {where})"
        )
        values += more
    return " and ".join(clauses), values


def count_neurons(catalogue: Catalogue, selection: Selection) -> int:
    where, values = _neuron_where(selection)
    row = catalogue.db.execute(
        f"select count(*) from neurons n join models m on m.id = n.model_id where {where}", values
    ).fetchone()
    return int(row[0])


def _referenced_scan_ids(selection: Selection) -> tuple[str, list[Any]]:
    where, values = _neuron_where(selection)
    ewhere, evalues = _explanation_where(selection)
    sql = f"""
        select n.scan_id from neurons n join models m on m.id = n.model_id where {where}
        union
        select e.scan_id from explanations e join neurons n on n.id = e.neuron_id
        join models m on m.id = n.model_id where {where} and {ewhere}"""
    return sql, values + values + evalues


def scans_for(catalogue: Catalogue, selection: Selection) -> list[ScanRecord]:
    """The scans the selected neurons and labels refer to, in an order independent of ids."""
    ids_sql, values = _referenced_scan_ids(selection)
    return [
        rows.scan_from_row(row)
        for row in catalogue.db.query(
            f"""select s.*, m.name as model from scans s join models m on m.id = s.model_id
            where s.id in ({ids_sql}) order by m.name, s.started_at, s.params_key, s.id""",
            values,
        )
    ]


def models_for(catalogue: Catalogue, selection: Selection) -> list[ModelRecord]:
    """The models of the selected neurons and of their scans, by name."""
    where, values = _neuron_where(selection)
    ids_sql, scan_values = _referenced_scan_ids(selection)
    return [
        rows.model_from_row(row)
        for row in catalogue.db.query(
            f"""select * from models where id in (
                select n.model_id from neurons n join models m on m.id = n.model_id where {where}
                union select model_id from scans where id in ({ids_sql}))
            order by name""",
            values + scan_values,
        )
    ]


def iter_neurons(catalogue: Catalogue, selection: Selection) -> Iterator[StoredNeuron]:
    """The selected neurons one at a time, in (model, layer, neuron) order."""
    where, values = _neuron_where(selection)
    cursor = catalogue.db.execute(
        f"""select n.*, m.name as model_name from neurons n join models m on m.id = n.model_id
        where {where} order by m.name, n.layer, n.neuron""",
        values,
    )
    columns = [d[0] for d in cursor.description]
    for raw in cursor:
        yield _stored_neuron(catalogue, dict(zip(columns, raw, strict=True)), selection)


def _stored_neuron(catalogue: Catalogue, row: Row, selection: Selection) -> StoredNeuron:
    neuron_id = int(row["id"])
    examples = list(_examples(catalogue, neuron_id))
    explanations = _explanations(catalogue, neuron_id, *_explanation_where(selection))
    kept = {e.id for e in explanations}
    history = [
        h
        for h in our_history(catalogue, neuron_id)
        if h.entry.explanation_id is None or h.entry.explanation_id in kept
    ]
    return StoredNeuron(
        id=neuron_id,
        model=row["model_name"],
        layer=row["layer"],
        neuron=row["neuron"],
        scan_id=row["scan_id"],
        stats=rows.stats_from_row(row),
        weights=rows.weights_from_row(row),
        top_examples=[e for e in examples if e.example.kind is ExampleKind.TOP],
        random_examples=[e for e in examples if e.example.kind is ExampleKind.RANDOM],
        quantile_examples=[e for e in examples if e.example.kind is ExampleKind.QUANTILE],
        subset_examples=[e for e in examples if e.example.kind is ExampleKind.SUBSET_TOP],
        dla_top_examples=[e for e in examples if e.example.kind is ExampleKind.DLA_TOP],
        dla_bottom_examples=[e for e in examples if e.example.kind is ExampleKind.DLA_BOTTOM],
        related=rows.related_from_row(row),
        explanations=explanations,
        history=history,
        label_id=catalogue.label_id(neuron_id),
        detectors=detector_scores_of(catalogue, neuron_id),
    )


def _examples(catalogue: Catalogue, neuron_id: int) -> Iterator[StoredExample]:
    for example, window in catalogue.packed_examples(
        neuron_id, "document, offset, tokens, token_ids, subset"
    ):
        yield StoredExample(
            example=rows.example_from_packed(example, window),
            token_ids=window["token_ids"],
        )


def _explanations(
    catalogue: Catalogue, neuron_id: int, where: str, values: list[Any]
) -> list[StoredExplanation]:
    found = list(
        catalogue.db.query(
            f"select * from explanations e where e.neuron_id = ? and {where} order by e.id",
            [neuron_id, *values],
        )
    )
    scores: dict[int, list[Score]] = {int(r["id"]): [] for r in found}
    if found:
        for s in catalogue.db.query(
            f"select * from scores where explanation_id in ({_in(list(scores))}) order by id",
            list(scores),
        ):
            scores[int(s["explanation_id"])].append(rows.score_from_row(s))
    return [
        StoredExplanation(
            id=int(r["id"]),
            explanation=rows.explanation_from_row(r, scores[int(r["id"])]),
            updated_at=r["updated_at"],
            scan_id=r["scan_id"],
        )
        for r in found
    ]


def our_history(catalogue: Catalogue, neuron_id: int) -> list[StoredHistory]:
    """The neuron's history, oldest first, with the links from undo entries to what they undid."""
    return [
        StoredHistory(entry=rows.history_from_row(row), undoes=rows.undone_id(row))
        for row in catalogue.db.query(
            """select h.*, n.layer, n.neuron from label_history h
            join neurons n on n.id = h.neuron_id where h.neuron_id = ? order by h.id""",
            [neuron_id],
        )
    ]


def latest_entry(catalogue: Catalogue, explanation_id: int) -> HistoryEntry | None:
    """The explanation's newest history entry: the state `history` shows it in."""
    for row in catalogue.db.query(
        """select h.*, n.layer, n.neuron from label_history h join neurons n on n.id = h.neuron_id
        where h.explanation_id = ? order by h.id desc limit 1""",
        [explanation_id],
    ):
        return rows.history_from_row(row)
    return None


def accepted_by(catalogue: Catalogue, explanation_id: int) -> str | None:
    """Who made this label accepted: the latest history entry that left it accepted."""
    for row in catalogue.db.query(
        "select after, annotator from label_history where explanation_id = ? order by id desc",
        [explanation_id],
    ):
        state = rows.label_state_from_json(row["after"])
        if state is not None and state.status is LabelStatus.ACCEPTED:
            return row["annotator"]
    return None


# --- import: lookups and writes (call inside catalogue.write_transaction()) ----------------------


def find_model_id(catalogue: Catalogue, name: str) -> int | None:
    row = catalogue.db.execute("select id from models where name = ?", [name]).fetchone()
    return int(row[0]) if row else None


def find_model(catalogue: Catalogue, name: str) -> ModelRecord | None:
    for row in catalogue.db.query("select * from models where name = ?", [name]):
        return rows.model_from_row(row)
    return None


def insert_model(catalogue: Catalogue, model: ModelRecord) -> int:
    return catalogue.insert("models", rows.model_to_row(model))


def find_scan_id(
    catalogue: Catalogue, model_id: int, params: ScanParams, started_at: str
) -> int | None:
    """A scan is the same scan on both sides when its model, parameters and start time match."""
    row = catalogue.db.execute(
        "select id from scans where model_id = ? and params_key = ? and started_at is ? "
        "order by id limit 1",
        [model_id, params_key(params), started_at],
    ).fetchone()
    return int(row[0]) if row else None


def insert_scan(
    catalogue: Catalogue,
    model_id: int,
    params: ScanParams,
    status: ScanStatus,
    *,
    tokens_seen: int,
    windows_seen: int,
    started_at: str,
    updated_at: str,
) -> int:
    return catalogue.insert(
        "scans",
        rows.scan_to_row(
            model_id,
            params,
            status,
            tokens_seen=tokens_seen,
            windows_seen=windows_seen,
            started_at=started_at,
            updated_at=updated_at,
        ),
    )


def neuron_scan_id(catalogue: Catalogue, neuron_id: int) -> int | None:
    row = catalogue.db.execute("select scan_id from neurons where id = ?", [neuron_id]).fetchone()
    return row[0] if row else None


def insert_neuron(
    catalogue: Catalogue,
    model_id: int,
    scan_id: int | None,
    layer: int,
    neuron: int,
    stats: NeuronStats,
    weights: WeightFacts | None,
    examples: Sequence[StoredExample],
    related: list[RelatedNeuron] | None = None,
) -> int:
    """A neuron this catalogue lacks, with its examples (and related neurons, when its scan kept
    them); windows are shared by (scan, place)."""
    window_ids: dict[int, int] = {}
    example_rows = []
    for key, stored in enumerate(examples):
        window, example = rows.example_rows(stored.example, stored.token_ids, key)
        window_ids[key] = _window_id(catalogue, model_id, scan_id, window)
        example_rows.append(example)
    row = NeuronRow(
        layer=layer,
        neuron=neuron,
        stats=stats,
        weights=weights,
        examples=example_rows,
        related=related,
    )
    (neuron_id,) = catalogue.write_neurons(model_id, scan_id, [row], window_ids)
    return neuron_id


def _window_id(catalogue: Catalogue, model_id: int, scan_id: int | None, window: WindowRow) -> int:
    row = catalogue.db.execute(
        "select id from windows where scan_id is ? and document = ? and offset = ?",
        [scan_id, window.document, window.offset],
    ).fetchone()
    if row:
        return int(row[0])
    return catalogue.insert_windows(model_id, scan_id, [window])[window.key]


def our_explanations(catalogue: Catalogue, neuron_id: int) -> list[StoredExplanation]:
    return _explanations(catalogue, neuron_id, "1 = 1", [])


def insert_explanation(
    catalogue: Catalogue,
    neuron_id: int,
    explanation: Explanation,
    *,
    scan_id: int | None,
    updated_at: str | None,
) -> int:
    return catalogue.insert(
        "explanations", rows.explanation_to_row(explanation, neuron_id, scan_id, updated_at)
    )


def set_explanation_status(
    catalogue: Catalogue, explanation_id: int, status: LabelStatus, updated_at: str
) -> None:
    catalogue.db.table("explanations").update(
        explanation_id, {"status": status.value, "updated_at": updated_at}
    )


def our_label_state(catalogue: Catalogue, explanation_id: int) -> LabelState:
    """The label as it is stored now, as a history entry records it."""
    return rows.label_state_from_row(catalogue.db.table("explanations").get(explanation_id))


def score_keys(catalogue: Catalogue, explanation_id: int) -> set[tuple[Any, ...]]:
    """(simulator, split, method, prompt_version) of the scores this explanation already has."""
    return {
        (r["simulator"], r["split"], r["method"], r["prompt_version"])
        for r in catalogue.db.query(
            "select simulator, split, method, prompt_version from scores where explanation_id = ?",
            [explanation_id],
        )
    }


def insert_score(catalogue: Catalogue, explanation_id: int, score: Score) -> None:
    catalogue.db.table("scores").insert(rows.score_to_row(score, explanation_id))


def table_counts(catalogue: Catalogue) -> dict[str, int]:
    """Rows per table an import writes: what tests and summaries compare."""
    tables = (
        "models",
        "scans",
        "windows",
        "neurons",
        "neuron_examples",
        "explanations",
        "scores",
    )
    return {
        t: int(catalogue.db.execute(f"select count(*) from {t}").fetchone()[0])
        for t in (*tables, "label_history")
    }
