"""A shared catalogue: rank, review agreement, backup under writes, kill -9 at any moment."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from builders import run_cli as run


@pytest.fixture(scope="module")
def scored_db(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("shared") / "c.db"
    run(
        "scan",
        "--db",
        db,
        "--model",
        tiny_model_dir,
        "--dataset",
        tiny_corpus,
        "--ctx",
        "16",
        "--top-k",
        "8",
        "--random",
        "6",
    )
    run("explain", "--db", db, "--layer", "1")
    run("score", "--db", db, "--layer", "1")
    return db


@pytest.fixture()
def db(scored_db, tmp_path) -> Path:
    copy = tmp_path / "c.db"
    copy.write_bytes(scored_db.read_bytes())
    return copy


def test_baseline_scores_are_rule_predictions(db):
    """`show --format json` says what every score's predictions are; the baseline's are a rule."""
    (top,) = json.loads(run("rank", "--db", db, "--limit", "1", "--format", "json").output)
    view = json.loads(
        run(
            "show",
            "--db",
            db,
            "--layer",
            top["layer"],
            "--neuron",
            top["neuron"],
            "--format",
            "json",
        ).output
    )
    scores = [s for e in view["explanations"] for s in e["scores"]]
    assert scores and {s["prediction"] for s in scores} == {"rule"}


def test_rank_compares_scores_of_one_prediction_kind(db):
    """An LLM expected-value score is never ranked against baseline rule scores: by default the
    best kind present is ranked alone; `--prediction rule` ranks the baseline's."""
    from labeller.catalogue import Catalogue
    from labeller.records import PredictionKind, Score, ScoreMethod, Split

    rule = json.loads(run("rank", "--db", db, "--format", "json").output)
    (low,) = [r for r in rule if r["score"] is not None][-1:]
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref(None, low["layer"], low["neuron"])
        (explanation, *_) = catalogue.explanations_of(ref.id)
        assert explanation.id is not None
        catalogue.save_scores(
            explanation.id,
            [
                Score(
                    method=ScoreMethod.TOP_AND_RANDOM,
                    split=Split.VALID,
                    score=0.01,
                    simulator="some-llm",
                    prompt_version="simulator-v1",
                    prediction=PredictionKind.EXPECTED_VALUE,
                )
            ],
        )
    ranked = json.loads(run("rank", "--db", db, "--format", "json").output)
    assert [(r["layer"], r["neuron"], r["score"]) for r in ranked if r["score"] is not None] == [
        (low["layer"], low["neuron"], 0.01)
    ]
    again = run("rank", "--db", db, "--prediction", "rule", "--format", "json").output
    assert json.loads(again) == rule
    table = run("rank", "--db", db, "--limit", "1").output
    assert "expected_value predictions by some-llm only" in table


def test_rank_compares_scores_of_one_simulator(db):
    """A label scored by two simulators (chat `gpt-x` and `gpt-x:all-at-once`) is ranked by one
    simulator's score, never by the higher: by default the simulator with the most scores."""
    from labeller.catalogue import Catalogue
    from labeller.records import PredictionKind, Score, ScoreMethod, Split

    def score(value: float, simulator: str) -> Score:
        return Score(
            method=ScoreMethod.TOP_AND_RANDOM,
            split=Split.VALID,
            score=value,
            simulator=simulator,
            prompt_version="simulator-v1",
            prediction=PredictionKind.EXPECTED_VALUE,
        )

    with Catalogue.open(db) as catalogue:
        for neuron, scores in (
            (0, [score(0.3, "gpt-x"), score(0.9, "gpt-x:all-at-once")]),
            (1, [score(0.5, "gpt-x")]),
            (2, [score(0.4, "gpt-x")]),
        ):
            ref = catalogue.neuron_ref(None, 1, neuron)
            explanation_id = catalogue.explanations_of(ref.id)[0].id
            assert explanation_id is not None
            catalogue.save_scores(explanation_id, scores)

    def ranked(*args: str) -> tuple[list[tuple[int, float]], str]:
        result = run("rank", "--db", db, "--layers", "1", "--format", "json", *args)
        rows = json.loads(result.stdout)
        return [(r["neuron"], r["score"]) for r in rows if r["score"] is not None], result.stderr

    scores, note = ranked()
    assert scores == [(1, 0.5), (2, 0.4), (0, 0.3)]  # not neuron 0 first with its 0.9
    assert "ranking by gpt-x's scores (3)" in note and "gpt-x:all-at-once (1)" in note
    assert "--simulator" in note
    assert ranked("--simulator", "gpt-x:all-at-once") == ([(0, 0.9)], "")
    assert ranked("--simulator", "gpt-x")[0] == scores
    unknown = run("rank", "--db", db, "--simulator", "gpt-y", ok=False)
    assert unknown.exit_code != 0
    assert "simulator 'gpt-y' has no scores on valid" in unknown.output
    assert "baseline, gpt-x, gpt-x:all-at-once" in unknown.output
    table = run("rank", "--db", db, "--simulator", "gpt-x:all-at-once", "--limit", "1").stdout
    assert "by gpt-x:all-at-once only" in table
    with Catalogue.open(db) as catalogue:  # the same default without the CLI
        rows = catalogue.rank(None, layers=[1])
    assert [(r.neuron, r.score) for r in rows if r.score is not None] == scores


def test_rank_by_score_puts_unscored_last(db):
    rows = json.loads(run("rank", "--db", db, "--format", "json").output)
    assert len(rows) == 96
    assert set(rows[0]) == {
        "layer",
        "neuron",
        "score",
        "above_chance",
        "blind",
        "label",
        "source",
        "status",
    }
    scores = [r["score"] for r in rows]
    scored = [s for s in scores if s is not None]
    assert scored == sorted(scored, reverse=True)
    assert scores[: len(scored)] == scored  # every unscored row after every scored one
    assert all(r["layer"] == 0 for r in rows[len(scored) :] if r["label"] is None)
    top = json.loads(
        run("rank", "--db", db, "--limit", "3", "--layers", "1", "--format", "json").output
    )
    assert [r["score"] for r in top] == scored[:3]
    by_max = json.loads(run("rank", "--db", db, "--by", "max", "--format", "json").output)
    maxes = [
        json.loads(
            run(
                "show",
                "--db",
                db,
                "--layer",
                r["layer"],
                "--neuron",
                r["neuron"],
                "--format",
                "json",
            ).output
        )["stats"]["max"]
        for r in by_max[:4]
    ]
    assert maxes == sorted(maxes, reverse=True)
    csv_out = run("rank", "--db", db, "--format", "csv", "--limit", "2").output.splitlines()
    assert csv_out[0] == "layer,neuron,score,above_chance,blind,label,source,status,max,density"


def test_rank_status_filter_and_agreement(db):
    run(
        "label",
        "--db",
        db,
        "--layer",
        "1",
        "--neuron",
        "0",
        "--text",
        'fires on "a"',
        "--accept",
        "--annotator",
        "alice",
    )
    label_id = json.loads(
        run("history", "--db", db, "--layer", "1", "--neuron", "0", "--format", "json").output
    )["entries"][-1]["after"]["explanation_id"]
    run(
        "label",
        "--db",
        db,
        "--layer",
        "1",
        "--neuron",
        "0",
        "--explanation",
        label_id,
        "--confirm",
        "--annotator",
        "bob",
    )
    run(
        "label",
        "--db",
        db,
        "--layer",
        "1",
        "--neuron",
        "1",
        "--text",
        'fires on "b"',
        "--accept",
        "--annotator",
        "alice",
    )
    neuron_1 = json.loads(
        run("history", "--db", db, "--layer", "1", "--neuron", "1", "--format", "json").output
    )["entries"][-1]["after"]
    run(
        "label",
        "--db",
        db,
        "--layer",
        "1",
        "--neuron",
        "1",
        "--explanation",
        neuron_1["explanation_id"],
        "--dispute",
        "--annotator",
        "bob",
    )
    accepted = json.loads(
        run("rank", "--db", db, "--status", "accepted", "--format", "json").output
    )
    assert [(r["layer"], r["neuron"], r["label"]) for r in accepted] == [(1, 0, 'fires on "a"')]
    report = json.loads(run("agreement", "--db", db, "--format", "json").output)
    by_name = {a["annotator"]: a for a in report["annotators"]}
    assert (by_name["alice"]["written"], by_name["alice"]["accepted"]) == (2, 2)
    assert by_name["bob"]["reviewed"] == 2
    assert report["pairs"] == [
        {"first": "alice", "second": "bob", "both_judged": 2, "agreed": 1, "rate": 0.5}
    ]
    refused = run(
        "label",
        "--db",
        db,
        "--layer",
        "1",
        "--neuron",
        "2",
        "--explanation",
        label_id,
        "--confirm",
        ok=False,
    )
    assert refused.exit_code == 2 and "is not a label of neuron L1 N2" in refused.stderr


WRITER = """
import sys
from labeller.catalogue import Catalogue, labels
with Catalogue.open(sys.argv[1]) as catalogue:
    ref = catalogue.neuron_ref(None, 1, int(sys.argv[2]))
    i = 0
    while True:
        labels.write_label(catalogue, ref, f"label {i}", annotator="writer", expected_version=None)
        i += 1
"""


def start_writer(db: Path, neuron: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(neuron)], env=env, stderr=subprocess.PIPE
    )


def history_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from label_history").fetchone()[0]


def wait_for_writes(db: Path, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while history_count(db) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)


@pytest.mark.slow
def test_backup_while_another_process_writes(db, tmp_path):
    before = history_count(db)
    writer = start_writer(db, 3)
    try:
        wait_for_writes(db, before + 20)
        run("backup", "--db", db, tmp_path / "copy.db")
    finally:
        writer.kill()
        writer.wait()
    with sqlite3.connect(tmp_path / "copy.db") as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert conn.execute("select count(*) from label_history").fetchone()[0] > before
    assert "copy.db" in run("backup", "--db", db, tmp_path / "copy.db", ok=False).stderr


@pytest.mark.slow
def test_kill_9_at_any_moment_leaves_a_consistent_catalogue(
    db, tmp_path, tiny_model_dir, tiny_corpus
):
    rng = random.Random(0)
    for round_ in range(6):
        writer = start_writer(db, round_ % 4)
        wait_for_writes(db, history_count(db) + 1)
        time.sleep(rng.uniform(0.0, 0.4))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        with sqlite3.connect(db) as conn:
            assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
            orphans = conn.execute(
                "select count(*) from label_history h left join explanations e "
                "on e.id = h.explanation_id where e.id is null"
            ).fetchone()[0]
            assert orphans == 0  # every history entry's label exists: no half-written change
        assert run("history", "--db", db, "--layer", "1", "--neuron", round_ % 4).exit_code == 0
    # a scan killed mid-way stays resumable or complete, never half-written
    scan_db = tmp_path / "scan.db"
    command = [
        sys.executable,
        "-m",
        "labeller",
        "scan",
        "--db",
        str(scan_db),
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(tiny_corpus),
        "--ctx",
        "8",
        "--batch-size",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for delay in (3.0, 4.0, 5.0):
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if scan_db.exists():
            with sqlite3.connect(scan_db) as conn:
                assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    with sqlite3.connect(scan_db) as conn:
        assert conn.execute("select count(*) from neurons").fetchone()[0] == 96


UNTIL_WRITER = """
import sys
from pathlib import Path
from labeller.catalogue import Catalogue, labels
stop = Path(sys.argv[3])
written = 0
with Catalogue.open(sys.argv[1]) as catalogue:
    ref = catalogue.neuron_ref(None, 1, int(sys.argv[2]))
    while not stop.exists():
        labels.write_label(
            catalogue, ref, f"label {written}", annotator=sys.argv[4], expected_version=None
        )
        written += 1
print(written)
"""


def labeller_process(*args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_explain_and_score_run_beside_annotators(db, tmp_path):
    """`explain` and `score` read then write; beside label writers they wait for the write lock
    (BEGIN IMMEDIATE) instead of failing with 'database is locked', and no write is lost."""
    before = history_count(db)
    stop = tmp_path / "stop"
    writers = [
        labeller_process("-c", UNTIL_WRITER, db, neuron, stop, f"annotator-{neuron}")
        for neuron in range(4)
    ]
    wait_for_writes(db, before + 4)
    batch = [
        labeller_process(
            "-m",
            "labeller",
            "explain",
            "--db",
            db,
            "--layer",
            "0",
            "--force",
            "--explainer",
            "baseline",
        ),
        labeller_process(
            "-m",
            "labeller",
            "score",
            "--db",
            db,
            "--layer",
            "1",
            "--force",
            "--simulator",
            "baseline",
        ),
        labeller_process(
            "-m",
            "labeller",
            "explain",
            "--db",
            db,
            "--layer",
            "1",
            "--force",
            "--explainer",
            "baseline",
        ),
    ]
    failures = []
    for proc in batch:
        _, stderr = proc.communicate(timeout=300)
        failures += [stderr] if proc.returncode else []
    stop.touch()
    written = {}
    for neuron, proc in enumerate(writers):
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        written[f"annotator-{neuron}"] = int(stdout)
    assert failures == []
    assert min(written.values()) > 0
    with sqlite3.connect(db) as conn:
        by_annotator = dict(
            conn.execute(
                "select annotator, count(*) from label_history where annotator like 'annotator-%' "
                "group by annotator"
            ).fetchall()
        )
        assert by_annotator == written  # every write a writer saw succeed is kept
        layer_0 = conn.execute(
            "select count(*) from explanations e join neurons n on n.id = e.neuron_id "
            "where n.layer = 0 and e.source = 'baseline'"
        ).fetchone()[0]
        assert layer_0 == 48  # every layer-0 neuron got its baseline label
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_corrupted_catalogue_is_detected(db, tmp_path):
    damaged = tmp_path / "damaged.db"
    data = bytearray(db.read_bytes())
    for offset in range(8192, len(data), 4096):  # scribble over every page after the first two
        data[offset + 100 : offset + 400] = os.urandom(300)
    damaged.write_bytes(bytes(data))
    result = run("show", "--db", damaged, "--layer", "1", "--neuron", "0", ok=False)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


def test_export_import_round_trip_through_the_cli(db, tmp_path):
    run(
        "label",
        "--db",
        db,
        "--layer",
        "1",
        "--neuron",
        "0",
        "--text",
        'fires on "a"',
        "--accept",
        "--annotator",
        "alice",
    )
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    run("export", "--db", db, "-o", first)
    fresh = tmp_path / "fresh.db"
    out = run("import", "--db", fresh, first).output
    assert "96 neurons added" in out
    assert "0 neurons added" in run("import", "--db", fresh, first).output
    run("export", "--db", fresh, "-o", second)
    strip = lambda p: json.loads(p.read_text()) | {"exported_at": None}  # noqa: E731
    assert strip(first) == strip(second)
    assert not list(tmp_path.glob("*.partial"))
    history = json.loads(
        run("history", "--db", fresh, "--layer", "1", "--neuron", "0", "--format", "json").output
    )["entries"]
    assert [(h["annotator"], h["action"]) for h in history][-2:] == [
        ("alice", "write"),
        ("alice", "accept"),
    ]


def test_export_writes_through_a_symlink_and_fails_cleanly_on_a_full_device(db, tmp_path):
    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    run("export", "--db", db, "-o", link)
    assert link.is_symlink() and json.loads(target.read_text())["neurons"]
    if Path("/dev/full").exists():
        result = run("export", "--db", db, "-o", "/dev/full", ok=False)
        assert result.exit_code == 2
        assert result.stderr.startswith("error: cannot write /dev/full: No space left")
        assert Path("/dev/full").is_char_device()


def label_tables(db: Path) -> tuple[int, int, int]:
    """Labels, scores, and labels without the history entry written with them."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert conn.execute("pragma foreign_key_check").fetchall() == []
        labels_without_history = conn.execute(
            "select count(*) from explanations e where not exists "
            "(select 1 from label_history h where h.explanation_id = e.id)"
        ).fetchone()[0]
        return (
            conn.execute("select count(*) from explanations").fetchone()[0],
            conn.execute("select count(*) from scores").fetchone()[0],
            labels_without_history,
        )


def kill_once_writing(db: Path, *command: object, table: str) -> int:
    """Start a command, kill -9 it as soon as it has written to `table`; the rows it left."""
    with sqlite3.connect(db) as conn:
        start = conn.execute(f"select count(*) from {table}").fetchone()[0]
    proc = labeller_process("-m", "labeller", command[0], "--db", db, *command[1:])
    deadline = time.monotonic() + 120
    count = start
    while count == start and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
        with sqlite3.connect(db) as conn:
            count = conn.execute(f"select count(*) from {table}").fetchone()[0]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    with sqlite3.connect(db) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0] - start


@pytest.mark.slow
def test_kill_9_during_explain_and_score_then_rerun_equals_an_uninterrupted_run(db, tmp_path):
    """explain and score write neuron by neuron: a kill at any moment loses at most the neuron
    in flight, never half of one, and a rerun finishes exactly what an uninterrupted run does."""
    explain = ("explain", "--layer", "0", "--explainer", "baseline")
    score = ("score", "--layer", "0", "--simulator", "baseline")
    uninterrupted = tmp_path / "whole.db"
    uninterrupted.write_bytes(db.read_bytes())
    for command in (explain, score):
        run(command[0], "--db", uninterrupted, *command[1:])
    full_labels, full_scores, _ = label_tables(uninterrupted)
    labels_before, scores_before, _ = label_tables(db)

    written = kill_once_writing(db, *explain, table="explanations")
    assert 0 < written < full_labels - labels_before  # killed mid-run
    assert label_tables(db)[2] == 0  # no label without its history entry
    run(explain[0], "--db", db, *explain[1:])
    written = kill_once_writing(db, *score, table="scores")
    assert 0 < written < full_scores - scores_before
    assert written % 3 == 0  # a label's three scores land together
    run(score[0], "--db", db, *score[1:])
    assert label_tables(db) == label_tables(uninterrupted)


def test_label_edit_is_named_in_history(db):
    where = ["--db", db, "--layer", "1", "--neuron", "2"]
    run("label", *where, "--text", 'fires on "a"', "--annotator", "alice")
    source = json.loads(run("history", *where, "--format", "json").output)["entries"][-1]
    source_id = source["after"]["explanation_id"]
    run(
        "label", *where, "--edit", source_id, "--text", 'fires on "a" and "b"', "--annotator", "bob"
    )
    entries = json.loads(run("history", *where, "--format", "json").output)["entries"]
    assert (entries[-1]["action"], entries[-1]["edited_from"]) == ("write", source_id)
    assert f"(edited from #{source_id})" in run("history", *where).output.splitlines()[-1]
    refused = run("label", *where, "--edit", source_id, "--accept", ok=False)
    assert refused.exit_code != 0 and "--edit ID needs --text" in refused.output
