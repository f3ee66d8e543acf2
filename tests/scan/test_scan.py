"""The scan against brute force over every window of a small corpus."""

from __future__ import annotations

import itertools
import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import scan_params

from labeller.catalogue import Catalogue
from labeller.corpus import iter_documents, iter_windows
from labeller.errors import ScanInterrupted, UserError
from labeller.model.activations import batch_inputs, neuron_activations
from labeller.records import RANDOM_SPLITS, TOP_SPLITS
from labeller.scan import results, runner
from labeller.scan.runner import run_scan


def all_window_activations(model, params) -> tuple[list, dict[int, list[np.ndarray]]]:
    """Every window of the corpus and, per layer, its [tokens, d_mlp] activations, one by one."""
    windows = list(iter_windows(iter_documents(params.dataset), model.encode, params.ctx))
    per_layer: dict[int, list[np.ndarray]] = {layer: [] for layer in params.layers}
    for window in windows:
        ids, _ = batch_inputs(model, [window.token_ids])
        acts = neuron_activations(model, ids, params.layers)
        for layer in params.layers:
            per_layer[layer].append(acts[layer][0].numpy())
    return windows, per_layer


@pytest.fixture(scope="module")
def scanned(tiny_model, tiny_model_dir, tiny_corpus, tmp_path_factory):
    params = scan_params(tiny_model_dir, tiny_corpus)
    catalogue = Catalogue.open(tmp_path_factory.mktemp("scan") / "c.db", create=True)
    outcome = run_scan(catalogue, tiny_model, params, batch_size=5)
    windows, acts = all_window_activations(tiny_model, params)
    return catalogue, params, outcome, windows, acts


def test_top_k_equals_brute_force(scanned, tiny_model):
    catalogue, params, _, windows, acts = scanned
    for layer in params.layers:
        for neuron in range(tiny_model.d_mlp):
            seen: set[tuple[int, ...]] = set()
            candidates = []
            for window, a in zip(windows, acts[layer], strict=True):
                key = tuple(window.token_ids)
                if key in seen:
                    continue
                seen.add(key)
                candidates.append((float(a[:, neuron].max()), window))
            candidates.sort(key=lambda c: -c[0])
            expected = candidates[: params.top_k]
            view = catalogue.neuron_view(None, layer, neuron)
            got = [(e.max_activation, e.document, e.offset) for e in view.top_examples]
            assert len(got) == len(expected)
            np.testing.assert_allclose([g[0] for g in got], [e[0] for e in expected], rtol=1e-5)
            boundary = [c[0] for c in candidates[: params.top_k + 1]]
            # Where two windows tie (to float noise between batched and single runs), either
            # order is right; elsewhere the windows themselves must agree.
            distinct = all(a - b > 1e-5 * abs(a) + 1e-7 for a, b in itertools.pairwise(boundary))
            if distinct:
                assert [(g[1], g[2]) for g in got] == [
                    (e[1].document, e[1].offset) for e in expected
                ]


def test_stored_activations_and_splits(scanned, tiny_model):
    catalogue, params, _, windows, acts = scanned
    index = {(w.document, w.offset): i for i, w in enumerate(windows)}
    view = catalogue.neuron_view(None, 1, 7)
    for example in view.top_examples + view.random_examples:
        i = index[(example.document, example.offset)]
        expected = acts[1][i][:, 7]
        # Stored as float16 (relative error <= 2^-11), the max itself exact.
        np.testing.assert_allclose(example.activations, expected, rtol=2**-11, atol=1e-6)
        assert example.activations[example.max_index] == example.max_activation
        assert example.tokens == tiny_model.token_strings(windows[i].token_ids)
        assert example.max_index == int(np.argmax(expected))
    assert [e.split for e in view.top_examples] == [
        TOP_SPLITS[r % 4] for r in range(len(view.top_examples))
    ]
    assert [e.split for e in view.random_examples] == [
        RANDOM_SPLITS[r % 3] for r in range(params.random)
    ]


def test_random_windows_shared_by_every_neuron_of_a_layer(scanned, tiny_model):
    catalogue, params, _, _, _ = scanned
    sets = {
        tuple((e.document, e.offset) for e in catalogue.neuron_view(None, 0, n).random_examples)
        for n in range(tiny_model.d_mlp)
    }
    assert len(sets) == 1
    (windows,) = sets
    assert len(windows) == params.random == len(set(windows))


def test_statistics_match_numpy(scanned, tiny_model):
    catalogue, _, outcome, _, acts = scanned
    all_tokens = np.concatenate(acts[0], axis=0)
    assert outcome.tokens_seen == all_tokens.shape[0]
    for neuron in (0, 5, 31):
        x = all_tokens[:, neuron].astype(np.float64)
        stats = catalogue.neuron_view(None, 0, neuron).stats
        centred = x - x.mean()
        m2, m3, m4 = (centred**2).mean(), (centred**3).mean(), (centred**4).mean()
        assert stats.tokens == x.size
        assert stats.max == pytest.approx(x.max(), rel=1e-5)
        assert stats.min == pytest.approx(x.min(), rel=1e-5)
        assert stats.mean == pytest.approx(x.mean(), rel=1e-4, abs=1e-7)
        assert stats.std == pytest.approx(x.std(), rel=1e-4)
        assert stats.density == pytest.approx((x > 0).mean())
        assert stats.skewness == pytest.approx(m3 / m2**1.5, rel=1e-3)
        assert stats.kurtosis == pytest.approx(m4 / m2**2 - 3, rel=1e-3)
        hist = stats.histogram
        assert sum(hist.counts) == x.size
        assert hist.low <= x.min() and hist.high > x.max()
        edges = np.linspace(hist.low, hist.high, len(hist.counts) + 1)
        np.testing.assert_array_equal(np.histogram(x, bins=edges)[0], hist.counts)


def test_weight_facts(scanned, tiny_model):
    catalogue, *_ = scanned
    weights = catalogue.neuron_view(None, 0, 3).weights
    w_in = tiny_model.bridge.W_in[0][:, 3].detach()
    w_out = tiny_model.bridge.W_out[0][3].detach()
    cosine = float(torch.nn.functional.cosine_similarity(w_in, w_out, dim=0))
    assert weights.w_in_w_out_cosine == pytest.approx(cosine, rel=1e-5)
    logits = (w_out @ tiny_model.bridge.W_U).detach()
    assert len(weights.top_positive_tokens) == 10
    assert weights.top_positive_tokens[0].weight == pytest.approx(float(logits.max()), rel=1e-5)
    assert weights.top_negative_tokens[0].weight == pytest.approx(float(logits.min()), rel=1e-5)


def test_interrupt_and_resume_equals_uninterrupted(
    scanned, tiny_model, tiny_model_dir, tiny_corpus, tmp_path
):
    catalogue_full, params, outcome, _, _ = scanned
    catalogue = Catalogue.open(tmp_path / "resume.db", create=True)
    batches = iter(range(1000))
    with pytest.raises(ScanInterrupted):
        run_scan(
            catalogue, tiny_model, params, batch_size=5, stop_requested=lambda: next(batches) == 20
        )
    (scan,) = catalogue.scans()
    assert scan.status == "interrupted" and 0 < scan.tokens_seen < outcome.tokens_seen
    resumed = run_scan(catalogue, tiny_model, params, batch_size=7)
    assert resumed.resumed_from == scan.id
    assert resumed.tokens_seen == outcome.tokens_seen
    assert [s.status for s in catalogue.scans()] == ["complete"]
    for layer, neuron in ((0, 0), (1, 40)):
        a = catalogue_full.neuron_view(None, layer, neuron)
        b = catalogue.neuron_view(None, layer, neuron)
        assert [(e.document, e.offset, e.activations) for e in a.top_examples] == [
            (e.document, e.offset, e.activations) for e in b.top_examples
        ]
        assert [(e.document, e.offset) for e in a.random_examples] == [
            (e.document, e.offset) for e in b.random_examples
        ]
        assert a.stats.histogram == b.stats.histogram
        assert a.stats.mean == pytest.approx(b.stats.mean, rel=1e-6)


def test_unusable_checkpoint_starts_clean(tiny_model, tiny_model_dir, tiny_corpus, tmp_path):
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=600)
    catalogue = Catalogue.open(tmp_path / "c.db", create=True)
    with pytest.raises(ScanInterrupted):
        run_scan(catalogue, tiny_model, params, batch_size=4, stop_requested=lambda: True)
    (scan,) = catalogue.scans()
    catalogue.checkpoint_path(scan.id).write_bytes(b"garbage")
    outcome = run_scan(catalogue, tiny_model, params, batch_size=4)
    assert outcome.resumed_from is None
    assert any("starting clean" in note for note in outcome.notes)
    assert outcome.tokens_seen == 600
    assert [s.status for s in catalogue.scans()] == ["complete"]


def test_tokens_limit_is_exact(tiny_model, tiny_model_dir, tiny_corpus, tmp_path):
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=123, layers=[1])
    catalogue = Catalogue.open(tmp_path / "c.db", create=True)
    outcome = run_scan(catalogue, tiny_model, params, batch_size=4)
    assert outcome.tokens_seen == 123
    assert catalogue.neuron_view(None, 1, 0).stats.tokens == 123
    with pytest.raises(UserError, match="has not been scanned"):
        catalogue.neuron_view(None, 0, 0)


def test_windows_never_span_documents(tiny_model, tmp_path):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "a.txt").write_text("alpha " * 5)
    (corpus / "b.txt").write_text("beta " * 40)
    windows = list(iter_windows(iter_documents(str(corpus)), tiny_model.encode, 16))
    for window in windows:
        text = tiny_model.tokenizer.decode(window.token_ids)
        assert ("alpha" in text) != ("beta" in text)
    assert all(len(w.token_ids) <= 16 for w in windows)
    assert math.fsum(len(w.token_ids) for w in windows) == len(
        tiny_model.encode("alpha " * 5)
    ) + len(tiny_model.encode("beta " * 40))


def test_rescan_keeps_explanations(tiny_model, tiny_model_dir, tiny_corpus, tmp_path):
    params = scan_params(tiny_model_dir, tiny_corpus, tokens=300)
    catalogue = Catalogue.open(tmp_path / "c.db", create=True)
    run_scan(catalogue, tiny_model, params, batch_size=4)
    neuron_id = catalogue.db.execute(
        "select id from neurons where layer=0 and neuron=2"
    ).fetchone()[0]
    catalogue.db["explanations"].insert(
        {
            "neuron_id": neuron_id,
            "text": "fires on x",
            "source": "human",
            "status": "accepted",
            "created_at": "2026-01-01T00:00:00+00:00",
        }
    )
    run_scan(catalogue, tiny_model, params.model_copy(update={"tokens": 400}), batch_size=4)
    view = catalogue.neuron_view(None, 0, 2)
    assert view.stats.tokens == 400
    assert [e.text for e in view.explanations] == ["fires on x"]
    assert len(view.top_examples) == params.top_k


def test_scan_file_catalogue_roundtrip_bytes(scanned):
    catalogue, *_ = scanned
    assert Path(catalogue.path).stat().st_size > 0


def test_weight_facts_made_early_stop_at_the_first_forward_pass(
    tiny_model, monkeypatch: pytest.MonkeyPatch
):
    """The start-up thread makes layers' weight facts in order and stops once the forward
    pass has begun (here: set while the first layer's are made)."""
    begun = threading.Event()
    made = []

    def first_then_begin(model, layer):
        made.append(layer)
        begun.set()
        return results.stored_weight_facts(model, layer)

    monkeypatch.setattr(runner, "stored_weight_facts", first_then_begin)
    early = runner._weights_until(tiny_model, [0, 1], begun)
    assert made == [0] and list(early) == [0]
    assert early[0] == results.stored_weight_facts(tiny_model, 0)


def test_the_write_stores_the_weight_facts_made_early_and_makes_the_rest(
    tiny_model, tiny_model_dir, tiny_corpus, tmp_path
):
    params = scan_params(tiny_model_dir, tiny_corpus)
    scanner = runner.Scanner(tiny_model, params)
    windows = list(iter_windows(iter_documents(params.dataset), tiny_model.encode, params.ctx))
    scanner.process(windows[:5])
    n = tiny_model.d_mlp
    marked = results.StoredWeightFacts([0.25] * n, ['[["a", 1.5]]'] * n, ['[["b", -1.5]]'] * n)
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        model_id = catalogue.upsert_model(tiny_model.record())
        scan_id = catalogue.create_scan(model_id, params)
        scanner.write_results(catalogue, scan_id, model_id, weights={0: marked})
        first = catalogue.neuron_view(None, 0, 3).weights
        second = catalogue.neuron_view(None, 1, 3).weights
    assert first.w_in_w_out_cosine == 0.25
    assert [t.token for t in first.top_positive_tokens] == ["a"]
    late = results.stored_weight_facts(tiny_model, 1)
    assert second.w_in_w_out_cosine == late.cosine[3]
    assert len(second.top_positive_tokens) == 10


@pytest.mark.parametrize("work", ["weight facts", "fingerprint"])
def test_a_scan_that_stops_early_waits_for_its_background_threads(
    work, tiny_model, tiny_model_dir, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """No thread is left inside torch when the scan returns (an empty corpus here): a scan
    that found nothing to do exited while the fingerprint's thread still read the weights,
    and the process aborted at exit (SIGABRT)."""
    busy = threading.Event()

    def slowly(make):
        def made(*args):
            busy.set()
            time.sleep(0.3)
            busy.clear()
            return make(*args)

        return made

    if work == "weight facts":
        monkeypatch.setattr(runner, "stored_weight_facts", slowly(results.stored_weight_facts))
    else:
        monkeypatch.setattr(tiny_model, "record", slowly(tiny_model.record))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with (
        Catalogue.open(tmp_path / "c.db", create=True) as catalogue,
        pytest.raises(UserError, match="is empty"),
    ):
        run_scan(catalogue, tiny_model, scan_params(tiny_model_dir, empty))
    assert not busy.is_set()
