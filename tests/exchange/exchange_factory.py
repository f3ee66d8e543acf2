"""Catalogues for the export/import tests, built through the Catalogue API (no model, no torch).

Windows are shared between neurons, tokens include non-ASCII text, and labelled neurons carry LLM
labels with scores, human labels with accept/demote history, and an undo, so a round trip has
every kind of row to lose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from labeller.catalogue import Catalogue, labels
from labeller.catalogue.rows import ExampleRow, NeuronRow, WindowRow, encode_activations
from labeller.explain.service import build_scores, scored_windows
from labeller.records import (
    Example,
    ExampleKind,
    Histogram,
    LabelStatus,
    ModelRecord,
    NeuronStats,
    OutputToken,
    PredictionKind,
    ScanParams,
    ScoreWindows,
    Split,
    WeightFacts,
    band_edges,
    quantile_split,
    random_split,
    top_split,
)

WORDS = ["def", " main", "(", "):", " naïve", " café", " ∑", " 🙂", "\n", " return", " x", " 0"]
CTX = 8


def build_catalogue(
    path: Path,
    *,
    model: str = "tiny",
    layers: int = 2,
    neurons: int = 6,
    windows: int = 12,
    top_k: int = 4,
    random: int = 3,
    seed: int = 0,
    labelled: bool = True,
    n_layers: int | None = None,
) -> Path:
    """A catalogue of model `model` (`n_layers` deep, default `layers`) scanned on `layers`."""
    rng = np.random.default_rng(seed)
    with Catalogue.open(path, create=True) as catalogue:
        model_id = catalogue.upsert_model(
            ModelRecord(
                name=model,
                source="native-dir",
                n_layers=n_layers or layers,
                d_mlp=neurons,
                d_model=16,
                d_vocab=len(WORDS),
                act_fn="solu_ln",
                neuron_hook="blocks.{layer}.mlp.hook_post",
                created_at="2024-01-01T00:00:00+00:00",
                weights_fingerprint=f"sha256:{model}-weights",
            )
        )
        params = ScanParams(
            model=model,
            dataset="synthetic",
            layers=list(range(layers)),
            tokens=None,
            ctx=CTX,
            top_k=top_k,
            random=random,
            seed=seed,
            histogram_bins=4,
            band_windows=3,
        )
        scan_id = catalogue.create_scan(model_id, params)
        token_ids = rng.integers(0, len(WORDS), size=(windows, CTX))
        window_rows = [
            WindowRow(
                key=k,
                document=f"doc-{k // 3}",
                offset=(k % 3) * CTX,
                token_ids=[int(t) for t in token_ids[k]],
                tokens=[WORDS[t] for t in token_ids[k]],
            )
            for k in range(windows)
        ]
        acts = rng.normal(size=(layers, neurons, windows, CTX)).astype(np.float32)
        rows = []
        for layer in range(layers):
            for neuron in range(neurons):
                values = acts[layer, neuron]
                order = np.argsort(-values.max(axis=1), kind="stable")
                top = [int(k) for k in order[:top_k]]
                rand = [int(k) for k in rng.choice(windows, size=random, replace=False)]
                examples = [
                    _example(values[k], k, ExampleKind.TOP, r, top_split(r))
                    for r, k in enumerate(top)
                ] + [
                    _example(values[k], k, ExampleKind.RANDOM, r, random_split(r))
                    for r, k in enumerate(rand)
                ]
                flat = values.ravel()
                examples += _band_examples(values, float(flat.max()))
                rows.append(
                    NeuronRow(
                        layer=layer,
                        neuron=neuron,
                        stats=NeuronStats(
                            max=float(flat.max()),
                            min=float(flat.min()),
                            mean=float(flat.mean()),
                            std=float(flat.std()),
                            density=float((flat > 0).mean()),
                            skewness=0.1 * neuron,
                            kurtosis=None if neuron == 0 else 0.5,
                            tokens=int(flat.size),
                            histogram=Histogram(
                                low=float(flat.min()), high=float(flat.max()), counts=[1, 2, 3, 4]
                            ),
                        ),
                        weights=None
                        if neuron == 1
                        else WeightFacts(
                            w_in_w_out_cosine=0.25,
                            top_positive_tokens=[OutputToken(token=" café", weight=1.5)],
                            top_negative_tokens=[OutputToken(token="\n", weight=-2.0)],
                        ),
                        examples=examples,
                    )
                )
        catalogue.write_scan_results(
            scan_id, model_id, window_rows, rows, tokens_seen=windows * CTX, windows_seen=windows
        )
        if labelled:
            label(catalogue, model)
    return path


def _example(
    values: np.ndarray, key: int, kind: ExampleKind, rank: int, split: Split
) -> ExampleRow:
    return ExampleRow(
        window_key=key,
        kind=kind,
        rank=rank,
        split=split,
        activations=encode_activations(values),
        max_activation=float(values.max()),
        max_index=int(values.argmax()),
    )


def _band_examples(values: np.ndarray, top: float) -> list[ExampleRow]:
    """Up to three windows a band, as a scan samples them (the first by window index here)."""
    edges = band_edges(top)
    found: list[ExampleRow] = []
    for band in range(len(edges) - 1):
        width = edges[1] - edges[0]
        inside = [
            k
            for k in range(values.shape[0])
            if values[k].max() > 0 and min(len(edges) - 2, int(values[k].max() // width)) == band
        ][:3]
        for position, k in enumerate(inside):
            row = _example(values[k], k, ExampleKind.QUANTILE, len(found), quantile_split(position))
            found.append(row._replace(band=band, band_low=edges[band], band_high=edges[band + 1]))
    return found


def label(catalogue: Catalogue, model: str) -> None:
    """LLM labels with scores on 0.x, an accepted human label and an undo on 0.1."""
    for neuron in range(3):
        ref = catalogue.neuron_ref(model, 0, neuron)
        for k, text in enumerate([f"fires on token {neuron}", f"code, variant {neuron}"]):
            explanation_id = catalogue.add_explanation(
                ref,
                text,
                source="gpt-test",
                prompt_version="explainer-v1",
                producer_model="gpt-test",
            )
            assert explanation_id is not None
            add_scores(catalogue, model, 0, neuron, explanation_id, shift=k)
    ref = catalogue.neuron_ref(model, 0, 1)
    labels.write_label(
        catalogue,
        ref,
        "def keyword",
        status=LabelStatus.ACCEPTED,
        annotator="carol",
        expected_version=None,
    )
    labels.write_label(catalogue, ref, "function headers", annotator="carol", expected_version=None)
    labels.undo(catalogue, ref, annotator="carol", expected_version=None)


def add_scores(
    catalogue: Catalogue, model: str, layer: int, neuron: int, explanation_id: int, shift: int
) -> None:
    view = catalogue.neuron_view(model, layer, neuron)
    for on in (ScoreWindows.TOP_AND_RANDOM, ScoreWindows.QUANTILES):
        windows = scored_windows(view, Split.VALID, on)
        simulated = [[float((i + shift) % 3) for i, _ in enumerate(w.tokens)] for w in windows]
        catalogue.save_scores(
            explanation_id,
            build_scores(
                windows,
                simulated,
                "sim-test",
                "simulator-v1",
                Split.VALID,
                PredictionKind.EXPECTED_VALUE,
                on,
            ),
        )


def examples_of(catalogue: Catalogue, model: str, layer: int, neuron: int) -> list[Example]:
    view = catalogue.neuron_view(model, layer, neuron)
    return [*view.top_examples, *view.random_examples]
