"""Detector scores in the catalogue (`detector_scores`, m012): what `labeller detect` reads and
writes, and what `show`, `rank --by detector:NAME`, the export and the TUI read back.

Reads are shaped for scoring many neurons at once: a batch of neurons' held-out examples in one
query and their windows' tokens in another, so each distinct window is read (and a detector run
on it) once however many neurons share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from labeller.catalogue import label_state, rows
from labeller.records import (
    DetectorScore,
    ExampleKind,
    LabelStatus,
    PredictionKind,
    RankRow,
    ScoreMethod,
    ScoreWindows,
    Split,
)

if TYPE_CHECKING:
    from labeller.catalogue import Catalogue

CHUNK = 500


def _chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), CHUNK):
        yield values[start : start + CHUNK]


def held_out_examples(
    catalogue: Catalogue, neuron_ids: Sequence[int], split: Split, kinds: Iterable[ExampleKind]
) -> Iterator[tuple[int, list[rows.PackedExample]]]:
    """Each neuron's examples of `split` and these kinds (top, random, then band windows, by
    rank: the order `score` simulates them in), in the order of `neuron_ids`."""
    wanted = set(kinds)
    for chunk in _chunks(neuron_ids):
        found = {
            int(neuron_id): data
            for neuron_id, data in catalogue.db.execute(
                "select neuron_id, data from neuron_examples "
                f"where neuron_id in ({', '.join('?' * len(chunk))})",
                list(chunk),
            ).fetchall()
        }
        for neuron_id in chunk:
            examples = rows.decode_examples(found[neuron_id]) if neuron_id in found else []
            yield (
                neuron_id,
                sorted(
                    (e for e in examples if e.split is split and e.kind in wanted),
                    key=rows.example_order,
                ),
            )


def window_tokens(catalogue: Catalogue, window_ids: Iterable[int]) -> dict[int, list[str]]:
    """The tokens of these windows, by window id."""
    ids = sorted(set(window_ids))
    found = catalogue.window_tokens(ids)
    missing = [i for i in ids if i not in found]
    if missing:
        raise rows.UnreadableRecord(
            f"the catalogue keeps examples of window {missing[0]}, which is not there; run "
            "`labeller check`, and restore it from a backup"
        )
    return found


def stored_definitions(
    catalogue: Catalogue, neuron_ids: Sequence[int], split: Split, windows: ScoreWindows
) -> dict[tuple[int, str], str]:
    """(neuron id, detector) -> the definition its stored score was computed with."""
    found: dict[tuple[int, str], str] = {}
    for chunk in _chunks(neuron_ids):
        for neuron_id, detector, definition in catalogue.db.execute(
            "select neuron_id, detector, definition from detector_scores "
            f"where split = ? and windows = ? and neuron_id in ({', '.join('?' * len(chunk))})",
            [split.value, windows.value, *chunk],
        ).fetchall():
            found[(int(neuron_id), str(detector))] = str(definition)
    return found


def save_detector_scores(catalogue: Catalogue, scores: Sequence[tuple[int, DetectorScore]]) -> None:
    """Store (neuron id, score) pairs in one transaction, each replacing the neuron's score of
    that detector, split, windows and method."""
    values = [
        (
            neuron_id,
            s.name,
            s.description,
            s.definition,
            s.split.value,
            s.windows.value,
            s.method.value,
            s.prediction.value,
            rows.real_to_db(s.score),
            s.created_at,
        )
        for neuron_id, s in scores
    ]
    with catalogue.write_transaction():
        catalogue.db.conn.executemany(
            """insert into detector_scores (neuron_id, detector, description, definition, split,
                windows, method, prediction, score, created_at)
            values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            on conflict (neuron_id, detector, split, windows, method) do update set
                description = excluded.description, definition = excluded.definition,
                prediction = excluded.prediction, score = excluded.score,
                created_at = excluded.created_at""",
            values,
        )


@rows.reads_stored
def _score_from_row(row: Any) -> DetectorScore:
    return DetectorScore(
        name=row["detector"],
        description=row["description"] or "",
        definition=row["definition"],
        split=Split(row["split"]),
        windows=ScoreWindows(row["windows"]),
        method=ScoreMethod(row["method"]),
        prediction=PredictionKind(row["prediction"]),
        score=rows.real_from_db(row["score"]),
        created_at=row["created_at"],
    )


# Best first: scored before unscored, NaN ('NaN' text) last.
_BEST_FIRST = "(score is null or typeof(score) = 'text'), score desc, detector"


def detector_scores_of(catalogue: Catalogue, neuron_id: int) -> list[DetectorScore]:
    """The neuron's detector scores, best first (then by name), every split."""
    return [
        _score_from_row(r)
        for r in catalogue.db.query(
            f"select * from detector_scores where neuron_id = ? order by {_BEST_FIRST}",
            [neuron_id],
        )
    ]


def detector_names(catalogue: Catalogue, model_name: str, split: Split) -> list[str]:
    """The detectors scored on some neuron of the model on `split`, by name."""
    return [
        str(r["detector"])
        for r in catalogue.db.query(
            """select distinct d.detector from detector_scores d
            join neurons n on n.id = d.neuron_id join models m on m.id = n.model_id
            where m.name = ? and d.split = ? order by d.detector""",
            [model_name, split.value],
        )
    ]


def rank_by_detector(
    catalogue: Catalogue,
    model_name: str,
    detector: str,
    *,
    split: Split = Split.VALID,
    layers: list[int] | None = None,
    status: str | None = None,
    limit: int | None = None,
) -> list[RankRow]:
    """Neurons by their score against one detector (top-and-random windows), unscored last,
    each with its label (`label_state`)."""
    where: list[str] = ["m.name = ?"]
    values: list[Any] = [model_name]
    if layers is not None:
        where.append(f"n.layer in ({','.join('?' * len(layers))})")
        values += layers
    values += [
        detector,
        split.value,
        ScoreWindows.TOP_AND_RANDOM.value,
        ScoreMethod.TOP_AND_RANDOM.value,
    ]
    outer = ""
    if status is not None:
        outer = "where e.status = ?"
        values.append(LabelStatus(status).value)
    model = catalogue.db.execute("select id from models where name = ?", [model_name]).fetchone()
    label_id = (
        "null"
        if model is None
        else label_state.label_sql(label_state.default_scorer(catalogue.db, int(model[0]))).id
    )
    sql = f"""
        with labelled as (
            select n.id, n.layer, n.neuron, n.max, n.density,
                {label_id} as label_id
            from neurons n join models m on m.id = n.model_id
            where {" and ".join(where)}
        )
        select n.layer, n.neuron, n.max, n.density, e.text, e.source, e.status, d.score
        from labelled n
        left join explanations e on e.id = n.label_id
        left join detector_scores d on d.neuron_id = n.id and d.detector = ? and d.split = ?
            and d.windows = ? and d.method = ?
        {outer}
        order by (d.score is null or typeof(d.score) = 'text'), d.score desc, n.layer, n.neuron
        {"limit ?" if limit is not None else ""}"""
    if limit is not None:
        values.append(limit)
    return [
        RankRow(
            layer=r["layer"],
            neuron=r["neuron"],
            score=rows.real_from_db(r["score"]),
            label=r["text"],
            source=r["source"],
            status=None if r["status"] is None else LabelStatus(r["status"]),
            max=r["max"],
            density=r["density"],
        )
        for r in catalogue.db.query(sql, values)
    ]
