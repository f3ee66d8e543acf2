"""Blind scores: held-out windows are sealed for people until they unseal a neuron (recorded),
and every score says whether the label's author had seen the windows it was scored on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import run_cli as run
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue, labels
from labeller.records import HistoryAction, LabelStatus, Split

LAYER, NEURON = "1", "3"
TARGET = ("--layer", LAYER, "--neuron", NEURON)
SCORE_TARGET = ("--layer", LAYER, "--neurons", NEURON)


@pytest.fixture(scope="module")
def scanned_db(tmp_path_factory, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, top_k=8, random=6)
    return scanned_catalogue(tmp_path_factory.mktemp("blind") / "c.db", tiny_model, params)


@pytest.fixture()
def db(scanned_db, tmp_path) -> Path:
    copy = tmp_path / "c.db"
    copy.write_bytes(scanned_db.read_bytes())
    return copy


def label(db: Path, text: str, who: str) -> None:
    run("label", "--db", db, *TARGET, "--text", text, "--annotator", who)


def scores_by_label(db: Path) -> dict[str, dict[tuple[str, str], bool]]:
    """label text -> {(method, split): blind}."""
    data = json.loads(run("show", "--db", db, *TARGET, "--format", "json").output)
    return {
        e["text"]: {(s["method"], s["split"]): s["blind"] for s in e["scores"]}
        for e in data["explanations"]
    }


def shown_splits(text: str) -> set[str]:
    """The splits of the example lines `show` printed (`rank split max tokens`)."""
    lines = [line.split() for line in text.splitlines() if line[:3].strip().isdigit()]
    return {parts[1] for parts in lines if len(parts) > 1}


def test_unseal_is_recorded_once_and_cannot_be_undone(db):
    out = run("unseal", "--db", db, *TARGET, "--annotator", "alice").output
    assert "alice  unseal" in out
    again = run("unseal", "--db", db, *TARGET, "--annotator", "alice").output
    assert "already unsealed" in again
    history = json.loads(run("history", "--db", db, *TARGET, "--format", "json").output)
    entries = history["entries"]
    assert [(e["action"], e["annotator"]) for e in entries] == [("unseal", "alice")]
    assert history["version"] == entries[-1]["id"]  # the page must reload after an unseal
    undo = run("label", "--db", db, *TARGET, "--undo", "--annotator", "alice", ok=False)
    assert undo.exit_code == 2 and "nothing of alice's to undo" in undo.output
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref(None, 1, 3)
        assert catalogue.unsealed_by(ref.id) == ["alice"]
        assert catalogue.neuron_view(None, 1, 3).unsealed_by == ["alice"]
        assert labels.unseal(catalogue, ref, annotator="alice") == []


def test_show_text_seals_held_out_windows_until_you_unseal(db):
    data = json.loads(run("show", "--db", db, *TARGET, "--format", "json").output)
    splits = {e["split"] for e in data["top_examples"] + data["random_examples"]}
    assert {"valid", "test"} <= splits  # JSON keeps every window, with its split
    sealed = run("show", "--db", db, *TARGET, "--annotator", "bob").output
    assert shown_splits(sealed) == {"train", "calibration"}
    windows = data["top_examples"] + data["random_examples"] + data["quantile_examples"]
    held_out = sum(e["split"] in ("valid", "test") for e in windows)
    words = " ".join(sealed.split())  # the console wraps long lines
    assert f"Sealed: {held_out} held-out windows (valid, test)" in words
    assert "--layer 1 --neuron 3` shows them to you" in words
    run("unseal", "--db", db, *TARGET, "--annotator", "bob")
    opened = run("show", "--db", db, *TARGET, "--annotator", "bob").output
    assert shown_splits(opened) == {"train", "calibration", "valid", "test"}
    assert "Sealed" not in opened
    still = run("show", "--db", db, *TARGET, "--annotator", "carol").output
    assert "Sealed" in still  # unsealing is per person


def test_a_persons_label_is_blind_on_valid_until_they_unseal(db):
    label(db, 'fires on "the"', "alice")  # before unsealing: saw train and calibration
    run("unseal", "--db", db, *TARGET, "--annotator", "alice")
    label(db, 'fires on "def"', "alice")  # after: saw every split
    label(db, 'fires on "of"', "bob")  # bob never unsealed
    run("score", "--db", db, *SCORE_TARGET)
    run("score", "--db", db, *SCORE_TARGET, "--split", "test")
    blind = scores_by_label(db)
    before, after, other = blind['fires on "the"'], blind['fires on "def"'], blind['fires on "of"']
    for split in ("valid", "test"):
        assert before[("top_and_random", split)] is True
        assert after[("top_and_random", split)] is False
        assert other[("top_and_random", split)] is True
    # Three human labels are candidates: scored on calibration too, which people always see.
    for scores in (before, after, other):
        assert scores[("top_and_random", "calibration")] is False
    with Catalogue.open(db, read_only=True) as catalogue:
        seen = {e.text: e.seen for e in catalogue.neuron_view(None, 1, 3).explanations}
    assert seen['fires on "the"'] == [Split.TRAIN, Split.CALIBRATION]
    assert seen['fires on "def"'] == [Split.TRAIN, Split.CALIBRATION, Split.VALID, Split.TEST]


def test_an_edit_after_unsealing_is_not_blind_but_the_old_label_stays_blind(db):
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref(None, 1, 3)
        labels.write_label(
            catalogue, ref, 'fires on "the"', annotator="alice", expected_version=None
        )
        labels.unseal(catalogue, ref, annotator="alice")
        # Writing the same text again is the same label: it was fixed before unsealing.
        labels.write_label(
            catalogue,
            ref,
            'fires on "the"',
            annotator="alice",
            expected_version=None,
            status=LabelStatus.ACCEPTED,
        )
        labels.write_label(
            catalogue, ref, 'fires on "the" and "of"', annotator="alice", expected_version=None
        )
        history = [e.action for e in catalogue.history(ref)]
    assert HistoryAction.UNSEAL in history
    run("score", "--db", db, *SCORE_TARGET)
    blind = scores_by_label(db)
    assert blind['fires on "the"'][("top_and_random", "valid")] is True
    assert blind['fires on "the" and "of"'][("top_and_random", "valid")] is False


def test_explainer_labels_score_blind_and_rank_can_keep_to_blind_scores(db):
    run("explain", "--db", db, "--layer", LAYER)
    run("unseal", "--db", db, *TARGET, "--annotator", "alice")
    label(db, 'fires on "the" and "def" and "of"', "alice")
    run("score", "--db", db, "--layer", LAYER)
    blind = scores_by_label(db)
    explainer = [
        scores for text, scores in blind.items() if not text.startswith('fires on "the" and')
    ]
    assert explainer and all(all(scores.values()) for scores in explainer)
    rows = json.loads(run("rank", "--db", db, "--layers", LAYER, "--format", "json").output)
    assert all("blind" in r for r in rows)
    assert all(r["blind"] is (None if r["score"] is None else r["blind"]) for r in rows)
    only_blind = json.loads(
        run("rank", "--db", db, "--layers", LAYER, "--blind", "--format", "json").output
    )
    assert {r["blind"] for r in only_blind} <= {True, None}
    with Catalogue.open(db, read_only=True) as catalogue:
        unfiltered = catalogue.rank(None, layers=[1])
        filtered = catalogue.rank(None, layers=[1], blind=True)
    # The human label's score (not blind) is never what --blind ranks neuron 1.3 by.
    (mine,) = [r for r in filtered if r.neuron == 3]
    assert mine.label != 'fires on "the" and "def" and "of"' or mine.score is None
    assert len(unfiltered) == len(filtered)
    table = run("rank", "--db", db, "--layers", LAYER, "--blind").output
    assert "blind only" in table


def test_export_carries_blind_and_what_the_author_saw(db, tmp_path):
    label(db, 'fires on "the"', "alice")
    run("score", "--db", db, *SCORE_TARGET)
    out = tmp_path / "x.json"
    run("export", "--db", db, "--format", "json", "-o", out)
    neurons = [json.loads(line.rstrip(",")) for line in out.read_text().splitlines()[1:-1]]
    (neuron,) = [n for n in neurons if n["layer"] == 1 and n["neuron"] == 3]
    (explanation,) = neuron["explanations"]
    assert explanation["seen"] == ["train", "calibration"]
    assert {s["blind"] for s in explanation["scores"]} == {True}
    # Importing it elsewhere keeps both.
    other = tmp_path / "other.db"
    run("import", "--db", other, out, "--annotator", "importer")
    with Catalogue.open(other, read_only=True) as catalogue:
        (imported,) = catalogue.neuron_view(None, 1, 3).explanations
    assert imported.seen == [Split.TRAIN, Split.CALIBRATION]
    assert all(s.blind for s in imported.scores)


def test_upgrading_an_older_catalogue_computes_seen_and_blind(tmp_path):
    """m007: an explainer only ever saw train windows, so its old scores are blind; a person
    may have read valid and test in the old TUI and `show`, so theirs are not."""
    from sqlite_utils import Database

    from labeller.catalogue.migrations import migrations

    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m007_blind_scores")
    model = db.table("models").insert({"name": "m", "source": "demo"}).last_pk
    neuron = db.table("neurons").insert({"model_id": model, "layer": 0, "neuron": 0}).last_pk
    for source in ("gpt-4o-mini", "human"):
        explanation = (
            db.table("explanations")
            .insert(
                {
                    "neuron_id": neuron,
                    "text": source,
                    "source": source,
                    "status": "proposed",
                    "created_at": "x",
                }
            )
            .last_pk
        )
        for split in ("calibration", "valid"):
            db.table("scores").insert(
                {
                    "explanation_id": explanation,
                    "method": "top_and_random",
                    "split": split,
                    "score": 0.5,
                    "simulator": "baseline",
                    "prompt_version": "v1",
                    "created_at": "2026-01-01T00:00:00+00:00",
                }
            )
    db.close()
    with Catalogue.open(path) as catalogue:
        stored = {e.source: e for e in catalogue.explanations_of(neuron)}
    assert stored["gpt-4o-mini"].seen == [Split.TRAIN]
    assert [s.blind for s in stored["gpt-4o-mini"].scores] == [True, True]
    assert stored["human"].seen == [Split.TRAIN, Split.CALIBRATION, Split.VALID, Split.TEST]
    assert [s.blind for s in stored["human"].scores] == [False, False]
