"""`labeller export --format neuronpedia -o DIR`: a folder Neuronpedia's importer reads as its own.

Neuronpedia's exporter (`utils/neuronpedia-utils/neuronpedia_utils/export-data.py`) writes, and its
importer (`apps/webapp/app/api/admin/import/route.ts`, with `importJsonlString` in
`apps/webapp/lib/db/import.ts`) reads, one folder per model and source under a dataset root:

    DIR/config/explanation_type.jsonl          ExplanationType rows (upserted by name)
    DIR/config/explanation_model_type.jsonl    ExplanationModelType rows (upserted by name)
    DIR/config/explanation_score_type.jsonl    empty: we export no Neuronpedia scores
    DIR/config/explanation_score_model.jsonl   empty
    DIR/config/eval_type.jsonl                 empty
    DIR/{model}/{layer}/model.jsonl            the Model row
    DIR/{model}/{layer}/sourceset.jsonl        the SourceSet row: `neurons`
    DIR/{model}/{layer}/source.jsonl           the Source row: id is the bare layer number ("5")
    DIR/{model}/{layer}/features/batch-N.jsonl.gz      Neuron rows
    DIR/{model}/{layer}/activations/batch-N.jsonl.gz   Activation rows
    DIR/{model}/{layer}/explanations/batch-N.jsonl.gz  Explanation rows
    DIR/labeller-export.json                   what wrote this (ignored by their importer)

Rules their code sets, and how this follows them:
- MLP neurons are a source whose id is the bare layer number, in the model's source set named
  `neurons` (their `isNeuronLayerSource` tests for an integer; `NEURONS_SOURCESET = 'neurons'`).
  Every row's `layer` is that id.
- `importJsonlString` takes a batch's columns from its FIRST line and inserts into one table, so
  each file holds one table and every line of it has the same keys, in the same order.
- Foreign keys: Explanation and Activation rows need their Neuron row (modelId, layer, index);
  Neuron needs Source (modelId, layer); Source needs SourceSet; SourceSet and Source need Model;
  `typeName` needs an ExplanationType and `explanationModelName` an ExplanationModelType (both
  written in `config/`); `authorId` / `creatorId` need a User. Their exporter replaces every
  author and creator with one default user id; so does this (`user_id`, by default the bot user
  their seed creates). Who wrote a label here goes into the Explanation's `notes`.
- An empty batch file would make their importer parse an empty first line: none is written.
- 1,024 neurons per batch file, as their exporter.

Activation line (one per stored window: top windows by rank, random ones, then band windows):
    id                     stable id: hash of model, layer, neuron, kind, rank, document, offset
    modelId, layer, index  as above
    creatorId              the export's Neuronpedia user id
    dataSource             the scanned dataset
    tokens, values         the window's tokens and this neuron's activations
    maxValue, minValue, maxValueTokenIndex   over the window
    dfaValues []           dfaMaxValue, dfaTargetIndex null (attention only)
    binMin, binMax         a band window's band edges (its max lies in [binMin, binMax));
                           null for top and random windows
    binContains            null (we do not count what share of windows falls in a band)
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store
from labeller.records import (
    PRIMARY_METHOD,
    Example,
    ModelRecord,
    ScanRecord,
    Split,
    utc_now,
)

# The user their seed creates ("bot"), which their own converters use as the default creator.
NEURONPEDIA_BOT_USER = "clkht01d40000jv08hvalcvly"
CREATOR_NAME = "labeller"
NEURONS_SOURCE_SET = "neurons"
BATCH_NEURONS = 1024  # FEATURES_EXPLANATIONS_BATCH_SIZE and ACTIVATIONS_BATCH_SIZE in theirs
MARKER = "labeller-export.json"

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
    "notes",
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
NEURON_FIELDS = (
    "modelId",
    "layer",
    "index",
    "creatorId",
    "sourceSetName",
    "maxActApprox",
    "frac_nonzero",
    "pos_str",
    "pos_values",
    "neg_str",
    "neg_values",
    "hasVector",
)
CONFIG_FILES = (
    "explanation_type.jsonl",
    "explanation_model_type.jsonl",
    "explanation_score_type.jsonl",
    "explanation_score_model.jsonl",
    "eval_type.jsonl",
)


def model_id(name: str) -> str:
    """Neuronpedia model ids are lower-case letters, digits, `-` and `_` (their zod rule); ours
    may hold `/` or `.` (Hugging Face names), which also could not be a folder name."""
    return re.sub(r"[^a-z0-9_-]+", "-", name.lower()).strip("-") or "model"


def source_id(layer: int) -> str:
    """Neuronpedia names a layer of MLP neurons by its number alone (source set `neurons`)."""
    return str(layer)


def type_name(source: str, prompt_version: str | None) -> str:
    return f"labeller_{prompt_version or source}"


def _stable_id(*parts: object) -> str:
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
    return f"lbl{digest[:22]}"


def _primary_valid(explanation: Any) -> float | None:
    for score in explanation.scores:
        if score.method is PRIMARY_METHOD and score.split is Split.VALID:
            return float(score.score) if score.score is not None else None
    return None


def _notes(explanation: Any, is_label: bool) -> str:
    who = explanation.annotator or explanation.producer_model or explanation.source
    parts = [f"labeller: by {who}", f"source {explanation.source}", explanation.status.value]
    if is_label:
        parts.append("the neuron's label")
    score = _primary_valid(explanation)
    if score is not None:
        parts.append(f"{PRIMARY_METHOD.value} score on valid {score:.3f}")
    return "; ".join(parts)


def explanation_lines(
    stored: store.StoredNeuron, user_id: str = NEURONPEDIA_BOT_USER
) -> list[dict[str, Any]]:
    mid = model_id(stored.model)
    lines = []
    for stored_explanation in stored.explanations:
        e = stored_explanation.explanation
        line = {
            "id": _stable_id(stored.model, stored.layer, stored.neuron, e.source, e.text),
            "modelId": mid,
            "layer": source_id(stored.layer),
            "index": str(stored.neuron),
            "authorId": user_id,
            "description": e.text,
            "embedding": None,
            "typeName": type_name(e.source, e.prompt_version),
            "explanationModelName": e.producer_model,
            "notes": _notes(e, stored_explanation.id == stored.label_id),
            "umap_x": None,
            "umap_y": None,
            "umap_cluster": None,
            "umap_log_feature_sparsity": None,
        }
        lines.append(line)
    return lines


def activation_line(
    stored: store.StoredNeuron,
    example: Example,
    dataset: str | None,
    user_id: str = NEURONPEDIA_BOT_USER,
    *,
    bin_min: float | None = None,
    bin_max: float | None = None,
    bin_contains: float | None = None,
) -> dict[str, Any]:
    """One stored window as an Activation row; `bin_*` describe an activation band it was
    sampled from (None for top and random windows)."""
    values = example.activations
    return {
        "id": _stable_id(
            stored.model,
            stored.layer,
            stored.neuron,
            example.kind.value,
            example.rank,
            example.document,
            example.offset,
        ),
        "modelId": model_id(stored.model),
        "layer": source_id(stored.layer),
        "index": str(stored.neuron),
        "creatorId": user_id,
        "dataSource": dataset,
        "tokens": example.tokens,
        "maxValue": max(values) if values else example.max_activation,
        "minValue": min(values) if values else example.max_activation,
        "values": values,
        "maxValueTokenIndex": example.max_index,
        "dfaValues": [],
        "dfaMaxValue": None,
        "dfaTargetIndex": None,
        "binContains": bin_contains,
        "binMin": bin_min,
        "binMax": bin_max,
    }


def activation_lines(
    stored: store.StoredNeuron, dataset: str | None, user_id: str = NEURONPEDIA_BOT_USER
) -> list[dict[str, Any]]:
    """Top windows by rank, then random ones, then band windows with their band's edges."""
    return [
        activation_line(
            stored,
            s.example,
            dataset,
            user_id,
            bin_min=s.example.band_low,
            bin_max=s.example.band_high,
        )
        for s in (*stored.top_examples, *stored.random_examples, *stored.quantile_examples)
    ]


def _finite(value: float) -> float | None:
    return value if value == value and abs(value) != float("inf") else None


def neuron_line(stored: store.StoredNeuron, user_id: str = NEURONPEDIA_BOT_USER) -> dict[str, Any]:
    weights = stored.weights
    positive = weights.top_positive_tokens if weights else []
    negative = weights.top_negative_tokens if weights else []
    return {
        "modelId": model_id(stored.model),
        "layer": source_id(stored.layer),
        "index": str(stored.neuron),
        "creatorId": user_id,
        "sourceSetName": NEURONS_SOURCE_SET,
        "maxActApprox": _finite(stored.stats.max),
        "frac_nonzero": _finite(stored.stats.density) or 0.0,
        "pos_str": [t.token for t in positive],
        "pos_values": [t.weight for t in positive],
        "neg_str": [t.token for t in negative],
        "neg_values": [t.weight for t in negative],
        "hasVector": False,
    }


def model_row(model: ModelRecord, user_id: str, at: str) -> dict[str, Any]:
    return {
        "id": model_id(model.name),
        "displayNameShort": model.name,
        "displayName": model.name,
        "creatorId": user_id,
        "dimension": model.d_model,
        "visibility": "PUBLIC",
        "inferenceEnabled": False,
        "instruct": False,
        "layers": model.n_layers,
        "neuronsPerLayer": model.d_mlp,
        "owner": CREATOR_NAME,
        "createdAt": at,
        "updatedAt": at,
    }


def source_set_row(model: ModelRecord, user_id: str, at: str) -> dict[str, Any]:
    return {
        "modelId": model_id(model.name),
        "name": NEURONS_SOURCE_SET,
        "hasDashboards": True,
        "visibility": "PUBLIC",
        "description": "MLP Neurons",
        "type": "",
        "creatorName": CREATOR_NAME,
        "urls": [],
        "creatorId": user_id,
        "createdAt": at,
    }


def source_row(
    model: ModelRecord, layer: int, scan: ScanRecord | None, user_id: str, at: str
) -> dict[str, Any]:
    return {
        "id": source_id(layer),
        "modelId": model_id(model.name),
        "hasDashboards": True,
        "inferenceEnabled": False,
        "visibility": "PUBLIC",
        "setName": NEURONS_SOURCE_SET,
        "creatorId": user_id,
        "num_prompts": scan.windows_seen if scan else None,
        "num_tokens_in_prompt": scan.params.ctx if scan else None,
        "dataset": scan.params.dataset if scan else None,
        "notes": "MLP neurons scanned by labeller",
        "createdAt": at,
    }


def explanation_type_row(name: str, user_id: str, at: str) -> dict[str, Any]:
    return {
        "name": name,
        "displayName": name,
        "description": f"labels from labeller ({name.removeprefix('labeller_')})",
        "featured": False,
        "isAttention": False,
        "creatorName": CREATOR_NAME,
        "creatorId": user_id,
        "createdAt": at,
        "updatedAt": at,
    }


def explanation_model_type_row(name: str, at: str) -> dict[str, Any]:
    return {
        "name": name,
        "displayName": name,
        "description": f"{name}, as named by labeller",
        "featured": False,
        "creatorName": CREATOR_NAME,
        "createdAt": at,
        "updatedAt": at,
    }


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, allow_nan=False) + "\n"


@dataclass
class _Batches:
    """The open batch files of one source folder: one table per file, 1,024 neurons each."""

    folder: Path
    stack: ExitStack = field(default_factory=ExitStack)
    handles: dict[str, TextIO] = field(default_factory=dict)
    neurons: int = 0
    batch: int = 0

    def write(self, table: str, lines: list[dict[str, Any]]) -> None:
        if not lines:
            return  # an empty file would give their importer an empty first line
        handle = self.handles.get(table)
        if handle is None:
            path = self.folder / table / f"batch-{self.batch}.jsonl.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            opened = gzip.open(path, "wt", encoding="utf-8", compresslevel=5)  # noqa: SIM115
            handle = self.stack.enter_context(opened)
            self.handles[table] = handle
        for line in lines:
            handle.write(_dumps(line))

    def neuron_done(self) -> None:
        self.neurons += 1
        if self.neurons % BATCH_NEURONS == 0:
            self.close()
            self.batch += 1

    def close(self) -> None:
        self.stack.close()
        self.stack = ExitStack()
        self.handles = {}


def write_neuronpedia(
    catalogue: Catalogue,
    selection: store.Selection,
    root: Path,
    *,
    user_id: str = NEURONPEDIA_BOT_USER,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Write the Neuronpedia dataset tree under `root` (an empty folder), neuron by neuron."""
    at = utc_now()
    scans = {s.id: s for s in store.scans_for(catalogue, selection)}
    models = {m.name: m for m in store.models_for(catalogue, selection)}
    types: set[str] = set()
    producers: set[str] = set()
    written = 0
    batches: _Batches | None = None
    current: tuple[str, int] | None = None
    try:
        for stored in store.iter_neurons(catalogue, selection):
            scan = scans.get(stored.scan_id) if stored.scan_id is not None else None
            if current != (stored.model, stored.layer):
                if batches is not None:
                    batches.close()
                current = (stored.model, stored.layer)
                folder = root / model_id(stored.model) / source_id(stored.layer)
                _write_source_folder(folder, models[stored.model], stored.layer, scan, user_id, at)
                batches = _Batches(folder)
            assert batches is not None
            batches.write("features", [neuron_line(stored, user_id)])
            dataset = scan.params.dataset if scan else None
            batches.write("activations", activation_lines(stored, dataset, user_id))
            batches.write("explanations", explanation_lines(stored, user_id))
            for e in stored.explanations:
                types.add(type_name(e.explanation.source, e.explanation.prompt_version))
                if e.explanation.producer_model:
                    producers.add(e.explanation.producer_model)
            batches.neuron_done()
            written += 1
            if on_progress:
                on_progress(written)
    finally:
        if batches is not None:
            batches.close()
    config = root / "config"
    config.mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[dict[str, Any]]] = {
        "explanation_type.jsonl": [explanation_type_row(t, user_id, at) for t in sorted(types)],
        "explanation_model_type.jsonl": [
            explanation_model_type_row(p, at) for p in sorted(producers)
        ],
    }
    for name in CONFIG_FILES:
        (config / name).write_text("".join(_dumps(r) for r in tables.get(name, [])), "utf-8")
    (root / MARKER).write_text(
        json.dumps(
            {
                "format": "neuronpedia",
                "written_by": "labeller",
                "exported_at": at,
                "user_id": user_id,
                "neurons": written,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    return written


def _write_source_folder(
    folder: Path, model: ModelRecord, layer: int, scan: ScanRecord | None, user_id: str, at: str
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, row in (
        ("model.jsonl", model_row(model, user_id, at)),
        ("sourceset.jsonl", source_set_row(model, user_id, at)),
        ("source.jsonl", source_row(model, layer, scan, user_id, at)),
    ):
        (folder / name).write_text(_dumps(row), encoding="utf-8")
