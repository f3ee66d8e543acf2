"""Labels by people: history, stale views, undo, and many writers at once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue, labels
from labeller.catalogue.labels import StaleLabel
from labeller.errors import UserError
from labeller.records import LabelStatus


@pytest.fixture(scope="module")
def labelled_db(tmp_path_factory, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=300)
    path = tmp_path_factory.mktemp("labels") / "c.db"
    return scanned_catalogue(path, tiny_model, params, batch_size=4)


@pytest.fixture()
def catalogue(labelled_db, tmp_path):
    copy = tmp_path / "c.db"
    copy.write_bytes(labelled_db.read_bytes())
    with Catalogue.open(copy) as opened:
        yield opened


def test_write_accept_and_history(catalogue):
    ref = catalogue.neuron_ref(None, 0, 1)
    assert catalogue.label_version(ref.id) == 0
    changes = labels.write_label(
        catalogue,
        ref,
        'fires on "def"',
        status=LabelStatus.ACCEPTED,
        annotator="alice",
        expected_version=0,
    )
    assert [c.action for c in changes] == ["write", "accept"]
    (explanation,) = catalogue.explanations_of(ref.id)
    assert (explanation.text, explanation.status, explanation.source, explanation.annotator) == (
        'fires on "def"',
        "accepted",
        "human",
        "alice",
    )
    other = labels.write_label(
        catalogue, ref, "function definitions", annotator="bob", expected_version=None
    )
    assert other[0].after.status is LabelStatus.PROPOSED
    labels.set_status(
        catalogue,
        ref,
        other[0].after.explanation_id,
        LabelStatus.ACCEPTED,
        annotator="bob",
        expected_version=None,
    )
    statuses = {e.text: e.status for e in catalogue.explanations_of(ref.id)}
    assert statuses == {'fires on "def"': "proposed", "function definitions": "accepted"}
    history = catalogue.history(ref)
    assert [(h.annotator, h.action) for h in history] == [
        ("alice", "write"),
        ("alice", "accept"),
        ("bob", "write"),
        ("bob", "demote"),
        ("bob", "accept"),
    ]
    assert history[3].before.status is LabelStatus.ACCEPTED
    assert history[3].after.status is LabelStatus.PROPOSED


def test_stale_view_is_refused_and_shows_the_newer_label(catalogue):
    ref = catalogue.neuron_ref(None, 1, 2)
    seen = catalogue.label_version(ref.id)
    labels.write_label(catalogue, ref, '"x" tokens', annotator="alice", expected_version=seen)
    with pytest.raises(StaleLabel, match='alice write "\\"x\\" tokens" \\(proposed\\)'):
        labels.write_label(catalogue, ref, "other", annotator="bob", expected_version=seen)
    assert [e.text for e in catalogue.explanations_of(ref.id)] == ['"x" tokens']


def test_undo_reverts_only_your_own_latest_change(catalogue):
    ref = catalogue.neuron_ref(None, 0, 7)
    written = labels.write_label(catalogue, ref, "commas", annotator="alice", expected_version=None)
    label_id = written[0].after.explanation_id
    labels.set_status(
        catalogue, ref, label_id, LabelStatus.REJECTED, annotator="alice", expected_version=None
    )
    (undo,) = labels.undo(catalogue, ref, annotator="alice", expected_version=None)
    assert undo.before.status is LabelStatus.REJECTED and undo.after.status is LabelStatus.PROPOSED
    labels.undo(catalogue, ref, annotator="alice", expected_version=None)
    assert catalogue.explanations_of(ref.id)[0].status == "withdrawn"
    with pytest.raises(Exception, match="nothing of bob's to undo"):
        labels.undo(catalogue, ref, annotator="bob", expected_version=None)
    assert len(catalogue.history(ref)) == 4


def test_undo_never_reverts_over_someone_elses_change(catalogue):
    """The TUI walk: alice wrote a label, bob accepted it; alice's undo used to withdraw bob's
    accepted label. Now it is refused, naming bob's change, and nothing moves."""
    ref = catalogue.neuron_ref(None, 0, 5)
    written = labels.write_label(catalogue, ref, "commas", annotator="alice", expected_version=None)
    label_id = written[0].after.explanation_id
    labels.set_status(
        catalogue, ref, label_id, LabelStatus.ACCEPTED, annotator="bob", expected_version=None
    )
    before = catalogue.history(ref)
    with pytest.raises(UserError) as refused:
        labels.undo(catalogue, ref, annotator="alice", expected_version=None)
    message = str(refused.value)
    assert 'bob accept "commas" (accepted) at ' in message
    assert 'your latest change on L0 N5 (alice write "commas" (proposed)' in message
    assert catalogue.history(ref) == before
    assert catalogue.explanations_of(ref.id)[0].status is LabelStatus.ACCEPTED
    # bob's own latest change is his to undo: back to proposed.
    (undo,) = labels.undo(catalogue, ref, annotator="bob", expected_version=None)
    assert undo.after.status is LabelStatus.PROPOSED


def test_undo_of_an_accept_restores_the_label_it_demoted(catalogue):
    ref = catalogue.neuron_ref(None, 0, 6)
    first = labels.write_label(
        catalogue, ref, "first", status=LabelStatus.ACCEPTED, annotator="bob", expected_version=None
    )
    second = labels.write_label(catalogue, ref, "second", annotator="alice", expected_version=None)
    labels.set_status(
        catalogue,
        ref,
        second[0].after.explanation_id,
        LabelStatus.ACCEPTED,
        annotator="alice",
        expected_version=None,
    )
    undone = labels.undo(catalogue, ref, annotator="alice", expected_version=None)
    assert [(u.after.text, u.after.status) for u in undone] == [
        ("second", LabelStatus.PROPOSED),
        ("first", LabelStatus.ACCEPTED),
    ]
    assert first[0].after.explanation_id == catalogue.label_id(ref.id)


def test_history_is_append_only(catalogue):
    ref = catalogue.neuron_ref(None, 0, 3)
    labels.write_label(catalogue, ref, "y", annotator="alice", expected_version=None)
    with pytest.raises(Exception, match="append-only"):
        catalogue.db.execute("update label_history set annotator = 'mallory'")
    with pytest.raises(Exception, match="append-only"):
        catalogue.db.execute("delete from label_history")


def _writer(path: str, worker: int, writes: int, neurons: list[int], queue) -> None:
    done = stale = 0
    with Catalogue.open(path) as catalogue:
        for i in range(writes):
            ref = catalogue.neuron_ref(None, 0, neurons[i % len(neurons)])
            while True:
                seen = catalogue.label_version(ref.id)
                try:
                    labels.write_label(
                        catalogue,
                        ref,
                        f"label {worker}-{i}",
                        annotator=f"w{worker}",
                        expected_version=seen,
                    )
                    done += 1
                    break
                except StaleLabel:
                    stale += 1
    queue.put((worker, done, stale))


@pytest.mark.slow
def test_many_writers_lose_nothing(catalogue):
    processes, writes, neurons = 4, 15, [0, 1, 2]
    queue = multiprocessing.get_context("spawn").Queue()
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_writer, args=(str(catalogue.path), w, writes, neurons, queue))
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
        assert worker.exitcode == 0
    results = [queue.get(timeout=10) for _ in workers]
    assert sum(done for _, done, _ in results) == processes * writes
    entries = [h for n in neurons for h in catalogue.history(catalogue.neuron_ref(None, 0, n))]
    writes_seen = {h.after.text for h in entries if h.action == "write"}
    assert writes_seen == {f"label {w}-{i}" for w in range(processes) for i in range(writes)}
    assert catalogue.db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_an_edit_records_the_label_it_came_from(catalogue):
    ref = catalogue.neuron_ref(None, 0, 1)
    (first,) = labels.write_label(
        catalogue, ref, 'fires on "def"', annotator="alice", expected_version=None
    )
    source = first.after.explanation_id
    edit = labels.write_label(
        catalogue,
        ref,
        'fires on "def" and "class"',
        status=LabelStatus.ACCEPTED,
        annotator="bob",
        expected_version=None,
        edited_from=source,
    )
    assert [(e.action, e.edited_from) for e in edit] == [("write", source), ("accept", None)]
    assert catalogue.history(ref)[-2].edited_from == source  # read back from the catalogue
    # An edit to a text the neuron already has: its status change records the edit, and the
    # demotion it causes does not.
    again = labels.write_label(
        catalogue,
        ref,
        'fires on "def"',
        status=LabelStatus.ACCEPTED,
        annotator="alice",
        expected_version=None,
        edited_from=edit[0].after.explanation_id,
    )
    assert [(e.action, e.edited_from) for e in again] == [
        ("demote", None),
        ("accept", edit[0].after.explanation_id),
    ]
    other = catalogue.neuron_ref(None, 0, 2)
    with pytest.raises(UserError, match="not a label of neuron"):
        labels.write_label(
            catalogue, other, "x", annotator="alice", expected_version=None, edited_from=source
        )
