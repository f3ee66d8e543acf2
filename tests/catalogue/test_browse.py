"""The neuron list's SQL: derived status and best label, sorting, filters, paging, the queue."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from builders import scan_params

from labeller.catalogue import Catalogue, labels
from labeller.catalogue.browse import (
    ListSpec,
    NeuronStatus,
    SortKey,
    Todo,
    example_token_ids,
    list_page,
    list_place,
    list_step,
    neuron_page,
    scanned_layers,
)
from labeller.explain.baseline import BaselineExplainer, BaselineSimulator
from labeller.explain.service import explain_neurons, score_neurons
from labeller.records import LabelStatus, Score, Split
from labeller.scan.runner import run_scan


@pytest.fixture(scope="module")
def browse_db(tmp_path_factory, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    """Both layers scanned; layer 0 explained and scored by the baseline, layer 1 unlabelled."""
    path = tmp_path_factory.mktemp("browse") / "c.db"
    with Catalogue.open(path, create=True) as catalogue:
        run_scan(
            catalogue,
            tiny_model,
            scan_params(tiny_model_dir, tiny_corpus, tokens=300),
            batch_size=4,
        )
        refs = catalogue.neuron_refs(None, [0], None)
        asyncio.run(explain_neurons(catalogue, refs, BaselineExplainer()))
        asyncio.run(score_neurons(catalogue, refs, BaselineSimulator()))
    return path


@pytest.fixture()
def catalogue(browse_db, tmp_path):
    copy = tmp_path / "c.db"
    copy.write_bytes(browse_db.read_bytes())
    with Catalogue.open(copy) as opened:
        yield opened


def everything(catalogue: Catalogue, **kwargs: object):
    rows, total = neuron_page(catalogue, None, limit=1000, **kwargs)  # type: ignore[arg-type]
    assert total == len(rows)
    return rows


def test_every_scanned_neuron_is_listed_with_its_label_and_score(catalogue):
    rows = everything(catalogue)
    assert len(rows) == 96
    expected = [(layer, n) for layer in (0, 1) for n in range(48)]
    assert [(r.layer, r.neuron) for r in rows] == expected
    layer0 = [r for r in rows if r.layer == 0]
    assert all(r.status is NeuronStatus.PROPOSED and r.label for r in layer0)
    assert all(r.status is NeuronStatus.UNLABELLED and r.label is None for r in rows[48:])
    view = catalogue.neuron_view(None, 0, 3)
    (explanation,) = view.explanations
    (score,) = [s for s in explanation.scores if s.method == "top_and_random"]
    assert (rows[3].label, rows[3].score) == (explanation.text, score.score)
    assert rows[3].max == pytest.approx(view.stats.max)
    assert rows[3].density == pytest.approx(view.stats.density)
    assert scanned_layers(catalogue, None) == [0, 1]


def test_status_is_derived_from_all_the_neurons_labels(catalogue):
    def ref(n):
        return catalogue.neuron_ref(None, 0, n)

    def first_id(n):
        return catalogue.explanations_of(ref(n).id)[0].id

    def set_status(n, status):
        labels.set_status(
            catalogue, ref(n), first_id(n), status, annotator="a", expected_version=None
        )

    def write(n, text, status=LabelStatus.PROPOSED):
        labels.write_label(
            catalogue, ref(n), text, status=status, annotator="a", expected_version=None
        )

    set_status(1, LabelStatus.ACCEPTED)
    set_status(2, LabelStatus.REJECTED)
    set_status(3, LabelStatus.NEEDS_REVIEW)
    # A rejected candidate beside a proposed one leaves the neuron proposed.
    write(4, '"x" tokens')
    set_status(4, LabelStatus.REJECTED)
    # Needs review outranks proposed; accepted outranks both.
    write(5, '"y"', LabelStatus.NEEDS_REVIEW)
    write(6, '"z"', LabelStatus.NEEDS_REVIEW)
    write(6, '"w"', LabelStatus.ACCEPTED)
    by_neuron = {(r.layer, r.neuron): r.status for r in everything(catalogue)}
    expected = {
        (0, 1): NeuronStatus.ACCEPTED,
        (0, 2): NeuronStatus.REJECTED,
        (0, 3): NeuronStatus.NEEDS_REVIEW,
        (0, 4): NeuronStatus.PROPOSED,
        (0, 5): NeuronStatus.NEEDS_REVIEW,
        (0, 6): NeuronStatus.ACCEPTED,
        (0, 7): NeuronStatus.PROPOSED,
        (1, 7): NeuronStatus.UNLABELLED,
    }
    assert {k: by_neuron[k] for k in expected} == expected
    for status in NeuronStatus:
        filtered = everything(catalogue, status=status)
        assert filtered == [r for r in everything(catalogue) if r.status is status]
    # The accepted label is the one a neuron is known by, whatever the scores say.
    row6 = next(r for r in everything(catalogue) if (r.layer, r.neuron) == (0, 6))
    assert row6.label == '"w"'


def test_an_llm_score_is_preferred_to_the_baseline(catalogue):
    ref = catalogue.neuron_ref(None, 0, 9)
    (explanation,) = catalogue.explanations_of(ref.id)
    catalogue.save_scores(
        explanation.id,
        [
            Score(
                method="top_and_random",
                split=Split.VALID,
                score=0.123,
                simulator="gpt-x",
                prompt_version="v",
            )
        ],
    )
    row = everything(catalogue, layer=0)[9]
    assert row.score == pytest.approx(0.123)


@pytest.mark.parametrize("key", list(SortKey))
@pytest.mark.parametrize("descending", [False, True])
def test_sorting_is_done_in_sql_with_unknowns_last(catalogue, key, descending):
    rows = everything(catalogue, sort=key, descending=descending)
    assert len(rows) == 96
    values = [getattr(r, key.value) for r in rows] if key is not SortKey.STATUS else None
    if key is SortKey.STATUS:
        values = [list(NeuronStatus).index(r.status) for r in rows]
    known = [v for v in values if v is not None]
    assert values[: len(known)] == known, "unknown labels and scores sort last"
    assert known == sorted(known, reverse=descending)


def test_filters_by_layer_text_and_score_range(catalogue):
    assert {r.layer for r in everything(catalogue, layer=1)} == {1}
    some = everything(catalogue, layer=0)[5]
    word = some.label.split('"')[1]
    matches = everything(catalogue, text=word)
    assert some in matches
    assert all(word.strip().lower() in (r.label or "").lower() for r in matches)
    # LIKE wildcards in the search text are literal.
    assert everything(catalogue, text="%") == []
    scored = [r for r in everything(catalogue) if r.score is not None]
    low, high = sorted(r.score for r in scored)[len(scored) // 4], 0.9
    inside = everything(catalogue, min_score=low, max_score=high)
    assert inside == [r for r in scored if low <= r.score <= high]
    assert everything(catalogue, min_score=low, layer=1) == []


def test_pages_cover_the_list_exactly_once(catalogue):
    seen = []
    for offset in range(0, 96, 25):
        rows, total = neuron_page(catalogue, None, sort=SortKey.SCORE, offset=offset, limit=25)
        assert total == 96
        seen += rows
    assert seen == everything(catalogue, sort=SortKey.SCORE)
    rows, total = neuron_page(catalogue, None, status=NeuronStatus.PROPOSED, offset=500, limit=25)
    assert (rows, total) == ([], 48)


WALKED_LISTS = [
    ListSpec(),
    ListSpec(sort=SortKey.SCORE, descending=True),
    ListSpec(sort=SortKey.SCORE),
    ListSpec(sort=SortKey.LABEL, layer=0),
    ListSpec(sort=SortKey.STATUS, descending=True),
    ListSpec(sort=SortKey.MAX, descending=True, todo=Todo.NOT_ACCEPTED),
    ListSpec(sort=SortKey.DENSITY, text="fires"),
    ListSpec(sort=SortKey.NEURON, descending=True, todo=Todo.UNLABELLED),
    ListSpec(sort=SortKey.SCORE, todo=Todo.SCORE_BELOW, below=0.5),
]


@pytest.mark.parametrize("spec", WALKED_LISTS)
def test_a_walk_steps_through_the_list_in_its_order_both_ways(catalogue, spec):
    listed = [(r.layer, r.neuron) for r in list_page(catalogue, None, spec, limit=1000)[0]]
    assert listed
    place = list_place(catalogue, None, spec, *listed[0])
    walked = [(place.layer, place.neuron)]
    while True:
        step, left = list_step(catalogue, None, spec, place)
        assert left == len(listed) - len(walked)
        quick, uncounted = list_step(catalogue, None, spec, place, count=False)
        assert quick == step and uncounted in (left, None)
        if step is None:
            break
        walked.append((step.layer, step.neuron))
        place = step
    assert walked == listed
    back = [(place.layer, place.neuron)]
    while (step := list_step(catalogue, None, spec, place, backward=True)[0]) is not None:
        back.append((step.layer, step.neuron))
        place = step
    assert back == listed[::-1]


def test_queues_walk_what_still_needs_a_person(catalogue):
    rows = everything(catalogue)
    unlabelled = [(r.layer, r.neuron) for r in rows if r.status is NeuronStatus.UNLABELLED]
    spec = ListSpec(todo=Todo.UNLABELLED)
    assert [(r.layer, r.neuron) for r in list_page(catalogue, None, spec)[0]] == unlabelled
    below = 0.5
    weak = [(r.layer, r.neuron) for r in rows if r.score is None or r.score < below]
    spec = ListSpec(todo=Todo.SCORE_BELOW, below=below)
    assert [(r.layer, r.neuron) for r in list_page(catalogue, None, spec)[0]] == weak
    # An accepted neuron has had its human: it leaves the queue, and a walk standing on it
    # still steps on to the next one.
    first = next(r for r in rows if (r.layer, r.neuron) == weak[0])
    place = list_place(catalogue, None, spec, *weak[0])
    labels.set_status(
        catalogue,
        catalogue.neuron_ref(None, *weak[0]),
        first.explanation_id,
        LabelStatus.ACCEPTED,
        annotator="a",
        expected_version=None,
    )
    assert [(r.layer, r.neuron) for r in list_page(catalogue, None, spec)[0]] == weak[1:]
    step, left = list_step(catalogue, None, spec, place)
    assert step is not None and (step.layer, step.neuron) == weak[1] and left == len(weak) - 1
    accepted = ListSpec(todo=Todo.NOT_ACCEPTED)
    assert list_page(catalogue, None, accepted)[1] == 95


def test_example_token_ids_are_the_stored_window(catalogue, tiny_model):
    view = catalogue.neuron_view(None, 0, 2)
    example = view.top_examples[1]
    ids = example_token_ids(catalogue, None, 0, 2, "top", example.rank)
    assert tiny_model.token_strings(ids) == example.tokens
    with pytest.raises(Exception, match="no top example 99"):
        example_token_ids(catalogue, None, 0, 2, "top", 99)


def test_best_label_score_is_the_valid_top_and_random_one(catalogue):
    rows = everything(catalogue, layer=0)
    for row in rows[:5]:
        (explanation,) = catalogue.explanations_of(catalogue.neuron_ref(None, 0, row.neuron).id)
        primary = [
            s
            for s in explanation.scores
            if s.method == "top_and_random" and s.split.value == "valid"
        ]
        expected = primary[0].score if primary else None
        assert (row.score is None and expected is None) or math.isclose(row.score, expected)
