"""A scan's results are packed a block of neurons at a time: how the neurons are cut into
blocks changes nothing stored."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from builders import scan_params

from labeller.catalogue import Catalogue, rows
from labeller.scan import results
from labeller.scan.runner import run_scan


def _stored(path) -> tuple[list, list]:
    with sqlite3.connect(path) as conn:
        neurons = conn.execute(
            "select layer, neuron, max, kurtosis, histogram, top_positive_tokens from neurons "
            "order by layer, neuron"
        ).fetchall()
        examples = conn.execute("select data from neuron_examples order by neuron_id").fetchall()
    return neurons, examples


def test_blocks_smaller_than_a_layer_store_the_same(
    tiny_model, tiny_model_dir, tiny_corpus, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    params = scan_params(tiny_model_dir, tiny_corpus, dla=True, band_windows=2)
    stored = []
    for name, block in (("whole", results.BLOCK_NEURONS), ("cut", 7)):
        monkeypatch.setattr(results, "BLOCK_NEURONS", block)
        with Catalogue.open(tmp_path / f"{name}.db", create=True) as catalogue:
            run_scan(catalogue, tiny_model, params, batch_size=5)
        stored.append(_stored(tmp_path / f"{name}.db"))
    assert tiny_model.d_mlp > 7 and stored[0][1]
    assert stored[0] == stored[1]


def test_the_neuron_rows_built_from_columns_are_what_their_records_store(
    tiny_model, tiny_model_dir, tiny_corpus, tmp_path
):
    """The scan writes each neuron's row from arrays, without records: read back as records
    and written the record way, every row comes out the same."""
    params = scan_params(tiny_model_dir, tiny_corpus, correlations="layer")
    with Catalogue.open(tmp_path / "scan.db", create=True) as catalogue:
        run_scan(catalogue, tiny_model, params, batch_size=5)
        stored = list(catalogue.db.query("select * from neurons order by layer, neuron"))
    assert len(stored) == tiny_model.d_mlp * len(params.layers)
    for row in stored:
        facts = rows.NeuronFacts(
            row["layer"],
            row["neuron"],
            rows.stats_from_row(row),
            rows.weights_from_row(row),
            rows.related_from_row(row),
        )
        assert rows.neuron_facts(facts) == tuple(row[c] for c in rows.FACT_COLUMNS)


def test_the_scan_converts_activations_to_float16_bit_for_bit_as_the_catalogue_does():
    """results._as_stored (torch's conversion, on the scan's side) and rows.to_float16
    (numpy's, the catalogue's definition) give the same bits: ties to even, subnormals,
    values past float16's range clamped, infinities, NaN."""
    special = [0.0, -0.0, 1e-8, -3e-7, 6e-8, 65504.0, 65520.0, 1e6, -1e9, np.inf, -np.inf, np.nan]
    ties = [1 + k * 2.0**-11 for k in range(1, 8)]  # halfway between float16 neighbours
    bits = np.random.default_rng(0).integers(0, 2**32, 200_000, dtype=np.uint64)
    values = np.concatenate(
        [np.array(special + ties, dtype=np.float32), bits.astype(np.uint32).view(np.float32)]
    )
    ours = results._as_stored(torch.from_numpy(values)).view(np.uint16)
    theirs = rows.to_float16(values).view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(ours[~nan], theirs[~nan])
    assert np.isnan(ours[nan].view(np.float16)).all()
