"""`labeller plot` as a user runs it: a neuron's and a layer's figures from the catalogue, and
notes (not stand-in figures) where the catalogue holds no data for one."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import labelled_catalogue, run_cli

from labeller.plot.catalogue_figures import file_stem

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def labelled_db(tmp_path_factory, tiny_model, tiny_corpus) -> Path:
    return labelled_catalogue(
        tmp_path_factory.mktemp("plot") / "c.db", tiny_model, tiny_corpus, [1]
    )


def _written(output: str) -> list[Path]:
    return [Path(line.strip()) for line in output.splitlines() if line.startswith("  ")]


def test_a_neurons_three_figures_as_png_and_svg(tmp_path, labelled_db) -> None:
    result = run_cli(
        "plot", "--db", labelled_db, "--layer", "1", "--neuron", "5", "-o", tmp_path / "f"
    )
    written = _written(result.output)
    assert [p.name.split("_L1_N5_")[1] for p in written] == [
        "histogram.png",
        "histogram.svg",
        "band_precision.png",
        "band_precision.svg",
        "dla_activation.png",
        "dla_activation.svg",
    ]
    for png in written[::2]:
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 5000
        assert "<svg" in png.with_suffix(".svg").read_text()
    assert "per-band precision" not in result.stderr  # the label was scored on band windows
    assert "the scan had no --dla: DLA vs activation computed by the model" in result.stderr


def test_dla_vs_activation_as_png_and_svg_and_none_with_no_dla(tmp_path, labelled_db) -> None:
    result = run_cli(
        "plot", "--db", labelled_db, "--layer", "1", "--neuron", "5", "-o", tmp_path,
        "--device", "cpu",
    )  # fmt: skip
    png, svg = (p for p in _written(result.output) if "_dla_activation" in p.name)
    assert png.name.endswith("_L1_N5_dla_activation.png") and png.read_bytes()[:8] == PNG
    assert png.stat().st_size > 5000 and "<svg" in svg.read_text()
    assert "Pearson r =" in svg.read_text()  # the title carries the correlation
    result = run_cli(
        "plot", "--db", labelled_db, "--layer", "1", "--neuron", "5", "-o", tmp_path / "n",
        "--no-dla",
    )  # fmt: skip
    assert not any("dla" in p.name for p in _written(result.output))
    assert "no DLA vs activation figure (--no-dla" in result.stderr


def _series(db: Path, tiny_model, layer: int, neuron: int):
    from labeller.catalogue import Catalogue
    from labeller.catalogue.browse import neuron_token_ids
    from labeller.plot.catalogue_figures import dla_series

    with Catalogue.open(db, read_only=True) as catalogue:
        view = catalogue.neuron_view(None, layer, neuron)
        ids = neuron_token_ids(catalogue, None, layer, neuron)
    return view, ids, dla_series(view, ids, tiny_model)


def test_the_dla_figure_draws_stored_activations_against_the_models_dla(
    labelled_db, tiny_model
) -> None:
    from labeller.model.dla import trace_dla

    view, ids, series = _series(labelled_db, tiny_model, 1, 5)
    assert not series.scanned_dla
    windows = {(e.document, e.offset): e for e in [*view.top_examples, *view.random_examples]}
    expected_acts: list[float] = []
    expected_dla: list[float] = []
    for example in windows.values():  # each window once, its last token (no next token) left out
        dla = trace_dla(tiny_model, ids[(example.kind.value, example.rank)], 1)[1][:, 5]
        expected_acts += example.activations[:-1]
        expected_dla += dla[:-1].tolist()
    assert series.activations == expected_acts and series.dla == expected_dla
    assert not any(math.isnan(d) for d in series.dla)
    r = series.correlation()
    assert r is not None and r == pytest.approx(np.corrcoef(expected_acts, expected_dla)[0, 1])


@pytest.fixture(scope="module")
def dla_db(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    db = tmp_path_factory.mktemp("plotdla") / "c.db"
    run_cli(
        "scan", "--db", db, "--model", tiny_model_dir, "--dataset", tiny_corpus, "--ctx", "16",
        "--top-k", "4", "--random", "4", "--band-windows", "0", "--dla", "--device", "cpu",
    )  # fmt: skip
    return db


def test_a_dla_scan_adds_its_dla_windows_with_their_stored_dla(
    tmp_path, dla_db, tiny_model
) -> None:
    from labeller.model.dla import window_dla
    from labeller.records import ExampleKind

    view, ids, series = _series(dla_db, tiny_model, 0, 3)
    assert series.scanned_dla and ExampleKind.DLA_BOTTOM in series.kinds
    # the DLA windows' points: the scan's stored DLA, against the model's activations
    start = 0
    seen = set()
    for example in [*view.top_examples, *view.random_examples, *view.dla_top_examples,
                    *view.dla_bottom_examples]:  # fmt: skip
        if (example.document, example.offset) in seen:
            continue
        seen.add((example.document, example.offset))
        n = len(example.activations) - 1
        if example.kind in (ExampleKind.DLA_TOP, ExampleKind.DLA_BOTTOM):
            acts, dla = window_dla(tiny_model, ids[(example.kind.value, example.rank)], 0, 3)
            assert series.activations[start : start + n] == acts[:-1]
            assert series.dla[start : start + n] == example.activations[:-1]
            # stored at float16 precision
            assert series.dla[start : start + n] == pytest.approx(dla[:-1], rel=2e-3, abs=1e-4)
        start += n
    assert start == len(series.dla)
    result = run_cli("plot", "--db", dla_db, "--layer", "0", "--neuron", "3", "-o", tmp_path)
    assert "--dla" not in result.stderr
    assert any(p.name.endswith("_L0_N3_dla_activation.png") for p in _written(result.output))


def test_the_band_figure_draws_what_band_precision_computes(labelled_db) -> None:
    from labeller.band_precision import band_precision, detector_bands, label_bands
    from labeller.catalogue import Catalogue
    from labeller.detect.registry import resolve
    from labeller.plot.catalogue_figures import band_series

    with Catalogue.open(labelled_db, read_only=True) as catalogue:
        (model,) = catalogue.models()
        view = catalogue.neuron_view(model.name, 1, 5)
    number, line = resolve(["number", "start-of-line"], [])
    series = band_series(view, [number, line])
    assert [s.feature.split(" #")[0] for s in series] == [
        "label",
        "detector:number",
        "detector:start-of-line",
    ]
    assert series == [label_bands(view), detector_bands(view, number), detector_bands(view, line)]
    # by hand: each band's mean detector value at its windows' peak tokens
    windows = view.quantile_examples
    by_hand = band_precision(windows, [line.values(w.tokens) for w in windows])
    assert series[2].bands == by_hand and sum(b.windows for b in by_hand) == len(windows)
    assert band_series(view) == [label_bands(view)]  # no detector scored: the label alone


def test_a_neuron_without_a_band_scored_label_gets_notes(tmp_path, labelled_db) -> None:
    result = run_cli("plot", "--db", labelled_db, "--layer", "0", "--neuron", "1", "-o", tmp_path)
    assert "no per-band precision figure: no label scored on band windows" in result.stderr
    assert not any("band_precision" in p.name for p in _written(result.output))
    result = run_cli(
        "plot", "--db", labelled_db, "--layer", "0", "--neuron", "1", "-o", tmp_path,
        "--detector", "number", "--formats", "svg",
    )  # fmt: skip
    (band,) = (p for p in _written(result.output) if "band_precision" in p.name)
    assert band.name.endswith("_L0_N1_band_precision.svg") and "<svg" in band.read_text()
    assert "without the label's: it has no score on band windows" in result.stderr


def test_a_neuron_without_band_windows_gets_a_note(tmp_path, tiny_model_dir, tiny_corpus) -> None:
    db = tmp_path / "nobands.db"
    run_cli(
        "scan", "--db", db, "--model", tiny_model_dir, "--dataset", tiny_corpus,
        "--ctx", "16", "--band-windows", "0",
    )  # fmt: skip
    result = run_cli(
        "plot", "--db", db, "--layer", "0", "--neuron", "1", "--detector", "number",
        "-o", tmp_path,
    )  # fmt: skip
    assert "no per-band precision figure: the scan kept no activation-band windows" in (
        result.stderr
    )
    assert not any("band_precision" in p.name for p in _written(result.output))


def test_a_layer_scores_against_the_null_and_cosine_against_kurtosis(tmp_path, labelled_db) -> None:
    result = run_cli(
        "plot", "--db", labelled_db, "--layer", "1", "--formats", "png", "-o", tmp_path
    )
    names = sorted(p.name.split("_L1_")[1] for p in _written(result.output))
    assert names == ["cosine_kurtosis.png", "scores.png"]
    assert "null control" not in result.stderr  # the baseline's scoring run stored one


def test_a_layer_without_scores_gets_a_note_not_an_empty_figure(tmp_path, labelled_db) -> None:
    result = run_cli(
        "plot", "--db", labelled_db, "--layer", "0", "--formats", "png", "-o", tmp_path
    )
    (only,) = _written(result.output)
    assert only.name.endswith("_L0_cosine_kurtosis.png")
    assert "no score figure" in result.stderr


def test_bad_targets_and_missing_matplotlib_are_one_line_errors(
    tmp_path, labelled_db, monkeypatch
) -> None:
    for args, message in (
        (("--layer", "7"), "has layers 0-1"),
        (("--layer", "0", "--neuron", "999"), "no neuron 999"),
        (("--layer", "0", "--detector", "number"), "give --neuron N too"),
        (("--layer", "0", "--neuron", "1", "--detector", "nope"), "unknown detector 'nope'"),
    ):
        result = run_cli("plot", "--db", labelled_db, *args, "-o", tmp_path, ok=False)
        assert result.exit_code != 0 and message in result.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("plot", "--db", labelled_db, "--layer", "0", ok=False)
    assert result.exit_code != 0 and "pip install 'labeller[plots]'" in result.output


def test_model_names_become_safe_file_names() -> None:
    assert file_stem("NeelNanda/SoLU_1L512W_C4_Code") == "NeelNanda-SoLU_1L512W_C4_Code"
    assert file_stem("../models/my model") == "models-my-model"
