"""Schema of the catalogue, created and upgraded by sqlite-utils migrations.

Never edit an applied migration: add a new one. The set of migration names is also how we tell a
catalogue written by a newer labeller (it has names this code does not know).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from labeller.catalogue import rows
from labeller.catalogue.database import Database, Migrations

MIGRATION_SET = "labeller"

migrations = Migrations(MIGRATION_SET)


@migrations()
def m001_initial(db: Database) -> None:
    db.table("models").create(
        {
            "id": int,
            "name": str,
            "source": str,
            "n_layers": int,
            "d_mlp": int,
            "d_model": int,
            "d_vocab": int,
            "act_fn": str,
            "neuron_hook": str,
            "created_at": str,
        },
        pk="id",
        not_null={"name", "source"},
    )
    db.table("models").create_index(["name"], unique=True)

    db.table("scans").create(
        {
            "id": int,
            "model_id": int,
            "params": str,
            "params_key": str,
            "status": str,
            "tokens_seen": int,
            "windows_seen": int,
            "started_at": str,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[("model_id", "models", "id")],
        not_null={"model_id", "params", "params_key", "status"},
    )
    db.table("scans").create_index(["params_key"])

    # Resumable state of a running scan: opaque bytes written by the scan stage.
    db.table("scan_checkpoints").create(
        {"scan_id": int, "state": bytes, "saved_at": str},
        pk="scan_id",
        foreign_keys=[("scan_id", "scans", "id")],
    )

    db.table("windows").create(
        {
            "id": int,
            "scan_id": int,
            "document": str,
            "offset": int,
            "token_ids": str,
            "tokens": str,
        },
        pk="id",
        foreign_keys=[("scan_id", "scans", "id")],
    )
    db.table("windows").create_index(["scan_id", "document", "offset"], unique=True)

    db.table("neurons").create(
        {
            "id": int,
            "model_id": int,
            "layer": int,
            "neuron": int,
            "scan_id": int,
            "max": float,
            "min": float,
            "mean": float,
            "std": float,
            "density": float,
            "skewness": float,
            "kurtosis": float,
            "tokens": int,
            "histogram": str,
            "w_in_w_out_cosine": float,
            "top_positive_tokens": str,
            "top_negative_tokens": str,
        },
        pk="id",
        foreign_keys=[("model_id", "models", "id"), ("scan_id", "scans", "id")],
        not_null={"model_id", "layer", "neuron"},
    )
    db.table("neurons").create_index(["model_id", "layer", "neuron"], unique=True)
    db.table("neurons").create_index(["model_id", "max"])
    db.table("neurons").create_index(["model_id", "density"])

    db.table("examples").create(
        {
            "id": int,
            "neuron_id": int,
            "window_id": int,
            "kind": str,
            "rank": int,
            "split": str,
            "activations": bytes,
            "max_activation": float,
            "max_index": int,
        },
        pk="id",
        foreign_keys=[("neuron_id", "neurons", "id"), ("window_id", "windows", "id")],
        not_null={"neuron_id", "window_id", "kind", "rank", "split"},
    )
    db.table("examples").create_index(["neuron_id", "kind", "rank"], unique=True)
    db.table("examples").create_index(["window_id"])

    db.table("explanations").create(
        {
            "id": int,
            "neuron_id": int,
            "text": str,
            "source": str,
            "status": str,
            "prompt_version": str,
            "producer_model": str,
            "annotator": str,
            "scan_id": int,
            "created_at": str,
            "updated_at": str,
        },
        pk="id",
        foreign_keys=[("neuron_id", "neurons", "id"), ("scan_id", "scans", "id")],
        not_null={"neuron_id", "text", "source", "status"},
    )
    db.table("explanations").create_index(["neuron_id"])

    db.table("scores").create(
        {
            "id": int,
            "explanation_id": int,
            "method": str,
            "split": str,
            "score": float,
            "simulator": str,
            "prompt_version": str,
            "details": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("explanation_id", "explanations", "id")],
        not_null={"explanation_id", "method", "split"},
    )
    db.table("scores").create_index(["explanation_id"])

    db.table("label_history").create(
        {
            "id": int,
            "neuron_id": int,
            "explanation_id": int,
            "action": str,
            "before": str,
            "after": str,
            "annotator": str,
            "at": str,
        },
        pk="id",
        foreign_keys=[("neuron_id", "neurons", "id")],
        not_null={"neuron_id", "action", "at"},
    )
    db.table("label_history").create_index(["neuron_id"])
    for verb in ("UPDATE", "DELETE"):
        db.execute(
            f"""CREATE TRIGGER label_history_append_only_{verb.lower()}
            BEFORE {verb} ON label_history
            BEGIN SELECT RAISE(ABORT, 'label_history is append-only'); END"""
        )

    db.table("llm_cache").create(
        {"key": str, "request": str, "response": str, "created_at": str},
        pk="key",
    )


@migrations()
def m002_candidates_and_failures(db: Database) -> None:
    """Best-of-K marks and a record of LLM replies that could not be used."""
    db.table("explanations").add_column("best", int)
    db.table("explanations").create_index(["neuron_id", "source", "text"], unique=True)
    db.table("scores").create_index(
        ["explanation_id", "simulator", "split", "method", "prompt_version"], unique=True
    )
    db.table("failed_attempts").create(
        {
            "id": int,
            "neuron_id": int,
            "explanation_id": int,
            "stage": str,
            "producer_model": str,
            "prompt_version": str,
            "error": str,
            "raw": str,
            "at": str,
        },
        pk="id",
        foreign_keys=[("neuron_id", "neurons", "id")],
        not_null={"neuron_id", "stage", "error", "at"},
    )


@migrations()
def m003_model_fingerprint(db: Database) -> None:
    """A fingerprint of the model's weights, so an import can tell two models of one name apart."""
    db.table("models").add_column("weights_fingerprint", str)


@migrations()
def m004_prediction_and_selection(db: Database) -> None:
    """What each score's predictions are (expected_value, integer, rule), and for a best label
    the split that chose it and the split it reports.

    Scores written before this: the baseline's are `rule` (it has only ever had one kind);
    LLM scores stay NULL, unknown, since the old simulator could mix expected values and
    written integers inside one score without saying so. Best marks made before this were
    chosen on valid: their `chosen_on` stays NULL (not chosen on calibration) until rescored.
    """
    db.table("scores").add_column("prediction", str)
    db.execute("update scores set prediction = 'rule' where simulator = 'baseline'")
    db.table("explanations").add_column("chosen_on", str)
    db.table("explanations").add_column("reported_on", str)


@migrations()
def m005_null_controls(db: Database) -> None:
    """Each scoring run's null control: its labels scored against other neurons' windows, so
    every score can be read against chance for its simulator, prompt, split and kind."""
    db.table("null_controls").create(
        {
            "id": int,
            "model_id": int,
            "simulator": str,
            "prompt_version": str,
            "split": str,
            "prediction": str,
            "n": int,
            "excluded": int,
            "mean": float,
            "std": float,
            "p95": float,
            "r_values": str,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("model_id", "models", "id")],
        not_null={"model_id", "simulator", "split", "prediction", "n", "r_values"},
    )
    db.table("null_controls").create_index(
        ["model_id", "simulator", "prompt_version", "split", "prediction"]
    )


@migrations()
def m006_activation_bands(db: Database) -> None:
    """Windows sampled from each neuron's activation bands (examples of kind `quantile`, with
    the band's index and edges), and which held-out windows each score and null control was
    computed on (`score --on`). Everything scored before this was on top and random windows;
    catalogues scanned before this have no bands (rescan to get them)."""
    examples = db.table("examples")
    examples.add_column("band", int)
    examples.add_column("band_low", float)
    examples.add_column("band_high", float)
    for table in ("scores", "null_controls"):
        db.table(table).add_column("windows", str)
        db.execute(f"update {table} set windows = 'top_and_random'")


@migrations()
def m007_blind_scores(db: Database) -> None:
    """What each label's author had been shown (`explanations.seen`, a JSON list of splits) and
    whether each score is blind (`scores.blind`: its split is not among them).

    Labels written before this: an explainer's (any source but `human`) saw train windows only,
    as `explain` has always given it; a person's may have seen all four splits (the TUI and
    `show` showed valid and test), so its `seen` is all four and its scores are not blind.
    Every old score is computed from that: explainers' blind, people's not.
    """
    db.table("explanations").add_column("seen", str)
    db.table("scores").add_column("blind", int)
    db.execute(
        """update explanations set seen = case when source = 'human'
        then '["train", "calibration", "valid", "test"]' else '["train"]' end"""
    )
    db.execute(
        """update scores set blind = (select case when e.source = 'human' then 0
            when scores.split = 'train' then 0 else 1 end
        from explanations e where e.id = scores.explanation_id)"""
    )


@migrations()
def m008_edited_from(db: Database) -> None:
    """An edit's history entry names the label it was edited from (the `e` key, `label --text
    ... --edited-from ID`). Entries written before this stay NULL: not recorded."""
    db.table("label_history").add_column("edited_from", int)


@migrations()
def m009_statistic_indexes(db: Database) -> None:
    """Indexes for sorting and filtering the neuron list by cos(w_in, w_out), kurtosis and
    skewness: without them a page of a 307,200-neuron catalogue sorts the whole table (seconds);
    with them it reads the page's rows in index order."""
    for column in ("w_in_w_out_cosine", "kurtosis", "skewness"):
        db.table("neurons").create_index(["model_id", column], if_not_exists=True)


@migrations()
def m010_packed_examples(db: Database) -> None:
    """Each neuron's examples packed into one row (`neuron_examples`: per-token activations as
    float16, each example's max_activation and band edges exact; `rows.encode_examples`), and
    windows' token ids as a uint32 blob instead of JSON text. The old `examples` table (one row
    per example, float32 activations) is converted and dropped; the values' rounding is the
    only change to what the catalogue shows."""
    db.table("neuron_examples").create(
        {"neuron_id": int, "data": bytes},
        pk="neuron_id",
        foreign_keys=[("neuron_id", "neurons", "id")],
        not_null={"data"},
    )
    if "examples" in db.table_names():
        columns = """neuron_id, window_id, kind, rank, split, activations, max_activation,
            max_index, band, band_low, band_high"""
        current: int | None = None
        group: list[rows.Row] = []

        def flush() -> None:
            if current is not None:
                same_ids = {row["window_id"]: row["window_id"] for row in group}
                db.execute(
                    "insert into neuron_examples (neuron_id, data) values (?, ?)",
                    [current, rows.encode_examples(rows.examples_of_rows(group), same_ids)],
                )

        for row in db.query(f"select {columns} from examples order by neuron_id, kind, rank"):
            if row["neuron_id"] != current:
                flush()
                current, group = row["neuron_id"], []
            group.append(row)
        flush()
        db.table("examples").drop()
    for window_id, token_ids in db.execute(
        "select id, token_ids from windows where typeof(token_ids) = 'text'"
    ).fetchall():
        db.execute(
            "update windows set token_ids = ? where id = ?",
            [rows.token_ids_to_db(rows.token_ids_from_db(token_ids)), window_id],
        )


# Rows m011 converts per batch (a batch of old rows is read before it is rewritten).
_M011_BATCH = 5_000


@migrations()
def m011_vocabulary(db: Database) -> None:
    """Token strings stored once per model (`vocabulary`), not once per window: a window keeps
    its token ids (now one width byte, then uint16 when every id fits, else uint32;
    `rows.pack_token_ids`) and its `tokens` only where they differ from the vocabulary's (NULL
    otherwise). A neuron's top output tokens become [token, weight] pairs (JSON objects before).
    Nothing read back changes. Windows of no scan (imported without one) keep their strings.
    Examples packed before keep their format (1; new ones are written field by field, format
    2). The old strings' pages stay free in the file until a `VACUUM`."""
    db.execute(
        """create table vocabulary (
            model_id integer not null references models(id),
            token_id integer not null,
            text text not null,
            primary key (model_id, token_id)
        ) without rowid"""
    )
    model_of_scan = {int(s): int(m) for s, m in db.execute("select id, model_id from scans")}
    vocabularies: dict[int, rows.Vocabulary] = {}
    for batch in _batches(db, "id, scan_id, token_ids, tokens", "windows"):
        updates = []
        for window_id, scan_id, token_ids, tokens in batch:
            ids = rows.token_ids_from_db(token_ids)
            model_id = model_of_scan.get(scan_id)
            if model_id is not None and tokens is not None:
                vocabulary = vocabularies.setdefault(model_id, rows.Vocabulary({}))
                tokens = vocabulary.tokens_to_db(ids, json.loads(tokens))
            updates.append((rows.pack_token_ids(ids), tokens, window_id))
        db.conn.executemany("update windows set token_ids = ?, tokens = ? where id = ?", updates)
    db.conn.executemany(
        "insert into vocabulary (model_id, token_id, text) values (?, ?, ?)",
        (
            (model_id, token_id, text)
            for model_id, vocabulary in vocabularies.items()
            for token_id, text in vocabulary.added.items()
        ),
    )
    for batch in _batches(db, "id, top_positive_tokens, top_negative_tokens", "neurons"):
        db.conn.executemany(
            "update neurons set top_positive_tokens = ?, top_negative_tokens = ? where id = ?",
            [
                (
                    _as_pairs(positive),
                    _as_pairs(negative),
                    neuron_id,
                )
                for neuron_id, positive, negative in batch
                if positive is not None
            ],
        )


def _as_pairs(stored: str) -> str:
    """Output tokens as m011 stores them, [token, weight] pairs, whatever they were stored as."""
    return rows.output_tokens_to_db((t.token, t.weight) for t in rows.output_tokens_from_db(stored))


def _batches(db: Database, columns: str, table: str) -> Iterator[list[tuple[Any, ...]]]:
    """A table's rows (`id` first among `columns`) in id order, _M011_BATCH at a time, read
    ahead of the updates each batch gets (a large table never sits in memory whole)."""
    last = -1
    while batch := db.execute(
        f"select {columns} from {table} where id > ? order by id limit ?", [last, _M011_BATCH]
    ).fetchall():
        yield batch
        last = batch[-1][0]


@migrations()
def m012_detector_scores(db: Database) -> None:
    """Feature detectors scored against neurons (`labeller detect`): one row per neuron,
    detector, split and windows, replaced when rescored; the index serves `rank --by
    detector:NAME` and the list's sort by a detector."""
    db.table("detector_scores").create(
        {
            "id": int,
            "neuron_id": int,
            "detector": str,
            "description": str,
            "definition": str,
            "split": str,
            "windows": str,
            "method": str,
            "prediction": str,
            "score": float,
            "created_at": str,
        },
        pk="id",
        foreign_keys=[("neuron_id", "neurons", "id")],
        not_null={"neuron_id", "detector", "definition", "split", "windows", "method"},
    )
    db.table("detector_scores").create_index(
        ["neuron_id", "detector", "split", "windows", "method"], unique=True
    )
    db.table("detector_scores").create_index(["detector", "split", "score"])


@migrations()
def m013_corpus_subsets(db: Database) -> None:
    """Named corpus subsets (`scan --dataset code=PATH --dataset prose=PATH`, a subset field,
    the demo's code/prose): each window records its document's subset, and a score over one
    subset's top windows (method `subset_top`) records which. Earlier rows stay NULL: no
    subset. The per-subset top windows are examples of kind `subset_top` (no change to the
    packed format: a new kind code)."""
    db.table("windows").add_column("subset", str)
    db.table("scores").add_column("subset", str)
    # One score per subset: the unique key gains the subset (NULL for every other method).
    db.execute("drop index idx_scores_explanation_id_simulator_split_method_prompt_version")
    db.execute(
        """create unique index idx_scores_unique_per_subset on scores
        (explanation_id, simulator, split, method, prompt_version, coalesce(subset, ''))"""
    )


# m014's SQL, as it was applied (never edited; a change to the label state needs a migration
# that recreates the triggers). A neuron's state from its explanations (`label_state` in
# `labeller.catalogue.label_state`): 0 unlabelled, 1 proposed, 2 needs_review, 3 accepted,
# 4 rejected; the shown state puts a proposed label that can be the neuron's label (the source's
# chosen best, or a source without one) before one needing review.
_M014_ELIGIBLE = """(e.status = 'proposed' and (coalesce(e.best, 0) = 1 or not exists (
    select 1 from explanations o where o.neuron_id = e.neuron_id and o.source = e.source
    and coalesce(o.best, 0) = 1 and o.status in ('proposed', 'accepted', 'needs_review'))))"""
_M014_LABEL_STATE = """(select case when count(*) = 0 then 0
    when max(e.status = 'accepted') then 3 when max(e.status = 'needs_review') then 2
    when max(e.status = 'proposed') then 1 else 4 end
    from explanations e where e.neuron_id = neurons.id)"""
_M014_SHOWN_STATE = f"""(select case when count(*) = 0 then 0
    when max(e.status = 'accepted') then 3 when max({_M014_ELIGIBLE}) then 1
    when max(e.status = 'needs_review') then 2 when max(e.status = 'proposed') then 1 else 4 end
    from explanations e where e.neuron_id = neurons.id)"""
_M014_SET_STATES = f"""update neurons set label_state = {_M014_LABEL_STATE},
    shown_state = {_M014_SHOWN_STATE}"""
_M014_TALLY_KEY = "(model_id, split, method, prediction, simulator)"


def _m014_tally(row: str, sign: str) -> str:
    """Add (`sign` +) or take away (-) score `row` (new or old) in its model's tally."""
    return f"""insert into score_tally {_M014_TALLY_KEY[:-1]}, n, scored)
    select n.model_id, {row}.split, {row}.method, coalesce({row}.prediction, ''),
        coalesce({row}.simulator, ''), {sign}1, {sign}({row}.score is not null)
    from explanations e join neurons n on n.id = e.neuron_id where e.id = {row}.explanation_id
    on conflict {_M014_TALLY_KEY} do update set n = n + excluded.n,
        scored = scored + excluded.scored;"""


@migrations()
def m014_label_state_columns(db: Database) -> None:
    """Each neuron's label state kept in two indexed columns (`neurons.label_state`, its
    workflow state, and `neurons.shown_state`, the status shown beside its label; see
    `labeller.catalogue.label_state`), and each model's count of scores by split, method,
    prediction kind and simulator (`score_tally`, which `rank` and the label rule read for
    their default simulator). Triggers keep both in step with every insert, update and delete
    of an explanation or a score, in the same transaction, so the list filters and sorts by
    status through an index instead of deriving it per neuron (a page of 307,200 neurons took
    0.8 to 1.5 s)."""
    neurons = db.table("neurons")
    neurons.add_column("label_state", int, not_null_default=0)
    neurons.add_column("shown_state", int, not_null_default=0)
    db.execute(f"{_M014_SET_STATES} where id in (select neuron_id from explanations)")
    for column in ("label_state", "shown_state"):
        neurons.create_index(["model_id", column, "layer", "neuron"], if_not_exists=True)
    where = "where id in (old.neuron_id, new.neuron_id)"
    for name, event, rows_changed in (
        ("insert", "insert", "where id = new.neuron_id"),
        ("update", "update of status, best, source, neuron_id", where),
        ("delete", "delete", "where id = old.neuron_id"),
    ):
        db.execute(
            f"""create trigger explanations_label_state_{name} after {event} on explanations
            begin {_M014_SET_STATES} {rows_changed}; end"""
        )
    db.execute(
        """create table score_tally (model_id integer not null, split text not null,
        method text not null, prediction text not null, simulator text not null,
        n integer not null, scored integer not null,
        primary key (model_id, split, method, prediction, simulator))"""
    )
    db.execute(
        """insert into score_tally select n.model_id, s.split, s.method,
            coalesce(s.prediction, ''), coalesce(s.simulator, ''), count(*),
            sum(s.score is not null)
        from scores s join explanations e on e.id = s.explanation_id
        join neurons n on n.id = e.neuron_id group by 1, 2, 3, 4, 5"""
    )
    db.execute(
        f"create trigger scores_tally_insert after insert on scores begin "
        f"{_m014_tally('new', '+')} end"
    )
    db.execute(
        f"create trigger scores_tally_delete after delete on scores begin "
        f"{_m014_tally('old', '-')} end"
    )
    db.execute(
        "create trigger scores_tally_update after update of explanation_id, method, split, "
        f"score, prediction, simulator on scores begin {_m014_tally('old', '-')} "
        f"{_m014_tally('new', '+')} end"
    )


@migrations()
def m015_related_neurons(db: Database) -> None:
    """Each neuron's most correlated and anti-correlated neurons (JSON, from `scan
    --correlations`; null when the scan kept no correlations)."""
    db.table("neurons").add_column("related_neurons", str)


KNOWN_MIGRATIONS = frozenset(m.name for m in migrations.pending(Database(memory=True)))
