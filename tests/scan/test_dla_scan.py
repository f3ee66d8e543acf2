"""The scan's DLA windows against brute force over every window, and their merge across ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from builders import run_cli, scan_params

from labeller.catalogue import Catalogue
from labeller.corpus import iter_documents, iter_windows
from labeller.model.dla import trace_dla
from labeller.records import TOP_SPLITS
from labeller.scan.accumulators import DlaWindows, merge_top
from labeller.scan.runner import run_scan

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def dla_scanned(tiny_model, tiny_model_dir, tiny_corpus, tmp_path_factory):
    params = scan_params(tiny_model_dir, tiny_corpus, dla=True, band_windows=0)
    catalogue = Catalogue.open(tmp_path_factory.mktemp("dla") / "c.db", create=True)
    run_scan(catalogue, tiny_model, params, batch_size=5)
    windows = list(iter_windows(iter_documents(params.dataset), tiny_model.encode, params.ctx))
    per_layer: dict[int, list[np.ndarray]] = {layer: [] for layer in params.layers}
    for window in windows:
        for layer in params.layers:
            per_layer[layer].append(trace_dla(tiny_model, window.token_ids, layer)[1].numpy())
    return catalogue, params, windows, per_layer


def _brute_force(windows, dla, neuron: int, k: int, sign: float) -> list[tuple[float, str, int]]:
    """Distinct windows by their extreme DLA (sign 1: highest, -1: lowest), first seen first on
    ties, windows of one token (no DLA) left out."""
    seen: set[tuple[int, ...]] = set()
    found = []
    for order, (window, values) in enumerate(zip(windows, dla, strict=True)):
        key = tuple(window.token_ids)
        column = values[:-1, neuron]
        if key in seen or column.size == 0:
            continue
        seen.add(key)
        extreme = float(column.max() if sign > 0 else column.min())
        found.append((-sign * extreme, order, extreme, window.document, window.offset))
    found.sort()
    return [(e, d, o) for _, _, e, d, o in found[:k]]


def test_dla_windows_equal_brute_force(dla_scanned, tiny_model):
    catalogue, params, windows, dla = dla_scanned
    for layer in params.layers:
        for neuron in range(tiny_model.d_mlp):
            view = catalogue.neuron_view(None, layer, neuron)
            for examples, sign in ((view.dla_top_examples, 1.0), (view.dla_bottom_examples, -1.0)):
                expected = _brute_force(windows, dla[layer], neuron, params.top_k, sign)
                # Windows whose DLA ties to float rounding (same opening tokens) may swap places:
                # the values must match brute force, and each window must hold its value.
                assert len({(e.document, e.offset) for e in examples}) == len(examples)
                np.testing.assert_allclose(
                    [e.max_activation for e in examples], [v for v, _, _ in expected], rtol=1e-4
                )
                for rank, example in enumerate(examples):
                    assert example.split is TOP_SPLITS[rank % len(TOP_SPLITS)]
                    # the stored strip is the window's DLA (float16), 0 on its last token
                    window = next(
                        w
                        for w in windows
                        if (w.document, w.offset) == (example.document, example.offset)
                    )
                    truth = dla[layer][windows.index(window)][:, neuron]
                    extreme = truth[:-1].max() if sign > 0 else truth[:-1].min()
                    assert example.max_activation == pytest.approx(float(extreme), rel=1e-4)
                    np.testing.assert_allclose(
                        example.activations[:-1], truth[:-1], rtol=2e-3, atol=2e-3
                    )
                    assert example.activations[-1] == 0.0
                    assert example.activations[example.max_index] == example.max_activation


def test_show_json_has_dla_examples_and_overlap(dla_scanned, tiny_model_dir, tiny_corpus):
    catalogue, params, _, _ = dla_scanned
    import json

    result = run_cli(
        "show", "--db", catalogue.path, "--layer", "1", "--neuron", "3", "--format", "json"
    )
    data = json.loads(result.output)
    view = catalogue.neuron_view(None, 1, 3)
    assert len(data["dla_top_examples"]) == len(view.dla_top_examples) == params.top_k
    assert len(data["dla_bottom_examples"]) == params.top_k
    assert (
        data["dla_bottom_examples"][0]["max_activation"]
        < 0
        < data["dla_top_examples"][0]["max_activation"]
    )
    top = {(e["document"], e["offset"]) for e in data["top_examples"]}
    dla_top = {(e["document"], e["offset"]) for e in data["dla_top_examples"]}
    assert data["dla_top_overlap"] == pytest.approx(len(top & dla_top) / len(top | dla_top))
    text = run_cli("show", "--db", catalogue.path, "--layer", "1", "--neuron", "3").output
    assert "Top examples by direct logit attribution" in text
    assert "Bottom examples by direct logit attribution" in text


def test_dla_windows_merge_equals_one_pass():
    gen = torch.Generator().manual_seed(5)
    batches = []
    for b in range(10):
        hashes = torch.randint(1, 30, (6,), generator=gen)  # 0 marks an empty slot
        dla = torch.stack(
            [torch.randn(5, 7, generator=torch.Generator().manual_seed(int(h))) for h in hashes]
        )
        dla[:, -1, :] = math.nan  # no next token
        batches.append((dla, hashes, torch.arange(b * 6, (b + 1) * 6)))

    def feed(keep) -> DlaWindows:
        windows = DlaWindows(4, 7, 5, CPU)
        for dla, hashes, index in batches:
            rows = keep(index)
            if bool(rows.any()):
                windows.update(dla[rows], index[rows], hashes[rows])
        return windows

    whole = feed(lambda i: torch.ones_like(i, dtype=torch.bool))
    shards = [feed(lambda i, r=r: i % 3 == r) for r in range(3)]
    merged = DlaWindows(4, 7, 5, CPU)
    for at, half in enumerate(merged.halves()):
        half.load(merge_top([s.halves()[at].state() for s in shards], 4))
    expected, got = whole.state(), merged.state()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    # The bottom half holds true-signed minima, ascending.
    assert bool((got["bottom_values"][:-1] <= got["bottom_values"][1:]).all())


def test_dla_windows_given_the_tokens_without_dla_equal_the_nan_scan():
    """The scan tells DlaWindows which tokens have no DLA (the last of a window, padding) and
    lets it work in its buffers; that must keep what marking them NaN keeps."""
    gen = torch.Generator().manual_seed(11)
    by_nan, by_rows = DlaWindows(3, 5, 6, CPU), DlaWindows(3, 5, 6, CPU)
    for b in range(8):
        dla = torch.randn(4, 6, 5, generator=gen)
        lengths = torch.randint(1, 7, (4,), generator=gen)
        has_next = torch.arange(6)[None, :] < lengths[:, None] - 1
        marked = dla.masked_fill(~has_next[:, :, None], math.nan)
        index, hashes = torch.arange(b * 4, (b + 1) * 4), torch.randint(1, 20, (4,), generator=gen)
        by_nan.update(marked, index, hashes)
        no_dla = (~has_next).view(-1).nonzero().squeeze(1)
        by_rows.update(marked.clone(), index, hashes, torch.empty_like(dla), no_dla)
    expected, got = by_nan.state(), by_rows.state()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
