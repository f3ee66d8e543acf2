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
  windows by index. Both keep the scan-time split order, so their interleaved slicing
  (train/calibration/valid/test) picks the same windows as ours when top_k is a multiple of 4.
- `mean`, `variance` (std squared), `skewness`, `kurtosis` (ours is excess kurtosis) from our
  stats; an undefined moment is null, as orjson writes their NaN.
- `random_sample_by_quantile`, `quantile_boundaries`: we keep no quantile samples: `[]`.
- One `ScoredExplanation` per top-and-random score that has per-window simulations (a label
  scored by several simulators or on several splits appears once per score; unscorable ones are
  left out). `ev_correlation_score` is our score (Pearson r over all tokens concatenated, their
  definition); per window, the window's own r, null when undefined.
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
from labeller.explain.scoring import correlation_score
from labeller.records import PRIMARY_METHOD


def _obj(name: str, **fields: Any) -> dict[str, Any]:
    return {"dataclass_name": name, **fields}


def neuron_id(layer: int, neuron: int) -> dict[str, Any]:
    return _obj("NeuronId", layer_index=layer, neuron_index=neuron)


def activation_record(tokens: list[str], activations: list[float]) -> dict[str, Any]:
    return _obj("ActivationRecord", tokens=tokens, activations=activations)


def neuron_record(stored: store.StoredNeuron) -> dict[str, Any]:
    stats = stored.stats
    return _obj(
        "NeuronRecord",
        neuron_id=neuron_id(stored.layer, stored.neuron),
        random_sample=[
            activation_record(e.example.tokens, e.example.activations)
            for e in stored.random_examples
        ],
        random_sample_by_quantile=[],
        quantile_boundaries=[],
        mean=stats.mean,
        variance=stats.std**2,
        skewness=stats.skewness,
        kurtosis=stats.kurtosis,
        most_positive_activation_records=[
            activation_record(e.example.tokens, e.example.activations) for e in stored.top_examples
        ],
    )


def simulation_results(stored: store.StoredNeuron) -> dict[str, Any] | None:
    """NeuronSimulationResults of the neuron's scored labels, or None when none is scored."""
    scored = []
    for stored_explanation in stored.explanations:
        explanation = stored_explanation.explanation
        for score in explanation.scores:
            windows = score.details.get("windows") if score.method is PRIMARY_METHOD else None
            if not windows:
                continue
            scored.append(
                _obj(
                    "ScoredExplanation",
                    explanation=explanation.text,
                    scored_simulation=_obj(
                        "ScoredSimulation",
                        scored_sequence_simulations=[_sequence(w) for w in windows],
                        ev_correlation_score=score.score,
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
