"""The openai layout, and the --status / --min-score / --layers filters."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from exchange_factory import build_catalogue
from exchange_helpers import export_text

from labeller.catalogue import Catalogue
from labeller.errors import UserError
from labeller.exchange import export_catalogue
from labeller.exchange.openai_format import reference_valid_slices
from labeller.explain.scoring import correlation_score
from labeller.explain.service import build_scores
from labeller.records import PredictionKind, Split, band_edges

NEURON_RECORD_FIELDS = {
    "dataclass_name",
    "neuron_id",
    "random_sample",
    "random_sample_by_quantile",
    "quantile_boundaries",
    "mean",
    "variance",
    "skewness",
    "kurtosis",
    "most_positive_activation_records",
}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_catalogue(tmp_path_factory.mktemp("formats") / "c.db")


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def objects(value: Any) -> list[dict[str, Any]]:
    """Every JSON object nested anywhere in `value`."""
    if isinstance(value, dict):
        return [value, *(o for v in value.values() for o in objects(v))]
    if isinstance(value, list):
        return [o for v in value for o in objects(v)]
    return []


def test_openai_records_carry_dataclass_name_everywhere(db: Path):
    records = lines(export_text(db, "openai"))
    assert all("dataclass_name" in o for record in records for o in objects(record))
    neuron_records = [r for r in records if r["dataclass_name"] == "NeuronRecord"]
    results = [r for r in records if r["dataclass_name"] == "NeuronSimulationResults"]
    assert len(neuron_records) == 12
    assert [(r["neuron_id"]["layer_index"], r["neuron_id"]["neuron_index"]) for r in results] == [
        (0, 0),
        (0, 1),
        (0, 2),
    ]
    first = neuron_records[0]
    assert set(first) == NEURON_RECORD_FIELDS
    assert first["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 0, "neuron_index": 0}
    assert len(first["most_positive_activation_records"]) == 4 and len(first["random_sample"]) == 3
    record = first["most_positive_activation_records"][0]
    assert set(record) == {"dataclass_name", "tokens", "activations"}
    assert len(record["tokens"]) == len(record["activations"])
    with Catalogue.open(db) as catalogue:
        view = catalogue.neuron_view("tiny", 0, 0)
    # one list of records per band, band i bounded by boundaries i and i + 1
    bands, boundaries = first["random_sample_by_quantile"], first["quantile_boundaries"]
    assert boundaries == band_edges(view.stats.max) and len(bands) == len(boundaries) - 1
    assert [[r["activations"] for r in band] for band in bands] == [
        [e.activations for e in view.quantile_examples if e.band == i] for i in range(len(bands))
    ]
    for i, band in enumerate(bands):
        for r in band:
            assert boundaries[i] <= max(r["activations"]) <= boundaries[i + 1]
    assert first["variance"] == pytest.approx(view.stats.std**2)
    assert record["activations"] == view.top_examples[0].activations

    scored = results[0]["scored_explanations"]
    assert {s["explanation"] for s in scored} == {"fires on token 0", "code, variant 0"}
    simulation = scored[0]["scored_simulation"]
    label = next(e for e in view.explanations if e.text == scored[0]["explanation"])
    primary = next(s for s in label.scores if s.method == "top_and_random")
    assert simulation["ev_correlation_score"] == primary.score
    sequence = simulation["scored_sequence_simulations"][0]
    assert set(sequence) == {
        "dataclass_name",
        "simulation",
        "true_activations",
        "ev_correlation_score",
        "rsquared_score",
        "absolute_dev_explained_score",
    }
    assert set(sequence["simulation"]) == {
        "dataclass_name",
        "tokens",
        "expected_activations",
        "activation_scale",
        "distribution_values",
        "distribution_probabilities",
        "uncalibrated_simulation",
    }
    assert sequence["simulation"]["activation_scale"] == "simulated_normalized_activations"


def test_openai_takes_one_model(db: Path, tmp_path: Path):
    two = tmp_path / "two.db"
    two.write_bytes(db.read_bytes())
    build_catalogue(two, model="other", layers=1, neurons=2, seed=3, labelled=False)
    with pytest.raises(UserError, match="several models"):
        export_text(two, "openai")
    assert len(lines(export_text(two, "openai", model="other"))) == 2


def test_status_accepted_keeps_accepted_labels_only(db: Path):
    document = json.loads(export_text(db, status="accepted"))
    assert [(n["layer"], n["neuron"]) for n in document["neurons"]] == [(0, 1)]
    (neuron,) = document["neurons"]
    assert [(e["text"], e["status"]) for e in neuron["explanations"]] == [
        ("def keyword", "accepted")
    ]
    assert [h["action"] for h in neuron["explanations"][0]["history"]] == ["write", "accept"]


def test_min_score_keeps_labels_scoring_at_least_that(db: Path):
    with Catalogue.open(db) as catalogue:
        scores = {
            (view.neuron, e.text): s.score
            for view in (catalogue.neuron_view("tiny", 0, n) for n in range(3))
            for e in view.explanations
            for s in e.scores
            if s.method == "top_and_random" and s.split.value == "valid" and s.score is not None
        }
    threshold = sorted(scores.values())[len(scores) // 2]
    expected = {key for key, score in scores.items() if score >= threshold}
    document = json.loads(export_text(db, min_score=threshold))
    kept = {(n["neuron"], e["text"]) for n in document["neurons"] for e in n["explanations"]}
    assert kept == expected and 0 < len(kept) < len(scores)
    results = [
        r
        for r in lines(export_text(db, "openai", min_score=threshold))
        if r["dataclass_name"] == "NeuronSimulationResults"
    ]
    assert {s["explanation"] for r in results for s in r["scored_explanations"]} == {
        text for _, text in expected
    }


def test_layers_and_model_filters(db: Path):
    document = json.loads(export_text(db, layers=[1], model="tiny"))
    assert {n["layer"] for n in document["neurons"]} == {1}
    assert len(document["neurons"]) == document["neuron_count"] == 6
    assert document["neurons"][0]["explanations"] == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "csv"}, "--format"),
        ({"status": "great"}, "--status"),
        ({"model": "missing"}, "not in"),
    ],
)
def test_bad_export_arguments_are_one_line_errors(db: Path, kwargs: dict[str, Any], message):
    arguments: dict[str, Any] = {
        "fmt": "json",
        "model": None,
        "layers": None,
        "status": "all",
        "min_score": None,
        "on_progress": None,
        **kwargs,
    }
    with Catalogue.open(db) as catalogue, pytest.raises(UserError, match=message) as caught:
        export_catalogue(catalogue, io.StringIO(), **arguments)
    assert "\n" not in str(caught.value)


def _reference_valid(records: list[Any], splits: int, index: int) -> list[Any]:
    """neuron-explainer's `get_slices_for_splits` with n_examples_per_split=None, written out."""
    n = len(records) // splits
    return records[slice(index, n * splits, splits)]


def test_openai_scored_windows_are_neuron_explainers_valid_slice_once_per_label(tmp_path: Path):
    # 23 top and 20 random windows: neither count is a multiple of its stride, so our scan's
    # valid split holds windows that the reference's slicing leaves out.
    db = build_catalogue(
        tmp_path / "odd.db", layers=1, neurons=1, windows=48, top_k=23, random=20, labelled=False
    )
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref("tiny", 0, 0)
        label_id = catalogue.add_explanation(
            ref,
            "digits",
            source="gpt-test",
            prompt_version="explainer-v1",
            producer_model="gpt-test",
        )
        assert label_id is not None
        view = catalogue.neuron_view("tiny", 0, 0)
        for split, shift in ((Split.VALID, 0), (Split.TEST, 1), (Split.VALID, 2)):
            windows = [e for e in (*view.top_examples, *view.random_examples) if e.split is split]
            simulated = [
                [float((i * 7 + shift) % 5) for i in range(len(w.tokens))] for w in windows
            ]
            simulator = "baseline" if shift == 2 else "sim-test"
            kind = PredictionKind.RULE if shift == 2 else PredictionKind.EXPECTED_VALUE
            catalogue.save_scores(
                label_id, build_scores(windows, simulated, simulator, "v", split, kind)
            )
        ours_valid = [
            e for e in (*view.top_examples, *view.random_examples) if e.split is Split.VALID
        ]
    records = lines(export_text(db, "openai"))
    record, results = records
    (scored,) = results["scored_explanations"]  # one entry per label, not per split or simulator
    top = _reference_valid(record["most_positive_activation_records"], 4, 2)
    random = _reference_valid(record["random_sample"], 3, 1)
    assert (len(top), len(random)) == (5, 6)
    assert len(ours_valid) == 6 + 7  # what the scan calls valid: one top and one random more
    sequences = scored["scored_simulation"]["scored_sequence_simulations"]
    assert [s["simulation"]["tokens"] for s in sequences] == [r["tokens"] for r in top + random]
    assert [s["true_activations"] for s in sequences] == [r["activations"] for r in top + random]
    # the LLM simulator's valid score, not the baseline's, and not the test one
    assert sequences[0]["simulation"]["expected_activations"][:3] == [0.0, 2.0, 4.0]
    expected = correlation_score(
        [s["true_activations"] for s in sequences],
        [s["simulation"]["expected_activations"] for s in sequences],
    )
    assert scored["scored_simulation"]["ev_correlation_score"] == pytest.approx(expected, abs=1e-12)


def test_reference_valid_slices_follow_their_strides():
    assert reference_valid_slices(20, 20) == ([2, 6, 10, 14, 18], [1, 4, 7, 10, 13, 16])
    assert reference_valid_slices(4, 3) == ([2], [1])
    assert reference_valid_slices(3, 2) == ([], [])
