"""Schema of the catalogue, created and upgraded by sqlite-utils migrations.

Never edit an applied migration: add a new one. The set of migration names is also how we tell a
catalogue written by a newer labeller (it has names this code does not know).
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

from labeller.catalogue import rows

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


class _Identity(dict[int, int]):
    def __missing__(self, key: int) -> int:
        return key


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
        window_ids = _Identity()

        def flush() -> None:
            if current is not None:
                db.execute(
                    "insert into neuron_examples (neuron_id, data) values (?, ?)",
                    [current, rows.encode_examples(rows.examples_of_rows(group), window_ids)],
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


@migrations()
def m015_related_neurons(db: Database) -> None:
    """Each neuron's most correlated and anti-correlated neurons (JSON, from `scan
    --correlations`; null when the scan kept no correlations)."""
    db.table("neurons").add_column("related_neurons", str)


KNOWN_MIGRATIONS = frozenset(m.name for m in migrations.pending(Database(memory=True)))
