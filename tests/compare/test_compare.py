"""`labeller compare` as a user runs it, and the numbers it reports checked against direct
computations on the tiny test models."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from builders import labelled_catalogue, run_cli

from labeller.compare.collect import comparison_windows, gather
from labeller.compare.report import label_agreement
from labeller.model.activations import trace_activations
from labeller.records import BestMatches, LayerComparison

ARGS = ("--ctx", "16", "--batch-size", "4", "--tokens", "1200", "--sample-tokens", "500")


@pytest.fixture(scope="module")
def labelled_db(tmp_path_factory, tiny_model, tiny_corpus) -> Path:
    return labelled_catalogue(
        tmp_path_factory.mktemp("compare") / "c.db", tiny_model, tiny_corpus, [1]
    )


def test_a_model_against_itself_matches_every_neuron_to_itself(
    tmp_path, tiny_model_dir, tiny_corpus, labelled_db
) -> None:
    out = tmp_path / "report"
    model = str(tiny_model_dir)
    result = run_cli(
        "compare",
        *("--model", model, "--model", model, "--dataset", tiny_corpus, *ARGS),
        *("--layers", "1", "--db", labelled_db, "-o", out),
    )
    assert "median best-match r 1.000" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["tokens"] == report["windows"] * 16 >= 1200
    assert report["shuffled_tokens"] == report["tokens"] - 4 * 16  # all but the first batch
    (layer,) = report["layers"]
    matches = layer["a_to_b"]
    live = [n for n, r in enumerate(matches["r"]) if r is not None]
    assert len(live) > 40
    assert all(matches["match"][n] == n and matches["r"][n] > 1 - 1e-9 for n in live)
    assert matches["same_index"] == 1.0 and layer["mutual"] == len(live)
    assert matches["shuffled_median_r"] < 0.9 < matches["median_r"]
    stages = {s["stage"] for s in layer["distributions"][0]["stages"]}
    assert stages == {"pre", "neuron", "post", "ln_scale"}  # the tiny model is SoLU-LN
    # the catalogue's labels: both sides are the same neurons, so every label agrees with itself
    agreement = layer["agreement"]
    assert agreement["pairs"] == len(live) and agreement["agreeing"] == 1.0
    rates_a, rates_b = report["label_rates"]
    assert rates_a == rates_b and rates_a["labelled"] == 48 and rates_a["scored"] > 0
    assert rates_a["kurtosis_score_neurons"] == rates_a["scored"] - (48 - len(live))
    markdown = (out / "report.md").read_text()
    for name in ("best_match_L1.png", "shape_L1.png", "stages_L1.png", "label_rates.png"):
        assert f"]({name})" in markdown
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_says_when_a_model_has_no_scores_or_is_not_in_the_catalogue(
    tmp_path, tiny_model_dir, tiny_hf_dir, tiny_corpus, labelled_db
) -> None:
    out = tmp_path / "report"
    run_cli(
        "compare",
        *("--model", tiny_model_dir, "--model", tiny_hf_dir, "--dataset", tiny_corpus, *ARGS),
        *("--layers", "0", "--db", labelled_db, "-o", out),
    )
    report = json.loads((out / "report.json").read_text())
    scanned, absent = report["label_rates"]
    assert scanned["scored"] == 0 and "has no valid-split scores" in scanned["note"]
    assert absent["labelled"] == 0 and "is not in the catalogue" in absent["note"]
    assert report["layers"][0]["agreement"]["pairs"] == 0
    markdown = (out / "report.md").read_text()
    assert "has no valid-split scores" in markdown and "No matched pair has labels" in markdown
    assert "label_rates.png" not in markdown and not (out / "label_rates.png").exists()


def test_best_match_r_is_the_pearson_r_of_the_two_models_traces(
    tiny_model, tiny_hf_dir, tiny_corpus
) -> None:
    """A SoLU and a GELU model (same tokenizer): every pair's r from the accumulated sums equals
    np.corrcoef over the same tokens, traced one window at a time."""
    from labeller.compare.collect import compare_layer
    from labeller.model.loading import load_model

    gpt2 = load_model(str(tiny_hf_dir), device="cpu")
    windows = comparison_windows(tiny_model, str(tiny_corpus), 400, 16, seed=3)
    gathered = gather(tiny_model, gpt2, windows, [0], batch_size=5, sample_tokens=100)
    x = torch.cat([trace_activations(tiny_model, w, 0) for w in windows]).double()
    y = torch.cat([trace_activations(gpt2, w, 0) for w in windows]).double()
    joint = torch.corrcoef(torch.cat([x, y], dim=1).T)[: x.shape[1], x.shape[1] :]
    r = gathered.layers[0].same_tokens.correlation()
    live = ~joint.isnan()
    assert torch.allclose(r[live], joint[live], atol=1e-6)
    layer = compare_layer(0, gathered.layers[0], tiny_model.name, gpt2.name)
    best = joint.nan_to_num(nan=-2).amax(dim=1)
    assert [v for v in layer.a_to_b.r if v is not None] == pytest.approx(
        best[best > -2].tolist(), abs=1e-6
    )
    gelu_stages = {s.stage for s in layer.distributions[1].stages}
    assert gelu_stages == {"pre", "neuron"}  # no LayerNorm scale, post is the neuron


def test_models_with_different_tokenizers_are_refused(tiny_model_dir, tiny_corpus) -> None:
    result = run_cli(
        "compare",
        *("--model", tiny_model_dir, "--model", "demo-gelu-1l", "--dataset", tiny_corpus),
        ok=False,
    )
    assert result.exit_code != 0
    assert "different tokenizers" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (("demo-gelu-1l",), "--model exactly twice"),
        (("demo-gelu-1l", "no-such-model/at/all"), "no model directory"),
    ],
)
def test_bad_model_arguments_are_one_line_errors(tmp_path, models, message) -> None:
    args = [v for m in models for v in ("--model", m)]
    result = run_cli("compare", *args, "-o", tmp_path / "out", ok=False)
    assert result.exit_code != 0 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_matplotlib_is_a_one_line_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("compare", "--model", "demo-gelu-1l", "--model", "demo-solu-1l", ok=False)
    assert result.exit_code != 0
    assert "pip install 'labeller[plots]'" in result.output


def test_label_agreement_against_randomly_paired_labels() -> None:
    n = 6
    matches = BestMatches(
        source="a",
        target="b",
        match=[*range(n - 1), None],
        r=[0.9] * (n - 1) + [None],
        shuffled_r=[0.1] * n,
        median_r=0.9,
        shuffled_median_r=0.1,
        shuffled_p99=0.1,
        above_shuffled_p99=1.0,
        same_index=1.0,
    )
    layer = LayerComparison(layer=0, a_to_b=matches, b_to_a=matches, mutual=5, distributions=[])
    topics = ["commas", "brackets", "numbers", "quotes", "keywords", "indents"]
    labels_a = {(0, i): f"fires on {t}" for i, t in enumerate(topics)}
    labels_b = {(0, i): f"fires on {t} mostly" for i, t in enumerate(topics)}
    del labels_b[0, 4]  # a pair without a label on one side does not count
    agreement = label_agreement(layer, labels_a, labels_b, seed=1)
    assert agreement.pairs == 4
    # "fires", "on" and "mostly" are in most labels and say nothing: each pair shares its topic
    assert agreement.mean_jaccard == 1.0 and agreement.agreeing == 1.0
    assert agreement.baseline_mean_jaccard is not None and agreement.baseline_mean_jaccard < 1.0
    assert [e[:2] for e in agreement.examples] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert not math.isnan(agreement.baseline_mean_jaccard)


def test_kurtosis_against_score_is_a_rank_correlation_over_neurons_with_both() -> None:
    from labeller.compare.report import kurtosis_score_correlation
    from labeller.records import Histogram, ModelLayerDistributions, StageDistribution

    def layer_with(kurtosis: list[float | None]) -> LayerComparison:
        stage = StageDistribution(
            stage="neuron",
            hook="h",
            kurtosis=kurtosis,
            skewness=[0.0] * len(kurtosis),
            near_zero=[0.0] * len(kurtosis),
            histogram=Histogram(low=0, high=1, counts=[1]),
        )
        side = ModelLayerDistributions(model="m", stages=[stage])
        matches = BestMatches(
            source="m",
            target="m",
            match=[None] * len(kurtosis),
            r=[None] * len(kurtosis),
            shuffled_r=[None] * len(kurtosis),
            median_r=None,
            shuffled_median_r=None,
            shuffled_p99=None,
            above_shuffled_p99=0.0,
            same_index=0.0,
        )
        return LayerComparison(
            layer=2, a_to_b=matches, b_to_a=matches, mutual=0, distributions=[side, side]
        )

    scores = {(2, n): s for n, s in enumerate([0.1, 0.2, 0.3, 0.4, 0.5])}
    rising = layer_with([1.0, 8.0, 27.0, None, 125.0])  # monotone but not linear; one undefined
    assert kurtosis_score_correlation([rising], 1, scores) == (pytest.approx(1.0), 4)
    falling = layer_with([5.0, 4.0, 4.0, 2.0, 1.0])  # a tie shares its mean rank
    r, n = kurtosis_score_correlation([falling], 0, scores)
    assert n == 5 and r == pytest.approx(-0.9746794344808963)
    assert kurtosis_score_correlation([rising], 0, {(2, 0): 0.5}) == (None, 1)
