"""Importing into a catalogue that has its own work: both histories kept, conflicts left alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from exchange_factory import build_catalogue
from exchange_helpers import copy_db, export_file, state

from labeller.catalogue import Catalogue, labels
from labeller.exchange import import_catalogue
from labeller.records import LabelStatus


@pytest.fixture(scope="module")
def base_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_catalogue(tmp_path_factory.mktemp("merge") / "base.db")


@pytest.fixture()
def ours_and_theirs(base_db: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two copies of one catalogue that two people then work on apart."""
    return copy_db(base_db, tmp_path / "ours.db"), copy_db(base_db, tmp_path / "theirs.db")


def write(path: Path, annotator: str, layer: int, neuron: int, text: str, accept: bool) -> None:
    with Catalogue.open(path) as catalogue:
        ref = catalogue.neuron_ref("tiny", layer, neuron)
        labels.write_label(
            catalogue,
            ref,
            text,
            status=LabelStatus.ACCEPTED if accept else LabelStatus.PROPOSED,
            annotator=annotator,
            expected_version=None,
        )


def set_status(path: Path, annotator: str, neuron: int, text: str, status: LabelStatus) -> None:
    with Catalogue.open(path) as catalogue:
        ref = catalogue.neuron_ref("tiny", 0, neuron)
        (explanation,) = [e for e in catalogue.explanations_of(ref.id) if e.text == text]
        assert explanation.id is not None
        labels.set_status(
            catalogue, ref, explanation.id, status, annotator=annotator, expected_version=None
        )


def merge(into: Path, source: Path, tmp_path: Path):
    export = export_file(source, tmp_path / f"{source.stem}-export.json")
    with Catalogue.open(into) as catalogue:
        return import_catalogue(catalogue, export)


def test_merge_keeps_both_sides_history(ours_and_theirs, tmp_path: Path):
    ours, theirs = ours_and_theirs
    write(ours, "alice", 0, 2, "alice's idea", accept=False)
    write(ours, "alice", 0, 4, "loops", accept=False)
    write(theirs, "bob", 0, 3, "bob's idea", accept=True)
    write(theirs, "bob", 0, 4, "iteration", accept=False)

    report = merge(ours, theirs, tmp_path)
    assert report.conflicts == []
    assert (report.neurons_added, report.neurons_updated) == (0, 2)
    assert (report.explanations_added, report.history_added) == (2, 3)
    merged = state(ours)
    assert merged["statuses"][(0, 3, "human", "bob's idea")] == "accepted"  # nothing accepted here
    assert [(a, who) for a, who, *_ in merged["history"][(0, 4)]] == [
        ("write", "alice"),
        ("write", "bob"),
    ]

    merge(theirs, ours, tmp_path)
    back = state(theirs)
    assert back["counts"] == merged["counts"]
    assert back["statuses"] == merged["statuses"]
    for neuron, entries in merged["history"].items():
        assert sorted(back["history"][neuron]) == sorted(entries), neuron
    # Both sides now hold the same entries; a further exchange adds nothing either way.
    assert merge(ours, theirs, tmp_path).history_added == 0
    assert merge(theirs, ours, tmp_path).history_added == 0


def test_conflict_is_reported_and_nothing_is_overwritten(ours_and_theirs, tmp_path: Path):
    ours, theirs = ours_and_theirs
    write(ours, "alice", 0, 5, "quotes", accept=True)
    write(theirs, "bob", 0, 5, "strings", accept=True)
    before = state(ours)

    report = merge(ours, theirs, tmp_path)
    assert report.conflicts == [
        "tiny L0 N5: ours 'quotes' accepted by alice, theirs 'strings' accepted by bob"
    ]
    after = state(ours)
    assert after["statuses"][(0, 5, "human", "quotes")] == "accepted"
    assert after["statuses"][(0, 5, "human", "strings")] == "proposed"  # theirs, left for a person
    assert {k: v for k, v in after["statuses"].items() if k != (0, 5, "human", "strings")} == (
        before["statuses"]
    )
    # Their history comes along (bob wrote and accepted "strings" over there) after ours, and
    # an entry by the importer says what happened here: the history ends in the stored status.
    assert after["history"][(0, 5)][: len(before["history"][(0, 5)])] == before["history"][(0, 5)]
    assert [(a, who) for a, who, *_ in after["history"][(0, 5)][-3:]] == [
        ("write", "bob"),
        ("accept", "bob"),
        ("demote", "import"),
    ]
    assert after["history"][(0, 5)][-1][4] == ("strings", "proposed", "human")

    again = merge(ours, theirs, tmp_path)
    assert again.conflicts == report.conflicts  # still there for a person to resolve
    assert state(ours) == after


def test_a_proposed_label_takes_their_decision_but_not_over_ours(ours_and_theirs, tmp_path: Path):
    ours, theirs = ours_and_theirs
    set_status(theirs, "bob", 0, "fires on token 0", LabelStatus.ACCEPTED)
    set_status(ours, "alice", 2, "code, variant 2", LabelStatus.REJECTED)
    set_status(theirs, "bob", 2, "code, variant 2", LabelStatus.ACCEPTED)

    report = merge(ours, theirs, tmp_path)
    assert report.conflicts == []
    assert report.statuses_changed == 1
    merged = state(ours)["statuses"]
    assert merged[(0, 0, "gpt-test", "fires on token 0")] == "accepted"
    assert merged[(0, 2, "gpt-test", "code, variant 2")] == "rejected"  # ours was decided
    assert merge(ours, theirs, tmp_path).statuses_changed == 0


def test_neurons_we_lack_come_in_and_ours_keep_their_evidence(tmp_path: Path):
    ours = build_catalogue(tmp_path / "ours.db", layers=1, n_layers=2, neurons=3, labelled=False)
    theirs = build_catalogue(tmp_path / "theirs.db", layers=2, neurons=3, seed=1)
    with Catalogue.open(ours) as catalogue:
        mine = catalogue.neuron_view("tiny", 0, 0)

    report = merge(ours, theirs, tmp_path)
    assert report.neurons_added == 3  # layer 1
    assert report.kept_our_evidence == 3  # layer 0: scanned with another seed here
    assert report.scans_added == 1
    with Catalogue.open(ours) as catalogue:
        kept = catalogue.neuron_view("tiny", 0, 0)
        assert kept.stats == mine.stats and kept.top_examples == mine.top_examples
        assert [e.text for e in kept.explanations] == ["fires on token 0", "code, variant 0"]
        assert kept.explanations[0].scores  # their scores come with their labels
        assert catalogue.neuron_view("tiny", 1, 2).top_examples


def version(path: Path, neuron: int) -> int:
    with Catalogue.open(path) as catalogue:
        return catalogue.label_version(catalogue.neuron_ref("tiny", 0, neuron).id)


def test_an_older_export_never_reverts_an_undo(ours_and_theirs, tmp_path: Path):
    """The finding: alice accepts, someone exports, alice undoes; the older file comes back."""
    ours, _ = ours_and_theirs
    write(ours, "alice", 0, 2, "alice's idea", accept=True)
    older = export_file(ours, tmp_path / "older.json")
    with Catalogue.open(ours) as catalogue:
        labels.undo(
            catalogue, catalogue.neuron_ref("tiny", 0, 2), annotator="alice", expected_version=None
        )
    before, seen = state(ours), version(ours, 2)

    with Catalogue.open(ours) as catalogue:
        report = import_catalogue(catalogue, older)
    assert report.statuses_changed == 0
    (conflict,) = report.conflicts
    assert re.fullmatch(
        r"tiny 0\.2: 'alice's idea' is accepted in the file but alice made it proposed here "
        r"at \S+, after that decision \(\S+\): kept ours",
        conflict,
    )
    assert state(ours) == before  # still proposed, no entry added
    assert version(ours, 2) == seen


def test_an_older_unseen_decision_does_not_overwrite_a_newer_one(
    ours_and_theirs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    ours, theirs = ours_and_theirs
    monkeypatch.setattr(labels, "utc_now", lambda: "2030-01-01T00:00:00+00:00")
    set_status(theirs, "bob", 0, "fires on token 0", LabelStatus.ACCEPTED)
    monkeypatch.setattr(labels, "utc_now", lambda: "2030-01-02T00:00:00+00:00")
    set_status(ours, "alice", 0, "fires on token 0", LabelStatus.ACCEPTED)
    set_status(ours, "alice", 0, "fires on token 0", LabelStatus.PROPOSED)  # reopened later

    report = merge(ours, theirs, tmp_path)
    assert report.statuses_changed == 0
    assert len(report.conflicts) == 1 and "'fires on token 0'" in report.conflicts[0]
    merged = state(ours)
    assert merged["statuses"][(0, 0, "gpt-test", "fires on token 0")] == "proposed"
    # bob's accept is kept in the history, and an entry after it says it did not stand here.
    assert [(a, who) for a, who, *_ in merged["history"][(0, 0)][-2:]] == [
        ("accept", "bob"),
        ("reopen", "import"),
    ]
    assert merged["history"][(0, 0)][-1][4][1] == "proposed"


def test_a_status_taken_from_a_file_is_in_history_and_moves_the_version(
    ours_and_theirs, tmp_path: Path
):
    ours, theirs = ours_and_theirs
    set_status(theirs, "bob", 0, "fires on token 0", LabelStatus.ACCEPTED)
    seen = version(ours, 0)

    report = merge(ours, theirs, tmp_path)
    assert report.statuses_changed == 1
    merged = state(ours)
    assert merged["statuses"][(0, 0, "gpt-test", "fires on token 0")] == "accepted"
    last = merged["history"][(0, 0)][-1]
    assert (last[0], last[1], last[4][1]) == ("accept", "bob", "accepted")
    assert version(ours, 0) != seen
    with Catalogue.open(ours) as catalogue:
        ref = catalogue.neuron_ref("tiny", 0, 0)
        (label,) = [e for e in catalogue.explanations_of(ref.id) if e.text == "fires on token 0"]
        assert label.id is not None
        with pytest.raises(labels.StaleLabel, match="bob accept"):
            labels.set_status(
                catalogue,
                ref,
                label.id,
                LabelStatus.REJECTED,
                annotator="carol",
                expected_version=seen,
            )
