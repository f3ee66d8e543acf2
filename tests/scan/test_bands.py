"""Activation-band samples: exact against brute force, deterministic, resumable."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from builders import scan_params
from test_scan import all_window_activations

from labeller.catalogue import Catalogue
from labeller.errors import ScanInterrupted
from labeller.records import TOP_SPLITS, ExampleKind, band_edges, band_width
from labeller.scan.accumulators import BandSample
from labeller.scan.runner import run_scan, window_keys


def brute_force_bands(maxes: np.ndarray, priorities: list[int], m: int) -> dict[int, dict]:
    """Per neuron, per band: the m windows of smallest priority among those (distinct by
    priority, i.e. by tokens) whose max falls in the band; bands from the neuron's final max."""
    result = {}
    for n in range(maxes.shape[1]):
        column = maxes[:, n]
        width = band_width(float(column.max()))
        bands: dict[int, list[int]] = {}
        seen: set[int] = set()
        if width is not None:
            for i in sorted(range(len(priorities)), key=lambda i: (priorities[i], i)):
                if column[i] <= 0 or priorities[i] in seen:
                    continue
                seen.add(priorities[i])
                band = min(7, math.floor(float(column[i]) / width))
                if len(bands.setdefault(band, [])) < m:
                    bands[band].append(i)
        result[n] = bands
    return result


@pytest.mark.parametrize("batch", [1, 7, 64, 500])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_band_sample_equals_brute_force(batch, seed):
    """Any batching of a stream whose max keeps growing (bins merge many times), with a repeated
    window and a neuron that never fires, gives exactly the brute-force sample."""
    windows, width, neurons, m = 500, 5, 7, 3
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(windows, width, neurons, generator=g)
    acts *= torch.exp(2 * torch.randn(1, 1, neurons, generator=g))
    acts *= torch.linspace(0.01, 3, windows)[:, None, None]
    acts[:, :, 0] = -1.0
    rng = random.Random(seed)
    priorities = [rng.randrange(-(2**63), 2**63 - 1) for _ in range(windows)]
    priorities[50], acts[50] = priorities[10], acts[10]
    bands = BandSample(m, 8, neurons, width, torch.device("cpu"))
    for start in range(0, windows, batch):
        rows = slice(start, min(windows, start + batch))
        a = acts[rows]
        bands.update(
            a, a.amax(dim=1), torch.arange(rows.start, rows.stop), torch.tensor(priorities[rows])
        )
    expected = brute_force_bands(acts.amax(dim=1).numpy(), priorities, m)
    for n in range(neurons):
        got: dict[int, list[int]] = {}
        for band, slot, value, index in bands.bands(n):
            got.setdefault(band, []).append(index)
            assert torch.equal(bands.acts[slot, n], acts[index, :, n])
            assert value == float(acts[index, :, n].max())
        assert got == expected[n]
    assert expected[0] == {} and 50 not in {i for b in expected[3].values() for i in b}


def test_band_edges():
    assert band_edges(0.0) == [] and band_edges(-1.0) == [] and band_edges(math.nan) == []
    assert band_edges(2.9) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 2.9]  # w 0.5: 6 bands
    # a max on an edge is alone in the top band, [max, max]
    assert band_edges(4.0) == [0.0, 1.0, 2.0, 3.0, 4.0, 4.0]
    for value in (1e-3, 0.7, 1.0, 5.9, 123.0):
        edges = band_edges(value)
        assert 6 <= len(edges) <= 9 and edges[-1] == value and edges[-2] <= value


@pytest.fixture(scope="module")
def scanned(tiny_model, tiny_model_dir, tiny_corpus, tmp_path_factory):
    params = scan_params(tiny_model_dir, tiny_corpus, band_windows=3)
    catalogue = Catalogue.open(tmp_path_factory.mktemp("bands") / "c.db", create=True)
    run_scan(catalogue, tiny_model, params, batch_size=5)
    windows, acts = all_window_activations(tiny_model, params)
    return catalogue, params, windows, acts


def test_scan_bands_equal_brute_force(scanned, tiny_model):
    """Each neuron's band windows are those brute force picks from every window of the corpus,
    wherever no window's max sits within float noise of a band edge (batched and one-by-one
    forward passes differ in the last bits)."""
    catalogue, params, windows, acts = scanned
    priorities = [window_keys(w.token_ids, params.seed)[1] for w in windows]
    place = {(w.document, w.offset): i for i, w in enumerate(windows)}
    checked = 0
    for layer in params.layers:
        maxes = np.stack([a.max(axis=0) for a in acts[layer]])
        expected = brute_force_bands(maxes, priorities, params.band_windows)
        for neuron in range(tiny_model.d_mlp):
            view = catalogue.neuron_view(None, layer, neuron)
            edges = band_edges(view.stats.max)
            got: dict[int, list[int]] = {}
            for e in view.quantile_examples:
                assert e.kind is ExampleKind.QUANTILE
                assert (e.band_low, e.band_high) == (edges[e.band], edges[e.band + 1])
                assert e.band_low <= e.max_activation <= e.band_high
                i = place[(e.document, e.offset)]
                np.testing.assert_allclose(
                    e.activations, acts[layer][i][:, neuron], rtol=2**-11, atol=1e-6
                )  # stored as float16
                got.setdefault(e.band, []).append(i)
            ranks = [e.rank for e in view.quantile_examples]
            assert ranks == list(range(len(ranks)))
            column = maxes[:, neuron]
            inner = np.asarray(edges[1:-1])[None, :]
            if (np.abs(column[:, None] - inner) <= 1e-5 * max(1.0, view.stats.max)).any():
                continue
            assert got == expected[neuron]
            checked += 1
    assert checked > tiny_model.d_mlp  # most neurons are checked exactly


def test_band_splits_interleave_within_each_band(scanned):
    catalogue, *_ = scanned
    view = catalogue.neuron_view(None, 0, 3)
    assert view.quantile_examples
    positions: dict[int, int] = {}
    for e in view.quantile_examples:
        at = positions.get(e.band, 0)
        positions[e.band] = at + 1
        assert e.split is TOP_SPLITS[at % 4]


def test_bands_deterministic_per_seed(scanned, tiny_model, tiny_model_dir, tiny_corpus, tmp_path):
    catalogue, params, *_ = scanned

    def places(c, layer=1, neuron=5):
        return [
            (e.band, e.document, e.offset)
            for e in c.neuron_view(None, layer, neuron).quantile_examples
        ]

    again = Catalogue.open(tmp_path / "again.db", create=True)
    run_scan(again, tiny_model, params, batch_size=9)
    assert places(again) == places(catalogue)
    other = Catalogue.open(tmp_path / "other.db", create=True)
    run_scan(other, tiny_model, params.model_copy(update={"seed": 7}), batch_size=5)
    assert any(places(other, 1, n) != places(catalogue, 1, n) for n in range(8))


def test_bands_off(tiny_model, tiny_model_dir, tiny_corpus, tmp_path):
    params = scan_params(tiny_model_dir, tiny_corpus, band_windows=0, tokens=300)
    catalogue = Catalogue.open(tmp_path / "c.db", create=True)
    run_scan(catalogue, tiny_model, params, batch_size=4)
    assert catalogue.neuron_view(None, 0, 0).quantile_examples == []


def test_resume_keeps_bands(scanned, tiny_model, tmp_path):
    catalogue_full, params, *_ = scanned
    catalogue = Catalogue.open(tmp_path / "resume.db", create=True)
    batches = iter(range(1000))
    with pytest.raises(ScanInterrupted):
        run_scan(
            catalogue, tiny_model, params, batch_size=5, stop_requested=lambda: next(batches) == 20
        )
    run_scan(catalogue, tiny_model, params, batch_size=7)
    for layer in params.layers:
        for neuron in range(0, tiny_model.d_mlp, 5):
            a = catalogue_full.neuron_view(None, layer, neuron).quantile_examples
            b = catalogue.neuron_view(None, layer, neuron).quantile_examples
            assert a == b
