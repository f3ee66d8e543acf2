"""Import refuses what does not fit the model or the format, and keeps NaN statistics as NaN."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from builders import run_cli
from exchange_factory import build_catalogue
from exchange_helpers import copy_db, export_file, export_text, state

from labeller.catalogue import Catalogue
from labeller.errors import UserError
from labeller.exchange import import_catalogue

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def base_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_catalogue(tmp_path_factory.mktemp("validation") / "base.db")


@pytest.fixture()
def export(base_db: Path, tmp_path: Path) -> Path:
    return export_file(base_db, tmp_path / "export.json")


def edited(path: Path, header: Edit | None = None, neuron: Edit | None = None) -> Path:
    """The export with its header and its first neuron changed by the given functions."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    head = json.loads(lines[0].rstrip().removesuffix(', "neurons": [') + "}")
    if header:
        header(head)
    lines[0] = json.dumps(head)[:-1] + ', "neurons": [\n'
    first = json.loads(lines[1].rstrip().removesuffix(","))
    if neuron:
        neuron(first)
    lines[1] = json.dumps(first) + ",\n"
    target = path.with_name("edited.json")
    target.write_text("".join(lines), encoding="utf-8")
    return target


def refused(into: Path, file: Path, match: str) -> None:
    before = state(into)
    with Catalogue.open(into) as catalogue, pytest.raises(UserError, match=match):
        import_catalogue(catalogue, file)
    assert state(into) == before  # nothing written


def empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.db"
    Catalogue.open(path, create=True).close()
    return path


def _set(path: str, value: Any) -> Edit:
    def edit(record: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = record
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (_set("layer", 99), r"layer 99 .*model tiny has layers 0-1"),
        (_set("layer", -1), r"layer -1 .*model tiny has layers 0-1"),
        (_set("neuron", 6), r"neuron 6 .*model tiny has neurons 0-5"),
        (_set("top_examples.0.activations", [1.0]), r"1 activations for 8 tokens"),
        (_set("random_examples.1.token_ids", [1, 2]), r"2 token ids for 8 tokens"),
        (_set("top_examples.0.max_index", 8), r"max_index 8 outside its 8 tokens"),
        (_set("explanations.0.status", "bogus"), r"explanations\.0\.status"),
        (_set("explanations.0.text", "  "), r"empty label text"),
    ],
)
def test_a_neuron_that_does_not_fit_is_refused_before_writing(
    export: Path, tmp_path: Path, edit: Edit, match: str
):
    refused(empty(tmp_path), edited(export, neuron=edit), match)


@pytest.mark.parametrize("count", [-1, 5, 13])
def test_a_wrong_neuron_count_is_refused(export: Path, tmp_path: Path, count: int):
    refused(empty(tmp_path), edited(export, header=_set("neuron_count", count)), "neuron_count")


@pytest.mark.parametrize(
    ("field", "value"), [("d_mlp", 1024), ("n_layers", 3), ("d_model", 32), ("d_vocab", 50257)]
)
def test_an_export_of_another_model_with_our_models_name_is_refused(
    base_db: Path, export: Path, tmp_path: Path, field: str, value: int
):
    ours = copy_db(base_db, tmp_path / "ours.db")
    refused(ours, edited(export, header=_set(f"models.0.{field}", value)), "not the model")


def test_nan_statistics_are_stored_shown_and_exported_as_nan(export: Path, tmp_path: Path):
    def nan_stats(neuron: dict[str, Any]) -> None:
        neuron["stats"].update(max=math.nan, mean=math.nan, std=math.nan, skewness=math.nan)
        neuron["stats"]["histogram"]["low"] = math.nan

    into = empty(tmp_path)
    with Catalogue.open(into) as catalogue:
        import_catalogue(catalogue, edited(export, neuron=nan_stats))
        stats = catalogue.neuron_view("tiny", 0, 0).stats
        assert math.isnan(stats.mean) and math.isnan(stats.std) and math.isnan(stats.skewness)
        assert math.isnan(stats.histogram.low)
        assert stats.kurtosis is None  # None (a constant neuron) stays distinct from NaN
        assert catalogue.rank("tiny", by="max")
    shown = json.loads(
        run_cli("show", "--db", into, "--layer", 0, "--neuron", 0, "--format", "json").stdout
    )
    assert math.isnan(shown["stats"]["mean"]) and shown["stats"]["kurtosis"] is None
    assert "nan" in run_cli("show", "--db", into, "--layer", 0, "--neuron", 0).stdout.lower()
    assert "nan" in run_cli("rank", "--db", into, "--by", "max").stdout.lower()
    assert '"mean": NaN' in export_text(into).splitlines()[1]
    again = empty(tmp_path / "again")
    again_file = tmp_path / "again.json"
    again_file.write_text(export_text(into), encoding="utf-8")
    with Catalogue.open(again) as catalogue:
        import_catalogue(catalogue, again_file)
        assert math.isnan(catalogue.neuron_view("tiny", 0, 0).stats.mean)


def test_an_export_of_a_same_shaped_model_with_other_weights_is_refused(
    base_db: Path, export: Path, tmp_path: Path
):
    ours = copy_db(base_db, tmp_path / "ours.db")
    other = edited(export, header=_set("models.0.weights_fingerprint", "sha256:other"))
    refused(ours, other, r"not the model .*weights differ")


def test_without_a_fingerprint_the_shape_is_checked_and_the_report_says_so(
    base_db: Path, export: Path, tmp_path: Path
):
    ours = copy_db(base_db, tmp_path / "ours.db")
    older = edited(export, header=_set("models.0.weights_fingerprint", None))
    with Catalogue.open(ours) as catalogue:
        report = import_catalogue(catalogue, older)
    assert report.warnings == [
        "model tiny: same shape, but the weights fingerprint could not be checked "
        "(recorded on only one side or neither)"
    ]
    assert report.neurons_unchanged == 12


def test_export_refuses_a_nan_min_score(base_db: Path):
    with pytest.raises(UserError, match="--min-score nan"):
        export_text(base_db, min_score=math.nan)
