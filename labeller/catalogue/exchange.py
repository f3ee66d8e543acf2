"""SQL for export and import: streaming reads in (model, layer, neuron) order, and merge writes.

Part of the catalogue (the only code that speaks SQL). The file formats and the merge policy live
in `labeller.exchange`; they see only records from `labeller.records` and the small row classes
below, never a cursor. Reads stream one neuron at a time so an export's memory does not grow with
the catalogue; writes happen inside `write_transaction`, which the importer opens per batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from labeller.catalogue import (
    Catalogue,
    NeuronRow,
    _state,
    _stats_from_row,
    _weights_from_row,
    encode_activations,
    example_from_row,
    params_key,
)
from labeller.records import (
    Example,
    ExampleKind,
    Explanation,
    LabelState,
    LabelStatus,
    ModelRecord,
    NeuronStats,
    ScanParams,
    ScanStatus,
    Score,
    Split,
    WeightFacts,
)

# `--min-score X` keeps labels whose primary score (top-and-random, on the valid split: the one
# `rank` sorts by and best-of-K picks with) is at least X.
MIN_SCORE_METHOD = "top_and_random"
MIN_SCORE_SPLIT = Split.VALID


@dataclass(frozen=True)
class Selection:
    """Which neurons and labels an export covers; `status`/`min_score` None keep every label."""

    models: list[str]
    layers: list[int] | None = None
    status: str | None = None
    min_score: float | None = None

    @property
    def filters_labels(self) -> bool:
        return self.status is not None or self.min_score is not None


@dataclass(frozen=True)
class ScanRow:
    id: int
    model: str
    params: ScanParams
    status: ScanStatus
    tokens_seen: int
    windows_seen: int
    started_at: str
    updated_at: str


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
    """One label_history row; `before`/`after` as stored (LabelState fields, maybe `undoes`)."""

    id: int
    explanation_id: int | None
    action: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    annotator: str | None
    at: str

    @property
    def undoes(self) -> int | None:
        value = (self.after or {}).get("undoes")
        return int(value) if value is not None else None


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


@dataclass(frozen=True)
class OurExplanation:
    id: int
    source: str
    text: str
    status: str
    best: bool
    annotator: str | None


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
    clauses, values = ["1 = 1"], []
    if selection.status is not None:
        clauses.append(f"{alias}.status = ?")
        values.append(selection.status)
    if selection.min_score is not None:
        clauses.append(
            f"exists (select 1 from scores s where s.explanation_id = {alias}.id "
            "and s.method = ? and s.split = ? and s.score >= ?)"
        )
        values += [MIN_SCORE_METHOD, MIN_SCORE_SPLIT.value, selection.min_score]
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


def scans_for(catalogue: Catalogue, selection: Selection) -> list[ScanRow]:
    """The scans the selected neurons and labels refer to, in an order independent of ids."""
    ids_sql, values = _referenced_scan_ids(selection)
    rows = catalogue.db.query(
        f"""select s.*, m.name as model_name from scans s join models m on m.id = s.model_id
        where s.id in ({ids_sql}) order by m.name, s.started_at, s.params_key, s.id""",
        values,
    )
    return [
        ScanRow(
            id=row["id"],
            model=row["model_name"],
            params=ScanParams.model_validate_json(row["params"]),
            status=ScanStatus(row["status"]),
            tokens_seen=row["tokens_seen"],
            windows_seen=row["windows_seen"],
            started_at=row["started_at"],
            updated_at=row["updated_at"],
        )
        for row in rows
    ]


def models_for(catalogue: Catalogue, selection: Selection) -> list[ModelRecord]:
    """The models of the selected neurons and of their scans, by name."""
    where, values = _neuron_where(selection)
    ids_sql, scan_values = _referenced_scan_ids(selection)
    rows = catalogue.db.query(
        f"""select * from models where id in (
            select n.model_id from neurons n join models m on m.id = n.model_id where {where}
            union select model_id from scans where id in ({ids_sql}))
        order by name""",
        values + scan_values,
    )
    return [ModelRecord(**{k: v for k, v in row.items() if k != "id"}) for row in rows]


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


def _stored_neuron(catalogue: Catalogue, row: dict[str, Any], selection: Selection) -> StoredNeuron:
    neuron_id = int(row["id"])
    examples = list(_examples(catalogue, neuron_id))
    explanations = _explanations(catalogue, neuron_id, selection)
    kept = {e.id for e in explanations}
    history = [
        h
        for h in our_history(catalogue, neuron_id)
        if h.explanation_id is None or h.explanation_id in kept
    ]
    return StoredNeuron(
        id=neuron_id,
        model=row["model_name"],
        layer=row["layer"],
        neuron=row["neuron"],
        scan_id=row["scan_id"],
        stats=_stats_from_row(row),
        weights=_weights_from_row(row),
        top_examples=[e for e in examples if e.example.kind is ExampleKind.TOP],
        random_examples=[e for e in examples if e.example.kind is ExampleKind.RANDOM],
        explanations=explanations,
        history=history,
    )


def _examples(catalogue: Catalogue, neuron_id: int) -> Iterator[StoredExample]:
    for row in catalogue.db.query(
        """select e.kind, e.rank, e.split, e.activations, e.max_activation, e.max_index,
        w.document, w.offset, w.tokens, w.token_ids from examples e
        join windows w on w.id = e.window_id where e.neuron_id = ? order by e.kind desc, e.rank""",
        [neuron_id],
    ):
        yield StoredExample(
            example=example_from_row(row),
            token_ids=json.loads(row["token_ids"] or "[]"),
        )


def _explanations(
    catalogue: Catalogue, neuron_id: int, selection: Selection
) -> list[StoredExplanation]:
    where, values = _explanation_where(selection)
    rows = list(
        catalogue.db.query(
            f"select * from explanations e where e.neuron_id = ? and {where} order by e.id",
            [neuron_id, *values],
        )
    )
    scores: dict[int, list[Score]] = {int(r["id"]): [] for r in rows}
    if rows:
        for s in catalogue.db.query(
            f"select * from scores where explanation_id in ({_in(list(scores))}) order by id",
            list(scores),
        ):
            scores[int(s["explanation_id"])].append(
                Score(
                    method=s["method"],
                    split=Split(s["split"]),
                    score=s["score"],
                    simulator=s["simulator"],
                    prompt_version=s["prompt_version"],
                    details=json.loads(s["details"] or "{}"),
                    created_at=s["created_at"],
                )
            )
    return [
        StoredExplanation(
            id=int(r["id"]),
            explanation=Explanation(
                id=r["id"],
                text=r["text"],
                source=r["source"],
                status=r["status"],
                prompt_version=r["prompt_version"],
                producer_model=r["producer_model"],
                annotator=r["annotator"],
                best=bool(r["best"]),
                created_at=r["created_at"],
                scores=scores[int(r["id"])],
            ),
            updated_at=r["updated_at"],
            scan_id=r["scan_id"],
        )
        for r in rows
    ]


def our_history(catalogue: Catalogue, neuron_id: int) -> list[StoredHistory]:
    return [
        StoredHistory(
            id=int(row["id"]),
            explanation_id=row["explanation_id"],
            action=row["action"],
            before=json.loads(row["before"]) if row["before"] else None,
            after=json.loads(row["after"]) if row["after"] else None,
            annotator=row["annotator"],
            at=row["at"],
        )
        for row in catalogue.db.query(
            "select * from label_history where neuron_id = ? order by id", [neuron_id]
        )
    ]


def accepted_by(catalogue: Catalogue, explanation_id: int) -> str | None:
    """Who made this label accepted: the latest history entry that left it accepted."""
    for row in catalogue.db.query(
        "select after, annotator from label_history where explanation_id = ? order by id desc",
        [explanation_id],
    ):
        state = _state(row["after"])
        if state is not None and state.status is LabelStatus.ACCEPTED:
            return row["annotator"]
    return None


# --- import: lookups and writes (call inside catalogue.write_transaction()) ----------------------


def find_model_id(catalogue: Catalogue, name: str) -> int | None:
    row = catalogue.db.execute("select id from models where name = ?", [name]).fetchone()
    return int(row[0]) if row else None


def insert_model(catalogue: Catalogue, model: ModelRecord) -> int:
    return int(catalogue.db["models"].insert(model.model_dump()).last_pk)


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


def insert_scan(catalogue: Catalogue, model_id: int, scan: ScanRow) -> int:
    return int(
        catalogue.db["scans"]
        .insert(
            {
                "model_id": model_id,
                "params": scan.params.model_dump_json(),
                "params_key": params_key(scan.params),
                "status": scan.status.value,
                "tokens_seen": scan.tokens_seen,
                "windows_seen": scan.windows_seen,
                "started_at": scan.started_at,
                "updated_at": scan.updated_at,
            }
        )
        .last_pk
    )


def find_neuron(catalogue: Catalogue, model_id: int, layer: int, neuron: int) -> int | None:
    return catalogue._neuron_id(model_id, layer, neuron)


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
) -> int:
    """A neuron this catalogue lacks, with its examples; windows are shared by (scan, place)."""
    row = NeuronRow(layer=layer, neuron=neuron, stats=stats, weights=weights, examples=[])
    neuron_id = catalogue._upsert_neuron(model_id, scan_id, row)  # type: ignore[arg-type]
    rows = []
    for stored in examples:
        example = stored.example
        rows.append(
            {
                "neuron_id": neuron_id,
                "window_id": _window_id(catalogue, scan_id, stored),
                "kind": example.kind.value,
                "rank": example.rank,
                "split": example.split.value,
                "activations": encode_activations(np.asarray(example.activations)),
                "max_activation": example.max_activation,
                "max_index": example.max_index,
            }
        )
    if rows:
        catalogue.db["examples"].insert_all(rows, batch_size=500)
    return neuron_id


def _window_id(catalogue: Catalogue, scan_id: int | None, stored: StoredExample) -> int:
    example = stored.example
    row = catalogue.db.execute(
        "select id from windows where scan_id is ? and document = ? and offset = ?",
        [scan_id, example.document, example.offset],
    ).fetchone()
    if row:
        return int(row[0])
    return int(
        catalogue.db["windows"]
        .insert(
            {
                "scan_id": scan_id,
                "document": example.document,
                "offset": example.offset,
                "token_ids": json.dumps(stored.token_ids),
                "tokens": json.dumps(example.tokens, ensure_ascii=False),
            }
        )
        .last_pk
    )


def our_explanations(catalogue: Catalogue, neuron_id: int) -> list[OurExplanation]:
    return [
        OurExplanation(
            id=int(r["id"]),
            source=r["source"],
            text=r["text"],
            status=r["status"],
            best=bool(r["best"]),
            annotator=r["annotator"],
        )
        for r in catalogue.db.query(
            "select id, source, text, status, best, annotator from explanations "
            "where neuron_id = ? order by id",
            [neuron_id],
        )
    ]


def insert_explanation(
    catalogue: Catalogue,
    neuron_id: int,
    explanation: Explanation,
    *,
    status: str,
    best: bool,
    scan_id: int | None,
    updated_at: str | None,
) -> int:
    return int(
        catalogue.db["explanations"]
        .insert(
            {
                "neuron_id": neuron_id,
                "text": explanation.text,
                "source": explanation.source,
                "status": status,
                "prompt_version": explanation.prompt_version,
                "producer_model": explanation.producer_model,
                "annotator": explanation.annotator,
                "scan_id": scan_id,
                "created_at": explanation.created_at,
                "updated_at": updated_at,
                "best": int(best),
            }
        )
        .last_pk
    )


def set_explanation_status(
    catalogue: Catalogue, explanation_id: int, status: str, updated_at: str
) -> None:
    catalogue.db["explanations"].update(
        explanation_id, {"status": status, "updated_at": updated_at}
    )


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
    catalogue.db["scores"].insert(
        {
            "explanation_id": explanation_id,
            "method": score.method,
            "split": score.split.value,
            "score": score.score,
            "simulator": score.simulator,
            "prompt_version": score.prompt_version,
            "details": json.dumps(score.details, ensure_ascii=False),
            "created_at": score.created_at,
        }
    )


def append_history(
    catalogue: Catalogue,
    neuron_id: int,
    *,
    explanation_id: int | None,
    action: str,
    before: LabelState | None,
    after: LabelState | None,
    undoes: int | None,
    annotator: str | None,
    at: str,
) -> int:
    """Append one entry (label_history is append-only), in the layout the catalogue writes."""
    after_json = after.model_dump_json() if after else None
    if after is not None and undoes is not None:
        after_json = json.dumps({**json.loads(after.model_dump_json()), "undoes": undoes})
    return int(
        catalogue.db["label_history"]
        .insert(
            {
                "neuron_id": neuron_id,
                "explanation_id": explanation_id,
                "action": action,
                "before": before.model_dump_json() if before else None,
                "after": after_json,
                "annotator": annotator,
                "at": at,
            }
        )
        .last_pk
    )


def table_counts(catalogue: Catalogue) -> dict[str, int]:
    """Rows per table an import writes: what tests and summaries compare."""
    tables = ("models", "scans", "windows", "neurons", "examples", "explanations", "scores")
    return {
        t: int(catalogue.db.execute(f"select count(*) from {t}").fetchone()[0])
        for t in (*tables, "label_history")
    }
