"""The interpretability-illusion measure on hand-made neurons: which subsets differ, and by
how much, from their top windows and from a label's per-subset scores."""

from __future__ import annotations

import pytest

from labeller.records import (
    Example,
    ExampleKind,
    Explanation,
    Histogram,
    LabelStatus,
    NeuronStats,
    NeuronView,
    Score,
    ScoreMethod,
    ScoreWindows,
    Split,
)
from labeller.subsets import divergence, illusion, peak_token, subset_summaries


def window(subset: str, peak: str, top: float, rank: int = 0) -> Example:
    tokens = ["a", f" {peak}", "b"]
    return Example(
        kind=ExampleKind.SUBSET_TOP,
        rank=rank,
        split=Split.TRAIN,
        tokens=tokens,
        activations=[0.0, top, 0.1],
        max_index=1,
        max_activation=top,
        document=f"{subset}:{rank}",
        offset=0,
        subset=subset,
    )


def view(examples: list[Example], scores: dict[str, float] | None = None) -> NeuronView:
    label = Explanation(
        id=1,
        text="fires on x",
        source="human",
        status=LabelStatus.ACCEPTED,
        scores=[
            Score(
                method=ScoreMethod.SUBSET_TOP,
                split=Split.VALID,
                score=r,
                windows=ScoreWindows.SUBSETS,
                subset=name,
            )
            for name, r in (scores or {}).items()
        ],
    )
    stats = NeuronStats(
        max=1, min=0, mean=0, std=1, density=0.5, skewness=0, kurtosis=0, tokens=10,
        histogram=Histogram(low=0, high=1, counts=[1]),
    )  # fmt: skip
    return NeuronView(
        model="m", layer=0, neuron=0, scan_id=1, stats=stats, weights=None, top_examples=[],
        random_examples=[], subset_examples=examples, explanations=[label],
        label=1 if scores is not None else None,
    )  # fmt: skip


def test_same_tokens_everywhere_is_no_illusion():
    found = illusion(view([window("code", "(", 2.0), window("prose", "(", 1.9)]))
    assert found is not None
    assert found.example_divergence == 0.0 and found.measure == 0.0


def test_strong_on_both_on_different_tokens_is_an_illusion():
    found = illusion(
        view(
            [
                window("code", "def", 2.0),
                window("prose", "the", 1.5, 0),
                window("prose", "of", 1.0, 1),
            ]
        )
    )
    assert found is not None
    assert found.example_divergence == pytest.approx(0.75)  # strength 1.5/2, overlap 0
    assert found.pair == ["code", "prose"]
    assert found.score_gap is None


def test_firing_on_one_subset_only_scores_low():
    found = illusion(view([window("code", "def", 4.0), window("prose", "the", 0.2)]))
    assert found is not None and found.measure == pytest.approx(0.05)


def test_partial_overlap_and_the_most_different_pair():
    assert divergence((1.0, {"a", "b"}), (1.0, {"b", "c"})) == pytest.approx(2 / 3)
    assert divergence((0.0, {"a"}), (-1.0, {"b"})) == 0.0  # neither fires
    found = illusion(view([window("a", "x", 1.0), window("b", "x", 1.0), window("c", "y", 1.0)]))
    assert found is not None and found.pair == ["a", "c"] and found.measure == 1.0


def test_label_score_gap_counts_when_larger():
    examples = [window("code", "x", 1.0), window("prose", "x", 1.0)]
    found = illusion(view(examples, {"code": 0.9, "prose": 0.3}))
    assert found is not None
    assert found.example_divergence == 0.0
    assert found.score_gap == pytest.approx(0.6) and found.measure == pytest.approx(0.6)
    assert found.pair == ["code", "prose"]
    wide = illusion(view(examples, {"code": 0.8, "prose": -0.7}))
    assert wide is not None and wide.measure == 1.0  # the gap is clipped to 1


def test_a_score_gap_where_the_neuron_hardly_fires_counts_little():
    examples = [window("code", "x", 1.0), window("prose", "x", 0.1)]
    found = illusion(view(examples, {"code": 0.9, "prose": 0.0}))
    assert found is not None and found.score_gap == pytest.approx(0.9)
    assert found.measure == pytest.approx(0.1 * 0.9)


def test_one_subset_has_no_measure():
    assert illusion(view([window("code", "x", 1.0)])) is None
    assert illusion(view([])) is None


def test_summaries_per_subset():
    examples = [
        window("code", "def", 2.0, 0),
        window("code", "def", 1.5, 1),
        window("code", "class", 1.0, 2),
        window("prose", "the", 0.5, 0),
    ]
    summaries = subset_summaries(view(examples, {"prose": 0.4}))
    assert [(s.subset, s.windows, s.max_activation, s.peak_tokens, s.score) for s in summaries] == [
        ("code", 3, 2.0, ["def", "class"], None),
        ("prose", 1, 0.5, ["the"], 0.4),
    ]


def test_peak_token_strips_space_but_keeps_all_space_tokens():
    example = window("code", "x", 1.0)
    assert peak_token(example) == "x"
    spaces = example.model_copy(update={"tokens": ["a", "   ", "b"]})
    assert peak_token(spaces) == "'   '"
