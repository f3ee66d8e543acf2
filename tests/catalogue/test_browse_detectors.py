"""The neuron list filtered by a detector's score (`d:NAME>x`) and sorted by it, in SQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue
from labeller.catalogue.browse import (
    DetectorStat,
    ListSpec,
    SortKey,
    Stat,
    StatRange,
    list_page,
    list_place,
    list_step,
    parse_stat_ranges,
)
from labeller.catalogue.detectors import detector_scores_of
from labeller.detect.registry import resolve
from labeller.detect.service import detect_neurons
from labeller.errors import UserError


@pytest.fixture(scope="module")
def detected(tmp_path_factory, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    path = tmp_path_factory.mktemp("browse-detect") / "c.db"
    scanned_catalogue(path, tiny_model, scan_params(tiny_model_dir, tiny_corpus))
    with Catalogue.open(path) as catalogue:
        refs = catalogue.neuron_refs(None, None, None)
        detect_neurons(catalogue, refs, resolve(["start-of-line"], ["vowel=^ ?[aeiou]"]))
    return path


@pytest.fixture()
def catalogue(detected: Path, tmp_path: Path):
    copy = tmp_path / "c.db"
    copy.write_bytes(detected.read_bytes())
    with Catalogue.open(copy) as opened:
        yield opened


def stored(catalogue: Catalogue, name: str) -> dict[tuple[int, int], float | None]:
    return {
        (ref.layer, ref.neuron): next(
            d.score for d in detector_scores_of(catalogue, ref.id) if d.name == name
        )
        for ref in catalogue.neuron_refs(None, None, None)
    }


def test_detector_terms_parse_beside_statistics():
    assert parse_stat_ranges("d:vowel>0.2 kurt<3") == [
        StatRange(DetectorStat("vowel"), low=0.2),
        StatRange(Stat.KURTOSIS, high=3.0),
    ]
    assert StatRange(DetectorStat("vowel"), low=0.2).describe() == "d:vowel≥0.2"
    with pytest.raises(UserError, match="d:DETECTOR"):
        parse_stat_ranges("vowel>0.2")


def test_filter_keeps_neurons_whose_detector_score_is_in_range_sorted_best_first(catalogue):
    scores = stored(catalogue, "vowel")
    spec = ListSpec(
        sort=SortKey.DETECTOR, descending=True, ranges=(StatRange(DetectorStat("vowel"), 0.0),)
    )
    rows, total = list_page(catalogue, None, spec, limit=500)
    expected = sorted(
        (key for key, value in scores.items() if value is not None and value >= 0.0),
        key=lambda key: (-scores[key], key),  # type: ignore[operator]
    )
    assert [(r.layer, r.neuron) for r in rows] == expected and total == len(expected)
    assert [r.detector for r in rows] == [scores[key] for key in expected]
    assert 0 < total < len(scores)  # the filter removed some, kept some


def test_a_walk_steps_through_the_detector_sort(catalogue):
    spec = ListSpec(
        sort=SortKey.DETECTOR, descending=True, ranges=(StatRange(DetectorStat("vowel"), 0.0),)
    )
    rows, _ = list_page(catalogue, None, spec, limit=500)
    place = list_place(catalogue, None, spec, rows[0].layer, rows[0].neuron)
    step, _ = list_step(catalogue, None, spec, place)
    assert step is not None and (step.layer, step.neuron) == (rows[1].layer, rows[1].neuron)
