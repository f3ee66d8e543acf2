"""Text from users and imports (labels, annotator names, model names) reaches the terminal with
its control characters escaped, so it cannot clear the screen, retitle the window or restyle
what follows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import run_cli

HOSTILE = "fires on \x1b[2J\x1b[H\x1b]0;owned\x07 quotes\rback\x08"
ANNOTATOR = "eve\x1b[5m"


@pytest.fixture(scope="module")
def hostile_db(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("esc") / "c.db"
    run_cli(
        "scan", "--db", db, "--model", tiny_model_dir, "--dataset", tiny_corpus,
        "--tokens", "200", "--ctx", "16", "--top-k", "4", "--random", "2",
    )  # fmt: skip
    run_cli(
        "label", "--db", db, "--layer", "0", "--neuron", "0", "--text", HOSTILE,
        "--accept", "--annotator", ANNOTATOR,
    )  # fmt: skip
    run_cli(
        "label", "--db", db, "--layer", "0", "--neuron", "0", "--text", "other",
        "--accept", "--annotator", "bob",
    )  # fmt: skip
    # Neuron 0.1's label is the hostile one (on 0.0 bob's accepted "other" is the label).
    run_cli(
        "label", "--db", db, "--layer", "0", "--neuron", "1", "--text", HOSTILE,
        "--accept", "--annotator", ANNOTATOR,
    )  # fmt: skip
    return db


@pytest.mark.parametrize(
    "command",
    [
        ["show", "--layer", "0", "--neuron", "0"],
        ["history", "--layer", "0", "--neuron", "0"],
        ["rank", "--by", "max"],
        ["agreement"],
        ["label", "--layer", "0", "--neuron", "0", "--text", HOSTILE, "--annotator", ANNOTATOR,
         "--needs-review"],
    ],
)  # fmt: skip
def test_control_characters_are_shown_escaped(hostile_db, command):
    result = run_cli(command[0], "--db", hostile_db, *command[1:])
    for raw in ("\x1b", "\x07", "\x08", "\r"):
        assert raw not in result.output, (command, result.output)
    assert "\\x1b" in result.output, result.output


def test_a_user_error_quoting_user_text_stays_one_escaped_line(hostile_db):
    result = run_cli(
        "label", "--db", hostile_db, "--layer", "0", "--neuron", "0", "--undo",
        "--annotator", "nobody\x1b]0;x\x07\nsecond line", ok=False,
    )  # fmt: skip
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nothing of nobody\\x1b]0;x\\x07⏎")


def test_show_prints_label_ids(hostile_db):
    """`label --explanation ID` needs an id; `show` is where people look for it."""
    result = run_cli("show", "--db", hostile_db, "--layer", "0", "--neuron", "0")
    history = run_cli(
        "history", "--db", hostile_db, "--layer", "0", "--neuron", "0", "--format", "json"
    )
    entries = json.loads(history.output)["entries"]
    ids = {e["after"]["explanation_id"] for e in entries if e["after"]}
    assert len(ids) == 2
    for explanation_id in ids:
        assert f"- #{explanation_id} [" in result.output
