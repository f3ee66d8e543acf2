"""Our own export format (`labeller export --format json`), versioned, with a JSON Schema.

The file is one JSON object, laid out so it can be written and read one neuron at a time:

    {"format": "labeller-export", "format_version": 1, "exported_at": ..., "neuron_count": N,
     "models": [...], "scans": [...], "neurons": [        <- line 1: the header
    {...one neuron...},                                   <- one line per neuron
    {...one neuron...}
    ]}                                                    <- last line

Any JSON tool reads it whole; `read_export` streams it line by line (and falls back to loading the
whole file when someone reformatted it). No database ids appear: neurons are keyed by (model,
layer, neuron), scans by their index in `scans`, an explanation's history and scores live under
it, and a history entry names its explanation by index within the neuron and the entry it undoes
by `seq` (its position in the neuron's history). So the file is the same whichever catalogue
wrote it: export, import into an empty catalogue, export again gives the same bytes apart from
`exported_at`. Numbers are Python's `json` output: exact round trips (activations are stored as
float32, so they come back bit for bit); a NaN statistic is written as the bare token `NaN`, as
Python's `json` (and JSON5) writes and reads it, and imports back as NaN.

Regenerate the committed schema after changing these records:

    python -m labeller.exchange.json_format > schemas/labeller-export.schema.json
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final, Literal, TextIO

from pydantic import Field, ValidationError

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store
from labeller.errors import UserError
from labeller.records import (
    DetectorScore,
    Example,
    HistoryAction,
    LabelState,
    LabelStatus,
    ModelRecord,
    NeuronStats,
    Record,
    RelatedNeuron,
    ScanParams,
    ScanStatus,
    Score,
    Split,
    WeightFacts,
    neuron_name,
    utc_now,
)

FORMAT_NAME: Final = "labeller-export"
# 2: activation-band windows (`quantile_examples`, band fields) and each score's `windows`;
# version 1 files read as having no bands and scores on top and random windows.
# 3: each neuron's `detectors` (`labeller detect`), `subset_examples`, DLA windows
# (`dla_top_examples`, `dla_bottom_examples`) and `related_neurons`; files of versions 1 and 2
# read as having none of them.
FORMAT_VERSION: Final = 3
_NEURONS_OPEN = ', "neurons": ['


class ExportScan(Record):
    model: str = Field(description="name of the model in `models`")
    params: ScanParams
    status: ScanStatus
    tokens_seen: int
    windows_seen: int
    started_at: str
    updated_at: str


class ExportExample(Example):
    """A stored window with this neuron's activations, and the token ids that rebuild it."""

    token_ids: list[int]


class ExportLabelState(Record):
    explanation: int | None = Field(
        description="index of the explanation within this neuron's `explanations`"
    )
    text: str
    status: LabelStatus
    source: str


class ExportHistoryEntry(Record):
    seq: int = Field(description="position of the entry in the neuron's history, from 0")
    action: HistoryAction
    annotator: str | None
    at: str
    before: ExportLabelState | None
    after: ExportLabelState | None
    undoes: int | None = Field(default=None, description="`seq` of the entry an undo reverted")
    edited_from: int | None = Field(
        default=None,
        description="an edit: index in the neuron's `explanations` of the label it was edited from",
    )


class ExportExplanation(Record):
    text: str
    source: str
    status: LabelStatus
    prompt_version: str | None
    producer_model: str | None
    annotator: str | None
    best: bool
    chosen_on: Split | None = Field(
        default=None,
        description="best of several candidates: the split whose scores chose it (calibration)",
    )
    reported_on: Split | None = Field(
        default=None, description="best label: the split of the score it reports (valid)"
    )
    seen: list[Split] | None = Field(
        default=None,
        description="the splits whose windows the label's author had been shown when writing it; "
        "null when unknown (then none of its scores is blind)",
    )
    created_at: str
    updated_at: str | None
    scan: int | None = Field(description="index in `scans` of the scan it was made from")
    scores: list[Score]
    history: list[ExportHistoryEntry]


class ExportNeuron(Record):
    model: str
    layer: int
    neuron: int
    scan: int | None = Field(description="index in `scans` of the scan behind stats and examples")
    stats: NeuronStats
    weights: WeightFacts | None
    top_examples: list[ExportExample]
    random_examples: list[ExportExample]
    quantile_examples: list[ExportExample] = Field(
        default_factory=list,
        description="windows sampled from the neuron's activation bands, band by band",
    )
    subset_examples: list[ExportExample] = Field(
        default_factory=list,
        description="each corpus subset's top windows (kind subset_top, with their subset)",
    )
    dla_top_examples: list[ExportExample] = Field(
        default_factory=list,
        description="windows with the highest direct logit attribution (`scan --dla`); "
        "`activations` holds per-token DLA",
    )
    dla_bottom_examples: list[ExportExample] = Field(
        default_factory=list,
        description="windows with the lowest direct logit attribution (`scan --dla`)",
    )
    related_neurons: list[RelatedNeuron] | None = Field(
        default=None,
        description="most correlated, then most anti-correlated neurons (`scan --correlations`;"
        " null when not scanned; labels are not exported here)",
    )
    explanations: list[ExportExplanation]
    history: list[ExportHistoryEntry] = Field(
        default_factory=list, description="entries tied to no explanation (rare)"
    )
    label: int | None = Field(
        default=None,
        description="index in `explanations` of the neuron's label (its accepted label, else "
        "its best-scoring proposed one); None when it has none or the label was filtered out",
    )
    detectors: list[DetectorScore] = Field(
        default_factory=list,
        description="feature detectors scored against the neuron, best first (`labeller detect`)",
    )


class ExportHeader(Record):
    format: Literal["labeller-export"]
    format_version: Literal[1, 2, 3]
    exported_at: str
    neuron_count: int = Field(ge=0, description="number of entries in `neurons`")
    models: list[ModelRecord]
    scans: list[ExportScan]


class ExportDocument(ExportHeader):
    """A whole `labeller export --format json` file."""

    neurons: list[ExportNeuron]


def export_schema() -> dict[str, Any]:
    """The JSON Schema of the format, generated from the records above (committed in schemas/)."""
    schema = ExportDocument.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": "labeller export",
    }


# --- writing ------------------------------------------------------------------------------------


def write_json(
    catalogue: Catalogue,
    selection: store.Selection,
    out: TextIO,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Stream the selection to `out`: the header, then each neuron as it is read."""
    scans = store.scans_for(catalogue, selection)
    header = ExportHeader(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        exported_at=utc_now(),
        neuron_count=store.count_neurons(catalogue, selection),
        models=store.models_for(catalogue, selection),
        scans=[ExportScan(**s.model_dump(exclude={"id"})) for s in scans],
    )
    head = _dumps(header.model_dump(mode="json"))
    out.write(head[:-1] + _NEURONS_OPEN + "\n")
    scan_index = {s.id: i for i, s in enumerate(scans)}
    written = 0
    for stored in store.iter_neurons(catalogue, selection):
        if written:
            out.write(",\n")
        out.write(_dumps(export_neuron(stored, scan_index).model_dump(mode="json")))
        written += 1
        if on_progress:
            on_progress(written)
    out.write("\n]}\n")
    return written


def _dumps(value: Any) -> str:
    # ASCII-only output: the file reads the same whatever encoding the destination uses.
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


def export_neuron(stored: store.StoredNeuron, scan_index: dict[int, int]) -> ExportNeuron:
    """A stored neuron with its database ids replaced by positions within the file."""
    explanation_index = {e.id: i for i, e in enumerate(stored.explanations)}
    seq = {h.entry.id: i for i, h in enumerate(stored.history)}

    def state(label: LabelState | None) -> ExportLabelState | None:
        if label is None:
            return None
        return ExportLabelState(
            explanation=explanation_index.get(label.explanation_id),
            text=label.text,
            status=label.status,
            source=label.source,
        )

    entries: dict[int | None, list[ExportHistoryEntry]] = {}
    for stored_entry in stored.history:
        h = stored_entry.entry
        owner = explanation_index.get(h.explanation_id) if h.explanation_id is not None else None
        undoes = stored_entry.undoes
        entries.setdefault(owner, []).append(
            ExportHistoryEntry(
                seq=seq[h.id],
                action=h.action,
                annotator=h.annotator,
                at=h.at,
                before=state(h.before),
                after=state(h.after),
                undoes=seq.get(undoes) if undoes is not None else None,
                edited_from=(
                    explanation_index.get(h.edited_from) if h.edited_from is not None else None
                ),
            )
        )
    return ExportNeuron(
        model=stored.model,
        layer=stored.layer,
        neuron=stored.neuron,
        scan=scan_index.get(stored.scan_id) if stored.scan_id is not None else None,
        stats=stored.stats,
        weights=stored.weights,
        top_examples=[_example(e) for e in stored.top_examples],
        random_examples=[_example(e) for e in stored.random_examples],
        quantile_examples=[_example(e) for e in stored.quantile_examples],
        subset_examples=[_example(e) for e in stored.subset_examples],
        dla_top_examples=[_example(e) for e in stored.dla_top_examples],
        dla_bottom_examples=[_example(e) for e in stored.dla_bottom_examples],
        related_neurons=stored.related,
        explanations=[
            ExportExplanation(
                text=e.explanation.text,
                source=e.explanation.source,
                status=e.explanation.status,
                prompt_version=e.explanation.prompt_version,
                producer_model=e.explanation.producer_model,
                annotator=e.explanation.annotator,
                best=e.explanation.best,
                chosen_on=e.explanation.chosen_on,
                reported_on=e.explanation.reported_on,
                seen=e.explanation.seen,
                created_at=e.explanation.created_at,
                updated_at=e.updated_at,
                scan=scan_index.get(e.scan_id) if e.scan_id is not None else None,
                scores=e.explanation.scores,
                history=entries.get(i, []),
            )
            for i, e in enumerate(stored.explanations)
        ],
        history=entries.get(None, []),
        label=explanation_index.get(stored.label_id) if stored.label_id is not None else None,
        detectors=stored.detectors,
    )


def _example(stored: store.StoredExample) -> ExportExample:
    return ExportExample(**stored.example.model_dump(), token_ids=stored.token_ids)


# --- reading ------------------------------------------------------------------------------------


class ExportReader:
    """An opened export: its header, and its neurons one at a time (validated)."""

    def __init__(self, path: Path, header: ExportHeader, neurons: Iterator[Any]) -> None:
        self.path = path
        self.header = header
        self._raw = neurons

    def neurons(self) -> Iterator[ExportNeuron]:
        """Each neuron, validated; the count must be the header's `neuron_count`."""
        expected = self.header.neuron_count
        position = -1
        for position, raw in enumerate(self._raw):
            if position >= expected:
                raise UserError(
                    f"{self.path} holds more neurons than its header's neuron_count ({expected}); "
                    "the file was edited or is damaged: re-export it"
                )
            try:
                neuron = ExportNeuron.model_validate(raw)
            except ValidationError as exc:
                raise UserError(
                    f"{self.path}: neuron #{position + 1} is malformed ({_first_error(exc)}); "
                    "re-export it with `labeller export --format json`"
                ) from None
            _check_references(self.path, self.header, neuron)
            yield neuron
        if position + 1 != expected:
            raise UserError(
                f"{self.path} holds {position + 1} neurons but its header's neuron_count is "
                f"{expected}; the file was edited or is damaged: re-export it"
            )


@contextmanager
def read_export(path: Path) -> Iterator[ExportReader]:
    """Open a `json` export, refusing with one line anything that is not one we can read."""
    try:
        handle = path.open(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            first = handle.readline()
            stripped = first.rstrip()
            if stripped.startswith("{") and stripped.endswith(_NEURONS_OPEN):
                raw_header = _loads(path, stripped + "]}", 1)
                _check_format(path, raw_header)
                raw_header.pop("neurons")
                raw_neurons: Iterator[Any] = _neuron_lines(path, handle)
            else:
                handle.seek(0)
                document = _load_whole(path, handle)
                _check_format(path, document)
                neurons = document.pop("neurons", None)
                if not isinstance(neurons, list):
                    raise UserError(f"{path} is a labeller export without a `neurons` list")
                raw_header = document
                raw_neurons = iter(neurons)
            yield ExportReader(path, _header(path, raw_header), raw_neurons)
        except UnicodeDecodeError:
            raise UserError(
                f"{path} is not a labeller export (not UTF-8 text); "
                "pass a file written by `labeller export --format json`"
            ) from None


def _loads(path: Path, text: str, line: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not a labeller export (invalid JSON on line {line}: {exc.msg}); "
            "pass a file written by `labeller export --format json`"
        ) from None


def _load_whole(path: Path, handle: TextIO) -> Any:
    try:
        return json.load(handle)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path} is not a labeller export (invalid JSON on line {exc.lineno}: {exc.msg}); "
            "pass a file written by `labeller export --format json`"
        ) from None


def _neuron_lines(path: Path, handle: TextIO) -> Iterator[Any]:
    closed = False
    for number, line in enumerate(handle, start=2):
        text = line.strip()
        if not text:
            continue
        if closed:
            raise UserError(f"{path}: unexpected text after the end of the export (line {number})")
        if text == "]}":
            closed = True
            continue
        yield _loads(path, text.removesuffix(","), number)
    if not closed:
        raise UserError(f"{path} ends early (no closing `]}}`): the export was cut off; redo it")


def _check_format(path: Path, raw: Any) -> None:
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        raise UserError(
            f'{path} is not a labeller export (no "format": "{FORMAT_NAME}"); '
            "pass a file written by `labeller export --format json`"
        )
    version = raw.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UserError(f"{path} has an invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{path} is format_version {version}, newer than this labeller reads "
            f"({FORMAT_VERSION}); upgrade labeller to import it"
        )


def _header(path: Path, raw: dict[str, Any]) -> ExportHeader:
    if raw.get("format_version") == 1:  # scanned before bands existed: it kept none
        for scan in raw.get("scans") or []:
            if isinstance(scan, dict) and isinstance(scan.get("params"), dict):
                scan["params"].setdefault("band_windows", 0)
    try:
        header = ExportHeader.model_validate(raw)
    except ValidationError as exc:
        raise UserError(f"{path}: the export header is malformed ({_first_error(exc)})") from None
    names = {m.name for m in header.models}
    for i, scan in enumerate(header.scans):
        if scan.model not in names:
            raise UserError(f"{path}: scan #{i} names model {scan.model!r}, absent from `models`")
    return header


def _check_references(path: Path, header: ExportHeader, neuron: ExportNeuron) -> None:
    """Indices inside a neuron must point at things the file holds, and the neuron must fit its
    model: nothing an import writes may later break `show`, `rank` or `export`."""
    where = f"{path}: neuron {neuron.model} {neuron_name(neuron.layer, neuron.neuron)}"
    models = {m.name: m for m in header.models}
    model = models.get(neuron.model)
    if model is None:
        raise UserError(f"{where} names a model absent from `models`")
    if not 0 <= neuron.layer < model.n_layers:
        raise UserError(
            f"{where}: layer {neuron.layer} does not exist; model {model.name} has layers "
            f"0-{model.n_layers - 1}"
        )
    if not 0 <= neuron.neuron < model.d_mlp:
        raise UserError(
            f"{where}: neuron {neuron.neuron} does not exist; model {model.name} has neurons "
            f"0-{model.d_mlp - 1}"
        )
    for kind, examples in (
        ("top", neuron.top_examples),
        ("random", neuron.random_examples),
        ("quantile", neuron.quantile_examples),
        ("subset_top", neuron.subset_examples),
        ("dla_top", neuron.dla_top_examples),
        ("dla_bottom", neuron.dla_bottom_examples),
    ):
        for example in examples:
            _check_example(f"{where}, {kind} window {example.rank}", example)
            special = ("quantile", "subset_top", "dla_top", "dla_bottom")
            if example.kind.value != kind and (example.kind.value in special or kind in special):
                raise UserError(f"{where}, {kind} window {example.rank} is of kind {example.kind}")
            if kind == "subset_top" and example.subset is None:
                raise UserError(f"{where}, subset_top window {example.rank} names no subset")
    for example in neuron.quantile_examples:
        if example.band is None or example.band_low is None or example.band_high is None:
            raise UserError(f"{where}, quantile window {example.rank} has no band")
    for explanation in neuron.explanations:
        if not explanation.text.strip():
            raise UserError(f"{where} has a label with empty label text")
    scans = len(header.scans)
    for scan in [neuron.scan, *(e.scan for e in neuron.explanations)]:
        if scan is not None and not 0 <= scan < scans:
            raise UserError(f"{where} refers to scan #{scan}; the file has {scans}")
    count = len(neuron.explanations)
    entries = [*neuron.history, *(h for e in neuron.explanations for h in e.history)]
    seqs = [h.seq for h in entries]
    if len(set(seqs)) != len(seqs):
        raise UserError(f"{where} has two history entries with the same seq")
    for entry in entries:
        for state in (entry.before, entry.after):
            index = state.explanation if state is not None else None
            if index is not None and not 0 <= index < count:
                raise UserError(f"{where}: a history entry names explanation #{index}")
        if entry.edited_from is not None and not 0 <= entry.edited_from < count:
            raise UserError(
                f"{where}: history entry seq {entry.seq} is edited from explanation "
                f"#{entry.edited_from}; the neuron has {count}"
            )
    for entry in neuron.history:
        if any(s is not None and s.explanation is None for s in (entry.before, entry.after)):
            raise UserError(f"{where}: history entry seq {entry.seq} names no explanation")
    seq_set = set(seqs)
    for entry in entries:
        if entry.undoes is not None and entry.undoes not in seq_set:
            raise UserError(f"{where}: history entry seq {entry.seq} undoes a missing entry")


def _check_example(where: str, example: ExportExample) -> None:
    tokens = len(example.tokens)
    if len(example.activations) != tokens:
        raise UserError(f"{where} has {len(example.activations)} activations for {tokens} tokens")
    if len(example.token_ids) != tokens:
        raise UserError(f"{where} has {len(example.token_ids)} token ids for {tokens} tokens")
    if not 0 <= example.max_index < max(tokens, 1):
        raise UserError(f"{where} has max_index {example.max_index} outside its {tokens} tokens")


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    location = ".".join(str(part) for part in error["loc"]) or "top level"
    return f"{location}: {error['msg']}"


if __name__ == "__main__":
    print(json.dumps(export_schema(), indent=2))
