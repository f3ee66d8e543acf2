"""Every bad input gets one line on stderr, a non-zero exit, and leaves files untouched."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import labeller
from labeller.cli import cli


def fails(*args: object, match: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert match in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_db(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("errs") / "c.db"
    result = CliRunner().invoke(
        cli,
        [
            "scan",
            "--db",
            str(db),
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(tiny_corpus),
            "--tokens",
            "300",
            "--ctx",
            "16",
            "--top-k",
            "4",
            "--random",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    return db


def test_read_command_on_missing_catalogue(tmp_path):
    fails(
        "show",
        "--db",
        tmp_path / "nope.db",
        "--layer",
        "0",
        "--neuron",
        "0",
        match="no catalogue at",
    )
    assert not (tmp_path / "nope.db").exists()
    fails("models", "--db", tmp_path / "nope.db", match="no catalogue at")


@pytest.mark.parametrize("command", ["models", "scan"])
def test_foreign_sqlite_file_is_refused_untouched(tmp_path, tiny_model_dir, tiny_corpus, command):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("create table notes (id integer primary key, body text)")
        conn.execute("insert into notes (body) values ('keep me')")
    before = digest(path)
    args = ["--db", path]
    if command == "scan":
        args += ["--model", tiny_model_dir, "--dataset", tiny_corpus]
    fails(command, *args, match="is not a labeller catalogue")
    assert digest(path) == before
    assert not Path(f"{path}-wal").exists()


def test_non_sqlite_file_is_refused_untouched(tmp_path):
    path = tmp_path / "notes.db"
    path.write_text("just some text, not a database\n" * 20)
    before = digest(path)
    fails("scans", "--db", path, match="not a readable SQLite catalogue")
    assert digest(path) == before


def test_truncated_catalogue_is_detected(small_db, tmp_path):
    path = tmp_path / "cut.db"
    data = small_db.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    result = CliRunner().invoke(cli, ["show", "--db", str(path), "--layer", "0", "--neuron", "0"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")


def test_newer_schema_is_refused(small_db, tmp_path):
    path = tmp_path / "newer.db"
    path.write_bytes(small_db.read_bytes())
    with sqlite3.connect(path) as conn:
        conn.execute(
            "insert into _sqlite_migrations (migration_set, name, applied_at) "
            "values ('labeller', 'm999_from_the_future', '2030-01-01')"
        )
    before = digest(path)
    fails("show", "--db", path, "--layer", "0", "--neuron", "0", match="newer labeller")
    assert digest(path) == before


def test_unknown_model(tmp_path, tiny_corpus):
    line = fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        "no-such-org/no-such-model-xyz",
        "--dataset",
        tiny_corpus,
        match="could not load model",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert "local directory" in line and "Hugging Face hub" in line


def test_directory_that_is_not_a_model(tmp_path, tiny_corpus):
    fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        tmp_path,
        "--dataset",
        tiny_corpus,
        match="neither labeller_model.json nor a Hugging Face config.json",
    )


def test_missing_and_empty_corpus(tmp_path, tiny_model_dir):
    fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        tiny_model_dir,
        "--dataset",
        tmp_path / "missing.jsonl",
        match="no corpus at",
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("")
    fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        tiny_model_dir,
        "--dataset",
        empty,
        match="is empty",
    )
    fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        tiny_model_dir,
        "--dataset",
        tmp_path / "empty2",
        match="no corpus at",
    )


def test_bad_jsonl_line(tmp_path, tiny_model_dir):
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"body": "x"}) + "\n")
    fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        tiny_model_dir,
        "--dataset",
        corpus,
        match="bad.jsonl:2: no string field 'text'",
    )


def test_undecodable_bytes_are_replaced_with_a_warning(tmp_path, tiny_model_dir):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("caf\xe9 def class ".encode("latin-1") * 20)
    result = CliRunner().invoke(
        cli,
        [
            "scan",
            "--db",
            str(tmp_path / "c.db"),
            "--model",
            str(tiny_model_dir),
            "--dataset",
            str(corpus),
            "--ctx",
            "16",
            "--top-k",
            "2",
            "--random",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.count("undecodable bytes replaced") == 1, result.stderr


def test_bad_layers_and_neurons(small_db, tmp_path, tiny_model_dir, tiny_corpus):
    fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        tiny_model_dir,
        "--dataset",
        tiny_corpus,
        "--layers",
        "0-x",
        match="--layers",
    )
    fails(
        "scan",
        "--db",
        tmp_path / "c.db",
        "--model",
        tiny_model_dir,
        "--dataset",
        tiny_corpus,
        "--layers",
        "5",
        match="has layers 0-1",
    )
    fails("show", "--db", small_db, "--layer", "0", "--neuron", "4000", match="has no neuron 4000")
    fails("show", "--db", small_db, "--layer", "7", "--neuron", "0", match="has not been scanned")
    fails(
        "show",
        "--db",
        small_db,
        "--model",
        "other",
        "--layer",
        "0",
        "--neuron",
        "0",
        match="model 'other' is not in",
    )
    fails(
        "trace",
        "--db",
        small_db,
        "--layer",
        "0",
        "--neuron",
        "4000",
        "--text",
        "x",
        match="neurons 0-47",
    )


def test_several_models_need_model_flag(small_db, tmp_path, tiny_hf_dir, tiny_corpus):
    db = tmp_path / "two.db"
    db.write_bytes(small_db.read_bytes())
    result = CliRunner().invoke(
        cli,
        [
            "scan",
            "--db",
            str(db),
            "--model",
            str(tiny_hf_dir),
            "--dataset",
            str(tiny_corpus),
            "--tokens",
            "200",
            "--ctx",
            "16",
            "--layers",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    fails("show", "--db", db, "--layer", "0", "--neuron", "0", match="holds several models")


def test_console_script_prints_one_line(tmp_path):
    env = {**os.environ, "LABELLER_DB": str(tmp_path / "missing.db")}
    proc = subprocess.run(
        [sys.executable, "-m", "labeller", "scans"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no catalogue at {tmp_path / 'missing.db'}; run `labeller scan` first or pass "
        "--db / LABELLER_DB"
    ]


def test_cheap_commands_do_not_import_torch(small_db):
    code = (
        "import sys\n"
        "from labeller.cli import main\n"
        f"sys.argv = ['labeller', 'scans', '--db', {str(small_db)!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_a_failed_first_scan_leaves_no_catalogue(tmp_path, tiny_model_dir, tiny_corpus):
    db = tmp_path / "new.db"
    fails(
        "scan",
        "--db",
        db,
        "--model",
        tmp_path / "no-model-here",
        "--dataset",
        tiny_corpus,
        match="no model directory at",
        env={"HF_HUB_OFFLINE": "1"},
    )
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(json.dumps({"text": "fine " * 40}) + "\n" + json.dumps({"body": "x"}) + "\n")
    fails("scan", "--db", db, "--model", tiny_model_dir, "--dataset", corpus, match="bad.jsonl:2")
    assert list(tmp_path.iterdir()) == [corpus]


def test_a_scan_failing_midway_leaves_no_running_scan(small_db, tmp_path, tiny_model_dir):
    db = tmp_path / "c.db"
    db.write_bytes(small_db.read_bytes())
    before = CliRunner().invoke(cli, ["scans", "--db", str(db), "--format", "json"]).output
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text(json.dumps({"text": "fine " * 40}) + "\n" + json.dumps({"body": "x"}) + "\n")
    fails("scan", "--db", db, "--model", tiny_model_dir, "--dataset", corpus, match="bad.jsonl:2")
    after = CliRunner().invoke(cli, ["scans", "--db", str(db), "--format", "json"]).output
    assert json.loads(after) == json.loads(before)


def test_rerunning_a_complete_scan_says_so_and_stores_nothing(small_db, tmp_path):
    db = tmp_path / "c.db"
    db.write_bytes(small_db.read_bytes())
    (scan,) = json.loads(
        CliRunner().invoke(cli, ["scans", "--db", str(db), "--format", "json"]).output
    )
    p = scan["params"]
    again = CliRunner().invoke(
        cli,
        [
            "scan",
            "--db",
            str(db),
            "--model",
            p["model"],
            "--dataset",
            p["dataset"],
            "--tokens",
            str(p["tokens"]),
            "--ctx",
            str(p["ctx"]),
            "--top-k",
            str(p["top_k"]),
            "--random",
            str(p["random"]),
        ],
    )
    assert again.exit_code == 0, again.output
    assert f"scan {scan['id']} with these settings is already complete" in again.output
    scans = json.loads(
        CliRunner().invoke(cli, ["scans", "--db", str(db), "--format", "json"]).output
    )
    assert [s["id"] for s in scans] == [scan["id"]]


def test_click_usage_errors_are_one_error_line():
    fails("show", "--layer", "x", "--neuron", "0", match="'--layer'")
    fails("rank", "--format", "nope", match="'--format'")
    fails("nosuch", match="'nosuch'")


@pytest.mark.parametrize(
    "flags",
    [
        ["--layer", str(10**20), "--neuron", "0", "--text", "x"],
        ["--layer", "0", "--neuron", str(10**20), "--text", "x"],
        ["--layer", "0", "--neuron", "0", "--explanation", str(10**20), "--accept"],
        ["--layer", "0", "--neuron", "0", "--text", "x", "--expect-version", str(10**20)],
    ],
)
def test_huge_integers_are_usage_errors(small_db, flags):
    fails("label", "--db", small_db, *flags, match="is not in the range")


def test_contradicting_label_flags_are_a_usage_error(small_db):
    before = digest(small_db)
    common = ["label", "--db", small_db, "--layer", "0", "--neuron", "0"]
    fails(*common, "--text", "x", "--accept", "--reject", match="--accept and --reject")
    fails(*common, "--explanation", "1", "--confirm", "--dispute", match="--confirm and --dispute")
    assert digest(small_db) == before


def test_expect_version_on_a_neuron_without_history(small_db):
    line = fails(
        "label",
        "--db",
        small_db,
        "--layer",
        "0",
        "--neuron",
        "1",
        "--text",
        "x",
        "--expect-version",
        "5",
        match="neuron L0 N1 has no label history yet",
    )
    assert "--expect-version" in line


def test_a_closed_stdout_ends_the_command_quietly(small_db):
    """`labeller rank | head` must not turn the reader leaving into an error."""
    command = [sys.executable, "-m", "labeller", "show", "--db", str(small_db)]
    proc = subprocess.Popen(
        [*command, "--layer", "0", "--neuron", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(labeller.__file__).parents[1])},
    )
    proc.stdout.close()  # the reader goes away before anything is written
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert stderr == ""


def test_ranges_are_checked_against_the_model_before_expansion(small_db, tmp_path):
    fails(
        "explain",
        "--db",
        small_db,
        "--neurons",
        "0-99999999",
        match="--neurons '0-99999999': the model has neurons 0-47",
    )
    fails("rank", "--db", small_db, "--layers", "9", match="--layers '9': the model has layers")
    out = tmp_path / "out.json"
    fails("export", "--db", small_db, "--layers", "1-9", "-o", out, match="--layers '1-9'")
    assert not out.exists()


def test_messages_name_the_flags_typed(small_db):
    fails(
        "trace", "--db", small_db, "--layer", "5", "--neuron", "0", "--text", "x",
        match="--layer asked for 5",
    )  # fmt: skip


def test_trace_refuses_stdin_that_is_not_utf8(small_db):
    result = CliRunner().invoke(
        cli,
        ["trace", "--db", str(small_db), "--layer", "0", "--neuron", "0", "--text", "-"],
        input=b"caf\xe9 \xff",
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert (
        result.stderr.strip()
        == "error: --text -: stdin is not UTF-8 (byte 3); convert it, e.g. with iconv"
    )


def _broken_copy(source: Path, tmp_path: Path, damage: str) -> Path:
    import shutil

    copy = tmp_path / "model"
    shutil.copytree(source, copy)
    weights = next(copy.glob("*.safetensors"))
    if damage == "missing weights":
        weights.unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "bad config":
        (copy / "config.json").write_text("{not json")
    elif damage == "no tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            (copy / name).unlink(missing_ok=True)
    return copy


@pytest.mark.parametrize(
    ("fixture", "damage"),
    [
        ("tiny_model_dir", "missing weights"),
        ("tiny_model_dir", "truncated weights"),
        ("tiny_model_dir", "no tokenizer"),
        ("tiny_hf_dir", "missing weights"),
        ("tiny_hf_dir", "truncated weights"),
        ("tiny_hf_dir", "bad config"),
        ("tiny_hf_dir", "no tokenizer"),
    ],
)
def test_a_damaged_model_directory_is_one_line(request, tmp_path, tiny_corpus, fixture, damage):
    model = _broken_copy(request.getfixturevalue(fixture), tmp_path, damage)
    db = tmp_path / "c.db"
    line = fails(
        "scan", "--db", db, "--model", model, "--dataset", tiny_corpus, "--tokens", "200",
        match=str(model), env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert "corpus" not in line
    assert not db.exists()


def test_a_missing_local_folder_says_so(tmp_path, tiny_corpus):
    fails(
        "scan", "--db", tmp_path / "c.db", "--model", "./no-such-dir", "--dataset", tiny_corpus,
        match="no model directory at no-such-dir",
    )  # fmt: skip


def test_paths_that_cannot_be_written_are_one_line(small_db, tmp_path, tiny_model_dir, tiny_corpus):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    fails("backup", "--db", small_db, blocker / "sub" / "b.db", match=str(blocker))
    fails("export", "--db", small_db, "-o", blocker / "out.json", match=str(blocker))
    fails(
        "scan", "--db", blocker / "sub" / "c.db", "--model", tiny_model_dir,
        "--dataset", tiny_corpus, match=str(blocker),
    )  # fmt: skip


def test_a_record_damaged_below_sqlites_checks_is_one_line(small_db, tmp_path):
    """A corrupt JSON column or a truncated blob passes SQLite's page checks: reading it says
    the catalogue holds an unreadable record, never a JSONDecodeError traceback."""
    db = tmp_path / "c.db"
    db.write_bytes(small_db.read_bytes())
    with sqlite3.connect(db) as conn:
        conn.execute("update windows set tokens = '[\"a\", broken'")
        conn.execute("update neurons set histogram = '{' where layer = 1 and neuron = 0")
    for command in (
        ["show", "--layer", "0", "--neuron", "0"],
        ["show", "--layer", "1", "--neuron", "0"],
        ["export", "-o", tmp_path / "out.json"],
    ):
        fails(*command, "--db", db, match="holds a record that cannot be read")
    assert not (tmp_path / "out.json").exists()
