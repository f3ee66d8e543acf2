"""`labeller export --format neuronpedia`: labels and activations as Neuronpedia's bulk exports.

JSON Lines with the columns Neuronpedia's own exporter (`neuronpedia-utils/export-data.py`) writes
to `{model}/{source}/explanations/batch-N.jsonl.gz` and `.../activations/batch-N.jsonl.gz`. Both
kinds share one stream, per neuron in (model, layer, neuron) order: its explanation lines, then its
activation lines. Split them by field: explanation lines have `description`, activation lines
have `values` (e.g. `jq -c 'select(has("description"))'`).

Explanation line (one per exported label):
    id                     stable id: hash of model, layer, neuron, source and text
    modelId                our model name
    layer                  Neuronpedia's source id for MLP neurons: the bare layer number
                           ("5"); their `isNeuronLayerSource` takes an integer id as a layer of
                           the model's `neurons` source set
    index                  the neuron, as a string (Neuronpedia keys are strings)
    authorId               the annotator, else "labeller"
    description            the label text
    embedding              null (Neuronpedia computes it)
    typeName               how it was made: "labeller_{prompt version}", or "labeller_{source}"
    explanationModelName   the LLM that wrote it; null for people and the offline baseline
    umap_x, umap_y, umap_cluster, umap_log_feature_sparsity   null

Activation line (one per stored window: top windows by rank, random ones, then band windows):
    id                     stable id: hash of model, layer, neuron, kind, rank, document, offset
    modelId, layer, index  as above
    creatorId              "labeller"
    dataSource             the scanned dataset
    tokens, values         the window's tokens and this neuron's activations
    maxValue, minValue, maxValueTokenIndex   over the window
    dfaValues []           dfaMaxValue, dfaTargetIndex null (attention only)
    binMin, binMax         a band window's band edges (its max lies in [binMin, binMax));
                           null for top and random windows
    binContains            null (we do not count what share of windows falls in a band)

What Neuronpedia's importer (`apps/webapp/app/api/admin/import`) still needs on their side:
it reads one directory per model and source, `{model}/{source}/` with `model.jsonl`,
`sourceset.jsonl`, `source.jsonl`, `features/`, `activations/` and `explanations/` batches, and
takes each batch's columns from its first line; split this stream by field into those batch
files. The Model, SourceSet ("neurons") and Source rows and the Neuron (feature) rows that the
foreign keys need are not written here. `authorId` / `creatorId` must be ids of users in their
database (their own exporter replaces them with one default creator id) and `typeName` an
existing ExplanationType: map ours ("carol", "labeller", "labeller_...") to theirs on import.
Neuronpedia's MLP-neuron model ids are their own (e.g. "gpt2-small"): map `modelId` too.

Scores, statuses and history have no Neuronpedia column; use `--status accepted` to send only
labels a person accepted, and `--format json` to keep everything.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TextIO

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store

CREATOR = "labeller"
EXPLANATION_FIELDS = (
    "id",
    "modelId",
    "layer",
    "index",
    "authorId",
    "description",
    "embedding",
    "typeName",
    "explanationModelName",
    "umap_x",
    "umap_y",
    "umap_cluster",
    "umap_log_feature_sparsity",
)
ACTIVATION_FIELDS = (
    "id",
    "modelId",
    "layer",
    "index",
    "creatorId",
    "dataSource",
    "tokens",
    "maxValue",
    "minValue",
    "values",
    "maxValueTokenIndex",
    "dfaValues",
    "dfaMaxValue",
    "dfaTargetIndex",
    "binContains",
    "binMin",
    "binMax",
)


NEURONS_SOURCE_SET = "neurons"


def source_id(layer: int) -> str:
    """Neuronpedia names a layer of MLP neurons by its number alone (source set `neurons`)."""
    return str(layer)


def _stable_id(*parts: object) -> str:
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
    return f"lbl{digest[:22]}"


def explanation_lines(stored: store.StoredNeuron) -> list[dict[str, Any]]:
    lines = []
    for stored_explanation in stored.explanations:
        e = stored_explanation.explanation
        method = e.prompt_version or e.source
        lines.append(
            {
                "id": _stable_id(stored.model, stored.layer, stored.neuron, e.source, e.text),
                "modelId": stored.model,
                "layer": source_id(stored.layer),
                "index": str(stored.neuron),
                "authorId": e.annotator or CREATOR,
                "description": e.text,
                "embedding": None,
                "typeName": f"labeller_{method}",
                "explanationModelName": e.producer_model,
                "umap_x": None,
                "umap_y": None,
                "umap_cluster": None,
                "umap_log_feature_sparsity": None,
            }
        )
    return lines


def activation_lines(stored: store.StoredNeuron, dataset: str | None) -> list[dict[str, Any]]:
    lines = []
    for stored_example in (
        *stored.top_examples,
        *stored.random_examples,
        *stored.quantile_examples,
    ):
        x = stored_example.example
        values = x.activations
        lines.append(
            {
                "id": _stable_id(
                    stored.model,
                    stored.layer,
                    stored.neuron,
                    x.kind.value,
                    x.rank,
                    x.document,
                    x.offset,
                ),
                "modelId": stored.model,
                "layer": source_id(stored.layer),
                "index": str(stored.neuron),
                "creatorId": CREATOR,
                "dataSource": dataset,
                "tokens": x.tokens,
                "maxValue": max(values) if values else x.max_activation,
                "minValue": min(values) if values else x.max_activation,
                "values": values,
                "maxValueTokenIndex": x.max_index,
                "dfaValues": [],
                "dfaMaxValue": None,
                "dfaTargetIndex": None,
                "binContains": None,
                "binMin": x.band_low,
                "binMax": x.band_high,
            }
        )
    return lines


def write_neuronpedia(
    catalogue: Catalogue,
    selection: store.Selection,
    out: TextIO,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Stream explanation and activation lines, neuron by neuron."""
    datasets = {s.id: s.params.dataset for s in store.scans_for(catalogue, selection)}
    written = 0
    for stored in store.iter_neurons(catalogue, selection):
        dataset = datasets.get(stored.scan_id) if stored.scan_id is not None else None
        for line in (*explanation_lines(stored), *activation_lines(stored, dataset)):
            out.write(json.dumps(line) + "\n")
        written += 1
        if on_progress:
            on_progress(written)
    return written
