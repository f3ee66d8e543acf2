"""The label state the catalogue keeps per neuron (`neurons.label_state`, `shown_state`) and
its score tally always equal what they are derived from, after every kind of label change."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue, labels
from labeller.catalogue.browse import STATUS_RANK, NeuronStatus
from labeller.catalogue.labels import Review
from labeller.explain.baseline import BaselineExplainer, BaselineSimulator
from labeller.explain.service import explain_neurons, score_neurons
from labeller.records import LabelStatus, PredictionKind, Score, Split


@pytest.fixture(scope="module")
def scanned_db(tmp_path_factory, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=300)
    path = tmp_path_factory.mktemp("state") / "c.db"
    return scanned_catalogue(path, tiny_model, params, batch_size=4)


@pytest.fixture()
def catalogue(scanned_db, tmp_path):
    copy = tmp_path / "c.db"
    copy.write_bytes(scanned_db.read_bytes())
    with Catalogue.open(copy) as opened:
        yield opened


def _derived_state(statuses: list[str]) -> NeuronStatus:
    """The neuron's workflow state, from its labels' statuses (the definition, in Python)."""
    for status, state in (
        (LabelStatus.ACCEPTED, NeuronStatus.ACCEPTED),
        (LabelStatus.NEEDS_REVIEW, NeuronStatus.NEEDS_REVIEW),
        (LabelStatus.PROPOSED, NeuronStatus.PROPOSED),
    ):
        if status.value in statuses:
            return state
    return NeuronStatus.REJECTED if statuses else NeuronStatus.UNLABELLED


def assert_kept(catalogue: Catalogue) -> None:
    db = catalogue.db
    ids = [int(r[0]) for r in db.execute("select id from neurons")]
    label_of = catalogue.label_ids(ids)
    for neuron_id, stored, shown in db.execute(
        "select id, label_state, shown_state from neurons"
    ).fetchall():
        statuses = [
            str(r[0])
            for r in db.execute("select status from explanations where neuron_id = ?", [neuron_id])
        ]
        state = _derived_state(statuses)
        label = label_of[neuron_id]
        label_status = (
            None
            if label is None
            else db.execute("select status from explanations where id = ?", [label]).fetchone()[0]
        )
        expected_shown = NeuronStatus(label_status) if label_status else state
        assert (stored, shown) == (STATUS_RANK[state], STATUS_RANK[expected_shown]), neuron_id
    tally = {
        tuple(r[:5]): (r[5], r[6])
        for r in db.execute("select * from score_tally where n != 0 or scored != 0")
    }
    counted = {
        tuple(r[:5]): (r[5], r[6])
        for r in db.execute(
            """select n.model_id, s.split, s.method, coalesce(s.prediction, ''),
            coalesce(s.simulator, ''), count(*), sum(s.score is not null)
            from scores s join explanations e on e.id = s.explanation_id
            join neurons n on n.id = e.neuron_id group by 1, 2, 3, 4, 5"""
        )
    }
    assert tally == counted


def test_the_kept_state_follows_every_kind_of_label_change(catalogue):
    assert_kept(catalogue)  # a scan: every neuron unlabelled
    refs = catalogue.neuron_refs(None, [0], None)
    asyncio.run(explain_neurons(catalogue, refs[:6], BaselineExplainer()))
    assert_kept(catalogue)  # explainers' labels
    asyncio.run(score_neurons(catalogue, refs[:6], BaselineSimulator()))
    assert_kept(catalogue)  # scores
    one, two, three = refs[0], refs[1], refs[2]

    def act(step, ref, *args, **kwargs):
        step(catalogue, ref, *args, annotator="ann", expected_version=None, **kwargs)
        assert_kept(catalogue)

    def first(ref):
        return catalogue.explanations_of(ref.id)[0].id

    act(labels.write_label, one, "a person's idea")
    act(labels.set_status, one, first(one), LabelStatus.ACCEPTED)
    act(labels.write_label, one, "a better idea", status=LabelStatus.ACCEPTED)  # demotes
    mine = catalogue.explanations_of(one.id)[-1].id
    act(labels.review, one, mine, Review.DISPUTE)  # to needs_review
    act(labels.set_status, one, mine, LabelStatus.PROPOSED)  # reopened
    act(labels.undo, one)
    act(labels.set_status, two, first(two), LabelStatus.REJECTED)  # rejected only
    act(labels.set_status, two, first(two), LabelStatus.WITHDRAWN)
    act(labels.write_label, three, "to check", status=LabelStatus.NEEDS_REVIEW)
    act(labels.set_status, one, first(one), LabelStatus.ACCEPTED)
    act(labels.review, one, first(one), Review.CONFIRM)
    # Another explainer's candidates, one chosen as best: the others cannot be the label.
    for text in ("first try", "second try"):
        catalogue.add_explanation(
            three, text, source="llm-x", prompt_version="v", producer_model=None
        )
    assert_kept(catalogue)
    tries = [e for e in catalogue.explanations_of(three.id) if e.source == "llm-x"]
    for explanation, value in zip(tries, (0.1, 0.9), strict=True):
        catalogue.save_scores(
            explanation.id,
            [
                Score(
                    method=method,
                    split=split,
                    score=value,
                    simulator="llm-x",
                    prompt_version="v",
                    prediction=PredictionKind.INTEGER,
                )
                for method in ("top_and_random",)
                for split in (Split.CALIBRATION, Split.VALID)
            ],
        )
    assert_kept(catalogue)
    catalogue.mark_best(three.id, "llm-x", "llm-x")
    assert_kept(catalogue)
    act(labels.set_status, three, tries[1].id, LabelStatus.NEEDS_REVIEW)  # the best one
    # Scores replaced, and rows deleted outright (no labeller command does): still kept.
    catalogue.save_scores(
        tries[0].id,
        [
            Score(
                method="top_and_random",
                split=Split.VALID,
                score=None,
                simulator="llm-x",
                prompt_version="v",
                prediction=PredictionKind.INTEGER,
            )
        ],
    )
    assert_kept(catalogue)
    with catalogue.db.atomic():
        catalogue.db.execute("delete from scores where explanation_id = ?", [tries[1].id])
        catalogue.db.execute("delete from explanations where id = ?", [tries[1].id])
    assert_kept(catalogue)
