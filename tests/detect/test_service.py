"""Scoring detectors against a scanned catalogue: the labels' windows and Pearson code, stored
once per neuron and detector, skipped on a rerun, recomputed when a definition changes."""

from __future__ import annotations

from pathlib import Path

import pytest
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue
from labeller.catalogue.detectors import detector_scores_of, rank_by_detector
from labeller.detect.registry import resolve
from labeller.detect.service import WindowValues, detect_neurons, undetected
from labeller.explain.scoring import correlation_score
from labeller.explain.service import scored_windows
from labeller.records import Split


@pytest.fixture(scope="module")
def scanned(tmp_path_factory: pytest.TempPathFactory, tiny_model, tiny_model_dir, tiny_corpus):
    path = tmp_path_factory.mktemp("detect") / "c.db"
    return scanned_catalogue(path, tiny_model, scan_params(tiny_model_dir, tiny_corpus))


@pytest.fixture
def catalogue(scanned: Path, tmp_path: Path):
    copy = tmp_path / "c.db"
    copy.write_bytes(scanned.read_bytes())
    with Catalogue.open(copy) as opened:
        yield opened


DETECTORS = ["start-of-line", "split-token", "python-keyword", "bracket-depth"]


def test_each_score_is_the_labels_pearson_over_the_labels_held_out_windows(catalogue) -> None:
    refs = catalogue.neuron_refs(None, [0], list(range(6)))
    detectors = resolve(DETECTORS, ["vowel=[aeiou]"])
    report = detect_neurons(catalogue, refs, detectors)
    assert report.written == len(refs) * len(detectors) and report.skipped == 0
    for ref in refs:
        view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
        windows = scored_windows(view, Split.VALID)  # what `score` simulates for a label
        assert windows
        stored = {d.name: d for d in view.detectors}
        assert set(stored) == {d.name for d in detectors}
        for detector in detectors:
            expected = correlation_score(
                [w.activations for w in windows], [detector.values(w.tokens) for w in windows]
            )
            got = stored[detector.name]
            assert got.split is Split.VALID and got.prediction == "rule"
            if expected is None:
                assert got.score is None
            else:
                assert got.score == pytest.approx(expected, abs=1e-12)
        scores = [d.score for d in view.detectors if d.score is not None]
        assert scores == sorted(scores, reverse=True)  # best first


def test_a_rerun_skips_and_a_changed_definition_or_force_recomputes(catalogue) -> None:
    refs = catalogue.neuron_refs(None, [0], [0, 1, 2])
    detect_neurons(catalogue, refs, resolve(["number"], ["vowel=[aeiou]"]))
    again = detect_neurons(catalogue, refs, resolve(["number"], ["vowel=[aeiou]"]))
    assert (again.written, again.skipped) == (0, 6)
    changed = detect_neurons(catalogue, refs, resolve(["number"], ["vowel=[ae]"]))
    assert (changed.written, changed.skipped) == (3, 3)
    (vowel,) = [d for d in detector_scores_of(catalogue, refs[0].id) if d.name == "vowel"]
    assert vowel.definition == "regex:[ae]"
    forced = detect_neurons(catalogue, refs, resolve(["number"], []), force=True)
    assert (forced.written, forced.skipped) == (3, 0)
    rows = catalogue.db.execute("select count(*) from detector_scores").fetchone()[0]
    assert rows == 6  # replaced, never duplicated


def test_undetected_is_what_a_rerun_would_still_score(catalogue) -> None:
    """An interrupted run (half the neurons done) leaves the other half; a finished one none; a
    changed definition all of them again, as `detect_neurons` would recompute them."""
    refs = catalogue.neuron_refs(None, [0], list(range(6)))
    detectors = resolve(["number"], ["vowel=[aeiou]"])
    assert undetected(catalogue, refs, detectors) == refs
    detect_neurons(catalogue, refs[:3], detectors)
    assert undetected(catalogue, refs, detectors) == refs[3:]
    assert undetected(catalogue, refs, detectors, Split.TEST) == refs  # another split's scores
    detect_neurons(catalogue, refs, detectors)
    assert undetected(catalogue, refs, detectors) == []
    assert undetected(catalogue, refs, resolve(["number"], ["vowel=[ae]"])) == refs


def test_the_test_split_is_scored_apart_and_train_is_refused(catalogue) -> None:
    refs = catalogue.neuron_refs(None, [0], [0])
    detect_neurons(catalogue, refs, resolve(["number"], []), split=Split.TEST)
    (score,) = detector_scores_of(catalogue, refs[0].id)
    assert score.split is Split.TEST
    with pytest.raises(ValueError, match="held-out"):
        detect_neurons(catalogue, refs, resolve(["number"], []), split=Split.TRAIN)


def test_rank_by_detector_orders_neurons_by_that_detectors_score(catalogue) -> None:
    refs = catalogue.neuron_refs(None, None, None)
    detect_neurons(catalogue, refs, resolve(["start-of-line"], []))
    ranked = rank_by_detector(catalogue, refs[0].model, "start-of-line")
    assert len(ranked) == len(refs)
    scored = [r.score for r in ranked if r.score is not None]
    assert scored == sorted(scored, reverse=True)
    assert [r.score for r in ranked[len(scored) :]] == [None] * (len(ranked) - len(scored))
    top = ranked[0]
    ref = next(r for r in refs if (r.layer, r.neuron) == (top.layer, top.neuron))
    (stored,) = detector_scores_of(catalogue, ref.id)
    assert stored.score == top.score


def test_window_values_are_computed_once_per_window_and_the_cache_stays_bounded() -> None:
    calls = []
    (detector,) = resolve([], ["a=a"])

    class Counting:
        name, description, definition = detector.name, detector.description, detector.definition

        def window_values(self, window):
            calls.append(window.text)
            return detector.window_values(window)

    cache = WindowValues([Counting()], size=2)  # type: ignore[list-item]
    for window_id in (1, 1, 2, 1, 3, 2):
        cache.of(window_id, ["a", "b"] if window_id != 3 else ["b"])
    # 1 computed, reused; 2 computed; 1 reused (recently used); 3 evicts 2; 2 recomputed
    assert len(calls) == 4
