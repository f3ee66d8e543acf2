"""`Scorer.score`, which the neuron page reads from records, picks the score the list and `rank`
read in SQL (`label_state.score_of`): same simulator, kind and split, newest with a value, the
last stored among equally new ones."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue
from labeller.catalogue.browse import neuron_summaries
from labeller.records import PredictionKind, Score, ScoreMethod, Split

SAME_TIME = "2026-01-01T00:00:00+00:00"


@pytest.fixture()
def catalogue(tmp_path_factory, tiny_model, tiny_model_dir, tiny_corpus, tmp_path: Path):
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=300, layers=[0])
    path = scanned_catalogue(tmp_path / "c.db", tiny_model, params, batch_size=4)
    with Catalogue.open(path) as opened:
        yield opened


def score(value: float | None, simulator: str, version: str, **changes: object) -> Score:
    values: dict[str, object] = {
        "method": ScoreMethod.TOP_AND_RANDOM,
        "split": Split.VALID,
        "score": value,
        "simulator": simulator,
        "prompt_version": version,
        "prediction": PredictionKind.EXPECTED_VALUE,
        "created_at": SAME_TIME,
    }
    values.update(changes)
    return Score.model_validate(values)


def test_the_page_and_the_list_pick_the_same_score(catalogue) -> None:
    ref = catalogue.neuron_ref(None, 0, 0)
    label = catalogue.add_explanation(
        ref, "fires on x", source="llm", prompt_version="p", producer_model="m"
    )
    assert label is not None
    catalogue.save_scores(
        label,
        [
            score(0.41, "llm-a", "v1"),
            score(0.42, "llm-a", "v2"),  # as new as v1, stored after it: this one
            score(None, "llm-a", "v3"),  # no value: never the label's score
            score(0.90, "llm-a", "v4", created_at="2025-01-01T00:00:00+00:00"),  # older
            score(0.99, "llm-a", "v5", split=Split.TEST),
            score(0.98, "llm-a", "v6", prediction=PredictionKind.INTEGER),
            score(0.97, "llm-a", "v7", method=ScoreMethod.TOP_ONLY),
            score(0.96, "llm-b", "v1", created_at="2027-01-01T00:00:00+00:00"),  # newest, other
        ],
    )
    catalogue.save_scores(
        catalogue.add_explanation(
            catalogue.neuron_ref(None, 0, 1),
            "fires on y",
            source="llm",
            prompt_version="p",
            producer_model="m",
        )
        or 0,
        [score(0.5, "llm-a", "v1")],  # llm-a has the most scores: the model's scorer
    )
    scorer = catalogue.label_scorer(None)
    assert (scorer.simulator, scorer.prediction) == ("llm-a", PredictionKind.EXPECTED_VALUE)
    (explanation,) = catalogue.neuron_view(None, 0, 0).explanations
    picked = scorer.score(explanation)
    listed = neuron_summaries(catalogue, None, [(0, 0)])[(0, 0)]
    assert picked is not None and picked.score == listed.score == 0.42
    assert picked.prompt_version == "v2"
    only_top = scorer.score(explanation, ScoreMethod.TOP_ONLY)
    assert only_top is not None and only_top.score == 0.97
