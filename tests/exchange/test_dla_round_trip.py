"""DLA examples and related neurons survive export and import."""

from __future__ import annotations

from builders import run_cli, scan_params

from labeller.catalogue import Catalogue
from labeller.scan.runner import run_scan


def test_dla_examples_and_related_neurons_round_trip(
    tiny_model, tiny_model_dir, tiny_corpus, tmp_path
):
    params = scan_params(
        tiny_model_dir, tiny_corpus, tokens=400, band_windows=0, dla=True, correlations="layer"
    )
    with Catalogue.open(tmp_path / "a.db", create=True) as catalogue:
        run_scan(catalogue, tiny_model, params, batch_size=4)
    run_cli("export", "--db", tmp_path / "a.db", "--format", "json", "-o", tmp_path / "e.json")
    run_cli("import", "--db", tmp_path / "b.db", tmp_path / "e.json")
    with Catalogue.open(tmp_path / "a.db") as a, Catalogue.open(tmp_path / "b.db") as b:
        for layer, neuron in ((0, 0), (1, 5)):
            ours, theirs = a.neuron_view(None, layer, neuron), b.neuron_view(None, layer, neuron)
            assert ours.dla_top_examples and ours.related_neurons
            for left, right in (
                (ours.dla_top_examples, theirs.dla_top_examples),
                (ours.dla_bottom_examples, theirs.dla_bottom_examples),
            ):
                assert [e.model_dump() for e in left] == [e.model_dump() for e in right]
            assert ours.related_neurons == theirs.related_neurons
