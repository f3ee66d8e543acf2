"""`score --on`: which held-out windows a run simulates, and every score recording it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from builders import run_cli as run
from builders import scan_params, scanned_catalogue, synthetic_documents
from test_null_control import Recording, labelled

from labeller.catalogue import Catalogue
from labeller.explain.scoring import correlation_score
from labeller.explain.service import score_neurons, scored_windows
from labeller.records import ExampleKind, ScoreMethod, ScoreWindows, Split


@pytest.fixture()
def db(tmp_path, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, top_k=8, random=6)
    return scanned_catalogue(tmp_path / "c.db", tiny_model, params)


def scores_of(db: Path, neuron: int) -> dict[tuple[str, str], dict]:
    data = json.loads(
        run("show", "--db", db, "--layer", 1, "--neuron", neuron, "--format", "json").stdout
    )
    (explanation,) = data["explanations"]
    return {(s["method"], s["windows"]): s for s in explanation["scores"]}


def test_on_chooses_the_windows_and_every_score_records_it(db):
    run("explain", "--db", db, "--layer", 1, "--neurons", "0-2")  # baseline labels
    base = ("score", "--db", db, "--layer", 1, "--neurons", "0-2")
    run(*base)
    assert set(scores_of(db, 0)) == {
        ("top_and_random", "top_and_random"),
        ("top_only", "top_and_random"),
        ("random_only", "top_and_random"),
    }
    run(*base, "--on", "quantiles")
    scores = scores_of(db, 0)
    assert ("quantiles", "quantiles") in scores and len(scores) == 4  # added, nothing replaced
    detail = scores[("quantiles", "quantiles")]["details"]["windows"]
    assert detail and {w["kind"] for w in detail} == {"quantile"}
    assert all("band" in w for w in detail)
    run(*base, "--on", "all")
    scores = scores_of(db, 0)
    assert {m for m, w in scores if w == "all"} == {m.value for m in ScoreWindows.ALL.methods}
    kinds = {w["kind"] for w in scores[("all", "all")]["details"]["windows"]}
    assert kinds == {"top", "random", "quantile"}
    with Catalogue.open(db, read_only=True) as catalogue:
        nulls = [
            row["windows"]
            for row in catalogue.db.query("select windows from null_controls order by id")
        ]
    assert nulls == ["top_and_random", "quantiles", "all"]


def test_quantile_scores_are_over_held_out_band_windows(db):
    labelled(db, 1)
    simulator = Recording()
    with Catalogue.open(db) as catalogue:
        refs = catalogue.neuron_refs(None, [1], None)[:1]
        asyncio.run(
            score_neurons(catalogue, refs, simulator, on=ScoreWindows.QUANTILES, null_control=False)
        )
        view = catalogue.neuron_view(None, 1, 0)
        windows = scored_windows(view, Split.VALID, ScoreWindows.QUANTILES)
    assert windows and all(
        w.kind is ExampleKind.QUANTILE and w.split is Split.VALID for w in windows
    )
    (score,) = view.explanations[0].scores
    assert score.method is ScoreMethod.QUANTILES and score.windows is ScoreWindows.QUANTILES
    expected = correlation_score(
        [w.activations for w in windows], [[float(len(t)) for t in w.tokens] for w in windows]
    )
    assert score.score == pytest.approx(expected)
    # the simulator saw exactly those windows: no train, calibration or test window
    assert [w for _, call in simulator.calls for w in call] == [tuple(w.tokens) for w in windows]


@pytest.fixture()
def subset_db(tmp_path, tiny_model, tiny_model_dir) -> Path:
    corpus = tmp_path / "sourced.jsonl"
    with corpus.open("w") as handle:
        for i, text in enumerate(synthetic_documents(40, seed=9)):
            handle.write(json.dumps({"text": text, "source": ("a", "b")[i % 2]}) + "\n")
    params = scan_params(
        tiny_model_dir, corpus, top_k=4, random=3, subset_field="source", subset_top_k=8
    )
    return scanned_catalogue(tmp_path / "c.db", tiny_model, params)


def test_subset_scores_are_one_per_subset_over_its_held_out_windows(subset_db):
    labelled(subset_db, 1)
    with Catalogue.open(subset_db) as catalogue:
        refs = catalogue.neuron_refs(None, [1], None)[:1]
        asyncio.run(
            score_neurons(catalogue, refs, Recording(), on=ScoreWindows.SUBSETS, null_control=False)
        )
        view = catalogue.neuron_view(None, 1, 0)
    scores = view.explanations[0].scores
    assert sorted(s.subset for s in scores) == ["a", "b"]
    for score in scores:
        windows = [
            e for e in view.subset_examples if e.subset == score.subset and e.split is Split.VALID
        ]
        assert windows and score.method is ScoreMethod.SUBSET_TOP
        expected = correlation_score(
            [w.activations for w in windows], [[float(len(t)) for t in w.tokens] for w in windows]
        )
        assert score.score == pytest.approx(expected)
    shown = json.loads(
        run("show", "--db", subset_db, "--layer", 1, "--neuron", 0, "--format", "json").stdout
    )
    assert [(s["subset"], s["score"]) for s in shown["subsets"]] == [
        (s.subset, pytest.approx(s.score)) for s in sorted(scores, key=lambda s: s.subset or "")
    ]
    assert shown["illusion"]["pair"] and 0 <= shown["illusion"]["measure"] <= 1
    # scoring again replaces both subsets' scores, never one with the other
    with Catalogue.open(subset_db) as catalogue:
        asyncio.run(
            score_neurons(
                catalogue, refs, Recording(), on=ScoreWindows.SUBSETS, force=True,
                null_control=False,
            )
        )  # fmt: skip
        again = catalogue.neuron_view(None, 1, 0).explanations[0].scores
    assert sorted(s.subset or "" for s in again) == ["a", "b"]


def test_rank_by_illusion_lists_every_neuron_with_subsets_highest_first(subset_db):
    ranked = json.loads(
        run("rank", "--db", subset_db, "--by", "illusion", "--format", "json").stdout
    )
    with Catalogue.open(subset_db, read_only=True) as catalogue:
        refs = catalogue.neuron_refs(None, None, None)
        from labeller.subsets import illusion

        expected = {
            (r.layer, r.neuron): illusion(catalogue.neuron_view(None, r.layer, r.neuron))
            for r in refs
        }
    assert len(ranked) == len(refs)
    values = [r["value"] for r in ranked]
    assert values == sorted(values, reverse=True)
    for row in ranked:
        found = expected[(row["layer"], row["neuron"])]
        assert found is not None and row["value"] == pytest.approx(found.measure)
    table = run("rank", "--db", subset_db, "--by", "illusion", "--limit", "2").stdout
    assert "a (" in table and "divergence" in table


def test_band_precision_of_a_labels_simulation_in_show_and_rank(db):
    run("explain", "--db", db, "--layer", 1, "--neurons", "0-3")  # baseline labels
    run("score", "--db", db, "--layer", 1, "--neurons", "0-3", "--on", "quantiles")
    ranked = json.loads(
        run("rank", "--db", db, "--by", "band-consistency", "--format", "json").stdout
    )
    assert ranked, "some baseline label must be scored on band windows"
    from labeller.band_precision import label_bands

    with Catalogue.open(db, read_only=True) as catalogue:
        for row in ranked:
            view = catalogue.neuron_view(None, row["layer"], row["neuron"])
            bands = label_bands(view)
            assert bands is not None and row["value"] == pytest.approx(bands.consistency)
            assert row["label"] == view.label_explanation().text
    assert [r["value"] for r in ranked] == sorted((r["value"] for r in ranked), reverse=True)
    first = ranked[0]
    shown = json.loads(
        run("show", "--db", db, "--layer", first["layer"], "--neuron", first["neuron"],
            "--format", "json").stdout
    )  # fmt: skip
    (bands,) = shown["band_precision"]
    assert bands["feature"].startswith("label #") and bands["consistency"] == first["value"]
    assert [b["band"] for b in bands["bands"]] == sorted(b["band"] for b in bands["bands"])
    text = run("show", "--db", db, "--layer", first["layer"], "--neuron", first["neuron"]).stdout
    assert "Band precision of label #" in text and ("█" in text or "░" in text)


def test_rank_by_a_detectors_band_consistency(db):
    ranked = json.loads(
        run("rank", "--db", db, "--by", "band-consistency:start-of-line", "--format", "json").stdout
    )
    from labeller.band_precision import detector_bands
    from labeller.detect.registry import resolve

    (detector,) = resolve(["start-of-line"], [])
    with Catalogue.open(db, read_only=True) as catalogue:
        expected = {}
        for ref in catalogue.neuron_refs(None, None, None):
            bands = detector_bands(catalogue.neuron_view(None, ref.layer, ref.neuron), detector)
            if bands is not None and bands.consistency is not None:
                expected[(ref.layer, ref.neuron)] = bands.consistency
    assert {(r["layer"], r["neuron"]): r["value"] for r in ranked} == pytest.approx(expected)
    assert len(ranked) == len(expected) > 0
    bad = run("rank", "--db", db, "--by", "band-consistency:nope", ok=False)
    assert bad.exit_code == 2 and "unknown detector 'nope'" in bad.stderr
