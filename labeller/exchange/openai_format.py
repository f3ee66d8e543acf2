"""`labeller export --format openai`: OpenAI neuron-explainer's record layout (Bills et al. 2023).

JSON Lines, one object per line, each as neuron-explainer's `fast_dataclasses.dumps` writes its
dataclasses: every object carries `"dataclass_name"`, so their `loads(line)` rebuilds the class.
For each neuron, in (layer, neuron) order:

- a `NeuronRecord` line (their `collated-activations/{layer}/{neuron}.json` content), then
- a `NeuronSimulationResults` line if the neuron has a scored label (their
  `explanations/{layer}/{neuron}.jsonl` content).

To lay out their directory tree, write each line to the file its `neuron_id` and
`dataclass_name` name. Their `NeuronId` has no model, so this format takes one model.

Mapping and gaps:
- `most_positive_activation_records`: our top windows by rank; `random_sample`: our random
  windows by index, all of them, in scan order.
- `random_sample_by_quantile`: our activation-band windows, one list per band from the lowest
  (band i holds windows whose max lies in [boundaries[i], boundaries[i+1]); a band the corpus
  left empty is an empty list), each band's windows in sampling order, all splits;
  `quantile_boundaries`: the band edges, 0 to the neuron's max (one more than the bands). Our
  bands are equal-width activation bands, not quantiles of the activation distribution; both
  are null (their "quantile tracking disabled") when the scan kept no band windows.
- `mean`, `variance` (std squared), `skewness`, `kurtosis` (ours is excess kurtosis) from our
  stats; an undefined moment is null, as orjson writes their NaN.
- One `ScoredExplanation` per label, never two: its valid-split top-and-random score (valid is
  the split their `valid_activation_records` evaluates on), from an LLM simulator before the
  offline baseline, the newest first. Scores on calibration or test, and the other simulators'
  valid scores, are in `--format json` only; their record has no field to tell splits apart.
- Its `scored_sequence_simulations` are exactly the windows their default slicing
  (`ActivationRecordSliceParams(n_examples_per_split=None)`) calls valid, in their order: top
  ranks 2, 6, .. below 4 * (top count // 4), then random indices 1, 4, .. below
  3 * (random count // 3). Our scan's stride puts every such window in valid but, when a count
  is not a multiple of 4 (top) or 3 (random), also a few past the end of their slices (20
  random windows: 7 valid here, 6 there); those are dropped and `ev_correlation_score` is
  recomputed over the rest (Pearson r over all tokens concatenated, their definition; equal to
  our stored score when nothing is dropped). A score missing one of their valid windows is left
  out. Per window, the window's own r, null when undefined.
- `SequenceSimulation`: `expected_activations` are the simulator's 0-10 values
  (`activation_scale` "simulated_normalized_activations"); we keep no per-token distributions,
  so `distribution_values` / `distribution_probabilities` hold an empty list per token;
  `uncalibrated_simulation` null. `rsquared_score` / `absolute_dev_explained_score` need
  calibrated simulations, which we do not make: null.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TextIO

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store
from labeller.explain.baseline import SOURCE as BASELINE
from labeller.explain.scoring import correlation_score
from labeller.records import PRIMARY_METHOD, ExampleKind, Explanation, Score, Split, band_edges


def _obj(name: str, **fields: Any) -> dict[str, Any]:
    return {"dataclass_name": name, **fields}


def neuron_id(layer: int, neuron: int) -> dict[str, Any]:
    return _obj("NeuronId", layer_index=layer, neuron_index=neuron)


def activation_record(tokens: list[str], activations: list[float]) -> dict[str, Any]:
    return _obj("ActivationRecord", tokens=tokens, activations=activations)


def neuron_record(stored: store.StoredNeuron) -> dict[str, Any]:
    stats = stored.stats
    by_band, edges = quantile_fields(stored)
    return _obj(
        "NeuronRecord",
        neuron_id=neuron_id(stored.layer, stored.neuron),
        random_sample=[
            activation_record(e.example.tokens, e.example.activations)
            for e in stored.random_examples
        ],
        random_sample_by_quantile=by_band,
        quantile_boundaries=edges,
        mean=stats.mean,
        variance=stats.std**2,
        skewness=stats.skewness,
        kurtosis=stats.kurtosis,
        most_positive_activation_records=[
            activation_record(e.example.tokens, e.example.activations) for e in stored.top_examples
        ],
    )


def quantile_fields(
    stored: store.StoredNeuron,
) -> tuple[list[list[dict[str, Any]]] | None, list[float] | None]:
    """`random_sample_by_quantile` and `quantile_boundaries`: None, None with no band windows."""
    if not stored.quantile_examples:
        return None, None
    edges = band_edges(stored.stats.max)
    bands: list[list[dict[str, Any]]] = [[] for _ in range(max(len(edges) - 1, 0))]
    for e in stored.quantile_examples:
        band = e.example.band
        if band is not None and band < len(bands):
            bands[band].append(activation_record(e.example.tokens, e.example.activations))
    return bands, edges


def reference_valid_slices(n_top: int, n_random: int) -> tuple[list[int], list[int]]:
    """Top ranks and random indices that neuron-explainer's default slicing calls valid.

    Their `get_slices_for_splits`: n = count // splits per split, split i takes
    `slice(i, n * splits, splits)`; valid is split 2 of (train, calibration, valid, test) for
    top records and split 1 of (calibration, valid, test) for random ones."""
    return (
        list(range(2, (n_top // 4) * 4, 4)),
        list(range(1, (n_random // 3) * 3, 3)),
    )


def _chosen_score(explanation: Explanation) -> Score | None:
    """The label's one exported score: valid split, primary method, with per-window detail;
    an LLM simulator's before the baseline's, newest first."""
    candidates = [
        s
        for s in explanation.scores
        if s.method is PRIMARY_METHOD and s.split is Split.VALID and s.details.get("windows")
    ]
    candidates.sort(key=lambda s: (s.simulator != BASELINE, s.created_at), reverse=True)
    return candidates[0] if candidates else None


def _reference_windows(
    score: Score, top_ranks: list[int], random_indices: list[int]
) -> list[dict[str, Any]] | None:
    """The score's windows that their valid slice holds, in their order; None when one of
    theirs is missing."""
    by_key = {(w["kind"], w["rank"]): w for w in score.details["windows"]}
    wanted = [(ExampleKind.TOP.value, r) for r in top_ranks] + [
        (ExampleKind.RANDOM.value, i) for i in random_indices
    ]
    if any(key not in by_key for key in wanted):
        return None
    return [by_key[key] for key in wanted]


def simulation_results(stored: store.StoredNeuron) -> dict[str, Any] | None:
    """NeuronSimulationResults of the neuron's scored labels, the neuron's label first, or None
    when none is scored."""
    top_ranks, random_indices = reference_valid_slices(
        len(stored.top_examples), len(stored.random_examples)
    )
    scored = []
    # The neuron's label (`label_state`) first: neuron-explainer has no status field.
    ordered = sorted(stored.explanations, key=lambda e: e.id != stored.label_id)
    for stored_explanation in ordered:
        explanation = stored_explanation.explanation
        score = _chosen_score(explanation)
        if score is None:
            continue
        windows = _reference_windows(score, top_ranks, random_indices)
        if not windows:
            continue
        value = score.score
        if len(windows) != len(score.details["windows"]):
            value = correlation_score(
                [w["true"] for w in windows], [w["simulated"] for w in windows]
            )
        scored.append(
            _obj(
                "ScoredExplanation",
                explanation=explanation.text,
                scored_simulation=_obj(
                    "ScoredSimulation",
                    scored_sequence_simulations=[_sequence(w) for w in windows],
                    ev_correlation_score=value,
                    rsquared_score=None,
                    absolute_dev_explained_score=None,
                ),
            )
        )
    if not scored:
        return None
    return _obj(
        "NeuronSimulationResults",
        neuron_id=neuron_id(stored.layer, stored.neuron),
        scored_explanations=scored,
    )


def _sequence(window: dict[str, Any]) -> dict[str, Any]:
    tokens, true, simulated = window["tokens"], window["true"], window["simulated"]
    return _obj(
        "ScoredSequenceSimulation",
        simulation=_obj(
            "SequenceSimulation",
            tokens=tokens,
            expected_activations=simulated,
            activation_scale="simulated_normalized_activations",
            distribution_values=[[] for _ in tokens],
            distribution_probabilities=[[] for _ in tokens],
            uncalibrated_simulation=None,
        ),
        true_activations=true,
        ev_correlation_score=_window_score(true, simulated),
        rsquared_score=None,
        absolute_dev_explained_score=None,
    )


def _window_score(true: list[float], simulated: list[float]) -> float | None:
    try:
        return correlation_score([true], [simulated])
    except ValueError:  # lengths differ: no defined score for this window
        return None


def write_openai(
    catalogue: Catalogue,
    selection: store.Selection,
    out: TextIO,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Stream NeuronRecord (and NeuronSimulationResults) lines, neuron by neuron."""
    written = 0
    for stored in store.iter_neurons(catalogue, selection):
        out.write(json.dumps(neuron_record(stored)) + "\n")
        results = simulation_results(stored)
        if results is not None:
            out.write(json.dumps(results) + "\n")
        written += 1
        if on_progress:
            on_progress(written)
    return written
