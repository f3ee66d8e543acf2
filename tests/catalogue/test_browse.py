"""The neuron list's SQL: derived status and best label, sorting, filters, paging, the queue."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest
from builders import scan_params

from labeller.catalogue import Catalogue, labels
from labeller.catalogue.browse import (
    STATUS_RANK,
    ListSpec,
    NeuronStatus,
    SortKey,
    Stat,
    StatRange,
    Todo,
    example_token_ids,
    layer_maxes,
    list_page,
    list_place,
    list_step,
    neuron_page,
    neuron_summaries,
    parse_stat_ranges,
    scanned_layers,
)
from labeller.errors import UserError
from labeller.explain.baseline import BaselineExplainer, BaselineSimulator
from labeller.explain.service import explain_neurons, score_neurons
from labeller.records import LabelStatus, PredictionKind, Score, Split
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
    # The status column says the status of the label beside it, never another label's; a
    # neuron with a label that needs review, besides the one shown, is marked `to_review`.
    shown = {
        (r.layer, r.neuron): (r.label is not None, r.shown_status, r.to_review)
        for r in everything(catalogue)
    }
    assert {k: shown[k] for k in expected} == {
        (0, 1): (True, "accepted", False),
        (0, 2): (False, "rejected", False),
        (0, 3): (False, "needs_review", True),  # no label to show: the neuron's state says why
        (0, 4): (True, "proposed", False),
        (0, 5): (True, "proposed", True),  # the baseline's proposed label; "y" needs review
        (0, 6): (True, "accepted", True),
        (0, 7): (True, "proposed", False),
        (1, 7): (False, "unlabelled", False),
    }


def test_the_best_proposed_label_is_chosen_like_with_like_as_rank_does(catalogue):
    """Labels are compared by `rank`'s default simulator and prediction kind (here the
    baseline's rule scores, which every label has), never by whichever simulator scored one of
    them: a higher score from another simulator, or one of unknown kind, does not count."""
    ref = catalogue.neuron_ref(None, 0, 9)
    (baseline,) = catalogue.explanations_of(ref.id)
    other = catalogue.add_explanation(
        ref, "another idea", source="other", prompt_version="v", producer_model=None
    )
    assert other is not None
    primary = next(
        s.score for s in baseline.scores if s.method == "top_and_random" and s.split is Split.VALID
    )

    def score(simulator: str, value: float, prediction: PredictionKind | None) -> Score:
        return Score(
            method="top_and_random",
            split=Split.VALID,
            score=value,
            simulator=simulator,
            prompt_version="v",
            prediction=prediction,
        )

    catalogue.save_scores(
        other,
        [
            score("baseline", primary - 0.5, PredictionKind.RULE),
            score("detector-x", 0.99, PredictionKind.RULE),  # one score: not the default
        ],
    )
    catalogue.save_scores(baseline.id, [score("gpt-x", -0.9, None)])  # unknown kind: ignored
    row = everything(catalogue, layer=0)[9]
    assert (row.label, row.score) == (baseline.text, pytest.approx(primary))
    assert catalogue.neuron_view(None, 0, 9).label == baseline.id
    ranked = {r.neuron: (r.label, r.score) for r in catalogue.rank(None, layers=[0])}
    assert ranked[9] == (baseline.text, pytest.approx(primary))
    # An LLM's expected values, once there are any, are what labels are compared by.
    catalogue.save_scores(other, [score("gpt-x", 0.2, PredictionKind.EXPECTED_VALUE)])
    row = everything(catalogue, layer=0)[9]
    assert (row.label, row.score) == ("another idea", pytest.approx(0.2))
    assert catalogue.rank(None, layers=[0])[0].label == "another idea"


def test_the_status_sort_orders_by_the_status_shown(catalogue):
    """Neuron 0.5 has a proposed label shown and another needing review: it sorts with the
    proposed ones (what its row says), while the status filter still finds it to review."""
    ref = catalogue.neuron_ref(None, 0, 5)
    labels.write_label(
        catalogue, ref, '"y"', status=LabelStatus.NEEDS_REVIEW, annotator="a",
        expected_version=None,
    )  # fmt: skip
    for descending in (False, True):
        rows = everything(catalogue, sort=SortKey.STATUS, descending=descending)
        ranks = [STATUS_RANK[NeuronStatus(r.shown_status)] for r in rows]
        assert ranks == sorted(ranks, reverse=descending)
    row = next(r for r in everything(catalogue) if (r.layer, r.neuron) == (0, 5))
    assert (row.shown_status, row.status) == ("proposed", NeuronStatus.NEEDS_REVIEW)
    reviewing = everything(catalogue, status=NeuronStatus.NEEDS_REVIEW)
    assert (0, 5) in {(r.layer, r.neuron) for r in reviewing}


@pytest.mark.parametrize("key", list(SortKey))
@pytest.mark.parametrize("descending", [False, True])
def test_sorting_is_done_in_sql_with_unknowns_last(catalogue, key, descending):
    rows = everything(catalogue, sort=key, descending=descending)
    assert len(rows) == 96
    attribute = {SortKey.COSINE: "cosine", SortKey.SKEW: "skewness"}.get(key, key.value)
    values = [getattr(r, attribute) for r in rows] if key is not SortKey.STATUS else None
    if key is SortKey.STATUS:
        values = [list(NeuronStatus).index(r.status) for r in rows]
    known = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
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


def _undefine(catalogue: Catalogue) -> set[tuple[int, int]]:
    """Neurons 0.0-0.3 lose their kurtosis (NULL, and the text NaN a constant neuron gets)."""
    with catalogue.db.atomic():
        catalogue.db.execute("update neurons set kurtosis = null where layer = 0 and neuron < 2")
        catalogue.db.execute(
            "update neurons set kurtosis = 'NaN' where layer = 0 and neuron between 2 and 3"
        )
    return {(0, 0), (0, 1), (0, 2), (0, 3)}


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("status", [None, NeuronStatus.PROPOSED])
def test_statistic_sorts_put_undefined_values_last_on_every_page(catalogue, descending, status):
    undefined = _undefine(catalogue)
    rows = everything(catalogue, sort=SortKey.KURTOSIS, descending=descending, status=status)
    values = [r.kurtosis for r in rows]
    cut = len([v for v in values if v is not None and not math.isnan(v)])
    assert values[:cut] == sorted(values[:cut], reverse=descending)
    assert {(r.layer, r.neuron) for r in rows[cut:]} == undefined
    pages = []
    for offset in range(0, len(rows), 7):  # pages that straddle the defined/undefined edge
        page, total = neuron_page(
            catalogue,
            None,
            sort=SortKey.KURTOSIS,
            descending=descending,
            status=status,
            offset=offset,
            limit=7,
        )
        assert total == len(rows)
        pages += page
    assert [(r.layer, r.neuron) for r in pages] == [(r.layer, r.neuron) for r in rows]


STAT_WALKS = [
    ListSpec(sort=SortKey.KURTOSIS),
    ListSpec(sort=SortKey.KURTOSIS, descending=True, layer=0),
    ListSpec(sort=SortKey.KURTOSIS, status=NeuronStatus.PROPOSED),
    ListSpec(sort=SortKey.KURTOSIS, todo=Todo.SCORE_BELOW, below=0.5, descending=True),
    ListSpec(sort=SortKey.COSINE, ranges=(StatRange(Stat.SKEW, 2.0, 3.0),)),
    ListSpec(sort=SortKey.KURTOSIS, descending=True, ranges=(StatRange(Stat.KURTOSIS, 5.0, 12.0),)),
    ListSpec(sort=SortKey.SCORE, ranges=(StatRange(Stat.COSINE, high=0.0),), descending=True),
    ListSpec(todo=Todo.NOT_ACCEPTED, ranges=(StatRange(Stat.KURTOSIS, low=0.0),)),
]


@pytest.mark.parametrize("spec", STAT_WALKS)
def test_a_walk_follows_statistic_sorts_and_ranges(catalogue, spec):
    """Neurons without the statistic (NULL, NaN) come last in a walk as on the list's pages."""
    _undefine(catalogue)
    listed = [(r.layer, r.neuron) for r in list_page(catalogue, None, spec, limit=1000)[0]]
    assert listed
    pages: list[tuple[int, int]] = []
    for offset in range(0, len(listed), 7):
        pages += [
            (r.layer, r.neuron) for r in list_page(catalogue, None, spec, offset=offset, limit=7)[0]
        ]
    assert pages == listed
    place = list_place(catalogue, None, spec, *listed[0])
    walked = [(place.layer, place.neuron)]
    while True:
        step, left = list_step(catalogue, None, spec, place)
        assert left == len(listed) - len(walked)
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


def test_filters_by_statistic_ranges(catalogue):
    undefined = _undefine(catalogue)
    rows = everything(catalogue)
    cut = sorted(r.kurtosis for r in rows if r.kurtosis is not None and not math.isnan(r.kurtosis))
    low = cut[len(cut) // 2]
    heavy = everything(catalogue, ranges=(StatRange(Stat.KURTOSIS, low=low),))
    assert heavy == [r for r in rows if (r.layer, r.neuron) not in undefined and r.kurtosis >= low]
    assert len(heavy) > 10
    both = everything(
        catalogue,
        ranges=(StatRange(Stat.KURTOSIS, low=low), StatRange(Stat.COSINE, high=0.0)),
        sort=SortKey.COSINE,
    )
    assert both == sorted(
        [r for r in heavy if r.cosine is not None and r.cosine <= 0.0],
        key=lambda r: (r.cosine, r.layer, r.neuron),
    )
    skewed = everything(catalogue, ranges=(StatRange(Stat.SKEW, -1.0, 1.0),), layer=1)
    assert skewed == [r for r in rows if r.layer == 1 and -1.0 <= r.skewness <= 1.0]


def test_statistic_ranges_are_typed_as_comparisons():
    assert parse_stat_ranges("kurt>10 cos<-0.3, skewness>=.5 cos=1e-1") == [
        StatRange(Stat.KURTOSIS, low=10.0),
        StatRange(Stat.COSINE, high=-0.3),
        StatRange(Stat.SKEW, low=0.5),
        StatRange(Stat.COSINE, low=0.1, high=0.1),
    ]
    assert parse_stat_ranges("  ") == []
    for bad in ("kurt", "mass>3", "kurt>3 and", "cos<x"):
        with pytest.raises(UserError):
            parse_stat_ranges(bad)
    assert StatRange(Stat.KURTOSIS, low=10.0).describe() == "kurtosis≥10"


def test_maxima_and_summaries_for_the_search(catalogue):
    rows = {(r.layer, r.neuron): r for r in everything(catalogue)}
    maxes = layer_maxes(catalogue, None)
    assert sorted(maxes) == [0, 1]
    assert all(len(values) == 48 for values in maxes.values())
    assert maxes[1][7] == pytest.approx(rows[(1, 7)].max)
    wanted = [(0, 3), (1, 40), (1, 40), (5, 1)]
    found = neuron_summaries(catalogue, None, wanted)
    assert found == {(0, 3): rows[(0, 3)], (1, 40): rows[(1, 40)]}


@pytest.mark.parametrize(
    ("kwargs", "index", "sorts"),
    [
        ({"sort": SortKey.KURTOSIS, "descending": True}, "idx_neurons_model_id_kurtosis", False),
        ({"sort": SortKey.COSINE}, "idx_neurons_model_id_w_in_w_out_cosine", False),
        ({"sort": SortKey.SKEW, "layer": 1}, "idx_neurons_model_id_layer_neuron", True),
    ],
)
def test_statistic_pages_are_read_through_an_index(catalogue, kwargs, index, sorts):
    """The page query of a statistic sort walks its index in order (a 307,200-neuron table is
    never sorted whole: seconds against tens of milliseconds); one layer's rows come through
    the layer index and only they are sorted."""
    statements: list[str] = []
    catalogue.db.conn.set_trace_callback(statements.append)
    try:
        neuron_page(catalogue, None, limit=5, **kwargs)
    finally:
        catalogue.db.conn.set_trace_callback(None)
    page = next(s for s in statements if "order by" in s and "limit" in s)
    plan = " ".join(str(row[-1]) for row in catalogue.db.execute(f"explain query plan {page}"))
    assert index in plan
    assert ("TEMP B-TREE" in plan) is sorts
