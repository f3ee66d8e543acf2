"""`labeller detect`, `show`'s detectors, `rank --by detector:NAME` and detectors in the JSON
export, as a user drives them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import run_cli as run

from labeller.detect.registry import builtins


@pytest.fixture(scope="module")
def scanned_db(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("cli-detect") / "c.db"
    run("scan", "--db", db, "--model", tiny_model_dir, "--dataset", tiny_corpus, "--ctx", "16")
    return db


@pytest.fixture
def db(scanned_db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "c.db"
    copy.write_bytes(scanned_db.read_bytes())
    return copy


def test_list_prints_every_detector_with_its_description() -> None:
    out = run("detect", "--list").output
    for detector in builtins():
        assert detector.name in out and detector.description[:30] in out


def test_detect_stores_scores_that_show_and_rank_read_back(db: Path) -> None:
    result = run("detect", "--db", db, "--layer", "0", "--regex", "vowel=^ ?[aeiou]")
    assert "scores written" in result.output
    again = run("detect", "--db", db, "--layer", "0", "--regex", "vowel=^ ?[aeiou]")
    assert "0 scores written" in again.output and "already stored" in again.output
    ranked = json.loads(
        run("rank", "--db", db, "--by", "detector:vowel", "--format", "json").output
    )
    layer0 = [r for r in ranked if r["layer"] == 0]
    scores = [r["score"] for r in layer0]
    assert scores == sorted(scores, reverse=True) and scores[0] is not None
    best = layer0[0]
    shown = json.loads(
        run("show", "--db", db, "--layer", 0, "--neuron", best["neuron"], "--format", "json").output
    )
    (vowel,) = shown["detectors"]
    assert (vowel["name"], vowel["split"], vowel["score"]) == ("vowel", "valid", best["score"])
    text = run("show", "--db", db, "--layer", 0, "--neuron", best["neuron"]).output
    assert "Detectors" in text and f"vowel valid: {best['score']:.3f}" in text


def test_every_builtin_runs_on_all_neurons_and_json_lists_them_best_first(db: Path) -> None:
    run("detect", "--db", db, "--neurons", "all")
    shown = json.loads(
        run("show", "--db", db, "--layer", 1, "--neuron", 2, "--format", "json").output
    )
    assert {d["name"] for d in shown["detectors"]} == {d.name for d in builtins()}
    scores = [d["score"] for d in shown["detectors"] if d["score"] is not None]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--regex", "broken=[0-9"], "does not compile"),
        (["--regex", "nopattern"], "NAME=PATTERN"),
        (["--detector", "nope"], "labeller detect --list"),
    ],
)
def test_bad_detector_input_is_one_line_and_writes_nothing(db: Path, args, says) -> None:
    result = run("detect", "--db", db, *args, ok=False)
    assert result.exit_code == 2
    assert says in result.output and result.output.count("\n") == 1
    assert "Traceback" not in result.output
    empty = run("rank", "--db", db, "--by", "detector:number", ok=False)
    assert empty.exit_code == 2 and "scored: none" in empty.output


def test_rank_by_an_unknown_key_says_what_it_takes(db: Path) -> None:
    result = run("rank", "--db", db, "--by", "detectors", ok=False)
    assert result.exit_code == 2 and "detector:NAME" in result.output


def test_export_carries_detectors_and_import_restores_them(db: Path, tmp_path: Path) -> None:
    run("detect", "--db", db, "--layer", "0", "--neurons", "0-3", "--detector", "number")
    out = tmp_path / "export.json"
    run("export", "--db", db, "-o", out)
    document = json.loads(out.read_text())
    (neuron,) = [n for n in document["neurons"] if (n["layer"], n["neuron"]) == (0, 1)]
    assert [d["name"] for d in neuron["detectors"]] == ["number"]
    target = tmp_path / "target.db"
    run("import", "--db", target, out)
    before = json.loads(
        run("show", "--db", db, "--layer", 0, "--neuron", 1, "--format", "json").output
    )
    after = json.loads(
        run("show", "--db", target, "--layer", 0, "--neuron", 1, "--format", "json").output
    )
    assert after["detectors"] == before["detectors"]
    again = tmp_path / "again.json"
    run("export", "--db", target, "-o", again)
    assert json.loads(again.read_text())["neurons"] == document["neurons"]
