"""`labeller plot` as a user runs it: a neuron's and a layer's figures from the catalogue, and
notes (not stand-in figures) where the catalogue holds no data for one."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_a_neuron_histogram_as_png_and_svg_with_notes_for_missing_data(
    tmp_path, labelled_db
) -> None:
    result = run_cli(
        "plot", "--db", labelled_db, "--layer", "1", "--neuron", "5", "-o", tmp_path / "f"
    )
    png, svg = _written(result.output)
    assert png.name.endswith("_L1_N5_histogram.png") and png.read_bytes()[:8] == PNG
    assert svg == png.with_suffix(".svg") and "<svg" in svg.read_text()
    assert "no per-band precision" in result.stderr and "no direct logit" in result.stderr


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
    ):
        result = run_cli("plot", "--db", labelled_db, *args, "-o", tmp_path, ok=False)
        assert result.exit_code != 0 and message in result.output
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("plot", "--db", labelled_db, "--layer", "0", ok=False)
    assert result.exit_code != 0 and "pip install 'labeller[plots]'" in result.output


def test_model_names_become_safe_file_names() -> None:
    assert file_stem("NeelNanda/SoLU_1L512W_C4_Code") == "NeelNanda-SoLU_1L512W_C4_Code"
    assert file_stem("../models/my model") == "models-my-model"
