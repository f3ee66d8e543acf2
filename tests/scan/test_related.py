"""`scan --correlations`: each neuron's related neurons against a brute-force Pearson r over
every scanned token, and a sharded scan's (DLA and correlations) against one process's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from builders import run_cli, scan_params, sharded_scan_worker

from labeller.catalogue import Catalogue
from labeller.corpus import iter_documents, iter_windows
from labeller.model.activations import trace_activations
from labeller.scan.correlations import RELATED_PER_SIDE, related_within
from labeller.scan.runner import run_scan


def _all_tokens(model, params) -> dict[int, np.ndarray]:
    windows = list(iter_windows(iter_documents(params.dataset), model.encode, params.ctx))
    return {
        layer: np.concatenate(
            [trace_activations(model, w.token_ids, layer).numpy() for w in windows]
        ).astype(np.float64)
        for layer in params.layers
    }


def _expected(r: np.ndarray, owners: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The top RELATED_PER_SIDE positive r (descending), then negative r (ascending)."""
    order = np.argsort(-r, kind="stable")
    positive = [owners[i] for i in order if r[i] > 0][:RELATED_PER_SIDE]
    negative = [owners[i] for i in order[::-1] if r[i] < 0][:RELATED_PER_SIDE]
    return positive + negative


@pytest.fixture(scope="module")
def correlated(tiny_model, tiny_model_dir, tiny_corpus, tmp_path_factory):
    params = scan_params(tiny_model_dir, tiny_corpus, correlations="adjacent", band_windows=0)
    catalogue = Catalogue.open(tmp_path_factory.mktemp("related") / "c.db", create=True)
    run_scan(catalogue, tiny_model, params, batch_size=5)
    return catalogue, params, _all_tokens(tiny_model, params)


def test_related_neurons_equal_brute_force(correlated, tiny_model):
    catalogue, _, acts = correlated
    n = tiny_model.d_mlp
    joint = np.corrcoef(np.concatenate([acts[0], acts[1]], axis=1).T)
    owners = [(layer, j) for layer in (0, 1) for j in range(n)]
    for layer in (0, 1):
        for neuron in (0, 5, n - 1):
            row = joint[layer * n + neuron].copy()
            row[layer * n + neuron] = np.nan  # not its own relative
            view = catalogue.neuron_view(None, layer, neuron)
            got = [(r.layer, r.neuron) for r in view.related_neurons]
            r_got = [r.r for r in view.related_neurons]
            # adjacent layers: layer 0 sees layer 1 and back
            assert got == _expected(np.nan_to_num(row, nan=0.0), owners)
            np.testing.assert_allclose(r_got, [row[o[0] * n + o[1]] for o in got], atol=1e-6)
            assert {o[0] for o in got} == {0, 1}


def test_show_json_lists_related_neurons_with_labels(correlated):
    catalogue, _, _ = correlated
    view = catalogue.neuron_view(None, 0, 5)
    first = view.related_neurons[0]
    ref = catalogue.neuron_ref(None, first.layer, first.neuron)
    catalogue.add_explanation(
        ref, "fires on commas", source="human", prompt_version=None, producer_model=None
    )
    data = json.loads(
        run_cli(
            "show", "--db", catalogue.path, "--layer", "0", "--neuron", "5", "--format", "json"
        ).output
    )
    assert data["related_neurons"][0]["label"] == "fires on commas"
    assert [(r["layer"], r["neuron"]) for r in data["related_neurons"]] == [
        (r.layer, r.neuron) for r in view.related_neurons
    ]
    text = run_cli("show", "--db", catalogue.path, "--layer", "0", "--neuron", "5").output
    assert "Related neurons" in text and "fires on commas" in text


def test_related_within_on_given_activations_equals_numpy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 12, generator=gen)
    x[:, 3] = x[:, 0] * 2 + 0.1 * torch.randn(200, generator=gen)  # a close relative of 0
    x[:, 7] = -x[:, 0]  # its opposite
    x[:, 9] = 1.0  # constant: no r, never listed
    got = related_within(x, 4, 0)
    with np.errstate(invalid="ignore"):  # the constant neuron's r is NaN
        r = np.corrcoef(x.numpy().astype(np.float64).T)[0]
    r[0], r[9] = np.nan, np.nan
    owners = [(4, j) for j in range(12)]
    assert [(g.layer, g.neuron) for g in got] == _expected(np.nan_to_num(r, nan=0.0), owners)
    assert got[0].neuron == 3 and next(g for g in got if g.r < 0).neuron == 7
    assert all(g.neuron != 9 for g in got)


@pytest.mark.slow
def test_sharded_dla_and_correlations_equal_one_process(
    tiny_model, tiny_model_dir, tiny_corpus, tmp_path
):
    params = scan_params(
        tiny_model_dir, tiny_corpus, band_windows=0, dla=True, correlations="adjacent"
    )
    with Catalogue.open(tmp_path / "one.db", create=True) as catalogue:
        run_scan(catalogue, tiny_model, params, batch_size=4)
    db = tmp_path / "two.db"
    for i, stop_after in enumerate((3, None)):  # interrupted, checkpointed, resumed
        torch.multiprocessing.spawn(
            sharded_scan_worker,
            args=(
                2,
                str(tmp_path / f"i{i}"),
                str(db),
                str(tiny_model_dir),
                params.model_dump_json(),
                4,
                stop_after,
            ),
            nprocs=2,
        )
    with Catalogue.open(tmp_path / "one.db") as one, Catalogue.open(db) as two:
        for layer in params.layers:
            for neuron in range(tiny_model.d_mlp):
                a, b = one.neuron_view(None, layer, neuron), two.neuron_view(None, layer, neuron)
                for left, right in (
                    (a.dla_top_examples, b.dla_top_examples),
                    (a.dla_bottom_examples, b.dla_bottom_examples),
                ):
                    np.testing.assert_allclose(
                        [e.max_activation for e in left],
                        [e.max_activation for e in right],
                        rtol=1e-5,
                    )
                np.testing.assert_allclose(
                    [r.r for r in a.related_neurons], [r.r for r in b.related_neurons], atol=1e-6
                )
