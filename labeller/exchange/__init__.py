"""Export and import: the catalogue to files (json, openai, neuronpedia) and back (json).

`export_catalogue` streams: it reads one neuron, writes it, and reads the next, inside one read
transaction, so memory stays flat however large the catalogue and the file is one consistent
state. `import_catalogue` merges a `json` export (rules in `labeller.exchange.importer`).

The format modules are imported when used, so `python -m labeller.exchange.json_format` (which
regenerates the committed schema) runs without a second copy of that module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store
from labeller.errors import UserError
from labeller.records import LabelStatus

if TYPE_CHECKING:
    from labeller.exchange.importer import ImportReport
    from labeller.exchange.json_format import ExportHeader

FORMATS = ("json", "openai", "neuronpedia")
STATUSES = ("all", *(s.value for s in LabelStatus))

__all__ = [
    "FORMATS",
    "STATUSES",
    "ImportReport",
    "count_export",
    "export_catalogue",
    "export_header",
    "export_neuronpedia",
    "import_catalogue",
]


def _selection(
    catalogue: Catalogue,
    *,
    fmt: str,
    model: str | None,
    layers: list[int] | None,
    status: str,
    min_score: float | None,
) -> store.Selection:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if status not in STATUSES:
        raise UserError(f"--status {status!r}: use one of {', '.join(STATUSES)}")
    if min_score is not None and math.isnan(min_score):
        raise UserError("--min-score nan selects nothing; give a number, e.g. 0.3")
    if fmt == "openai" or model is not None:
        # OpenAI's NeuronId has no model: that format takes exactly one.
        models = [catalogue.resolve_model(model).name]
    else:
        models = sorted(m.name for m in catalogue.models())
    return store.Selection(
        models=models,
        layers=sorted(set(layers)) if layers is not None else None,
        status=None if status == "all" else LabelStatus(status),
        min_score=min_score,
    )


def export_catalogue(
    catalogue: Catalogue,
    out: TextIO,
    *,
    fmt: str,
    model: str | None,
    layers: list[int] | None,
    status: str,
    min_score: float | None,
    on_progress: Callable[[int], None] | None,
) -> int:
    """Write the selected neurons to `out` in `fmt`; returns how many neurons were written.

    `status` is "all" or a label status ("accepted"): with it, or with `min_score` (the label's
    top-and-random score on the valid split), only labels that pass are written, and only neurons
    that have one. `on_progress(n)` is called after each neuron with the count so far.
    """
    from labeller.exchange import json_format, openai_format

    if fmt == "neuronpedia":
        raise UserError("--format neuronpedia writes a folder: give one with -o DIR")
    writers: dict[str, Callable[..., int]] = {
        "json": json_format.write_json,
        "openai": openai_format.write_openai,
    }
    selection = _selection(
        catalogue, fmt=fmt, model=model, layers=layers, status=status, min_score=min_score
    )
    with store.read_snapshot(catalogue):
        return writers[fmt](catalogue, selection, out, on_progress=on_progress)


def export_neuronpedia(
    catalogue: Catalogue,
    folder: Path,
    *,
    model: str | None,
    layers: list[int] | None,
    status: str,
    min_score: float | None,
    on_progress: Callable[[int], None] | None,
    user_id: str | None = None,
) -> int:
    """Write the selected neurons as the dataset folder Neuronpedia's importer reads (see
    `labeller.exchange.neuronpedia_format`), atomically: `folder` ends up holding the whole new
    export or is left as it was. `user_id` is the Neuronpedia user every row is credited to."""
    from labeller.exchange import neuronpedia_format as np
    from labeller.output_files import replaced_dir_atomically

    selection = _selection(
        catalogue,
        fmt="neuronpedia",
        model=model,
        layers=layers,
        status=status,
        min_score=min_score,
    )
    with (
        replaced_dir_atomically(Path(folder), marker=np.MARKER) as partial,
        store.read_snapshot(catalogue),
    ):
        return np.write_neuronpedia(
            catalogue,
            selection,
            partial,
            user_id=user_id or np.NEURONPEDIA_BOT_USER,
            on_progress=on_progress,
        )


def count_export(
    catalogue: Catalogue,
    *,
    fmt: str = "json",
    model: str | None = None,
    layers: list[int] | None = None,
    status: str = "all",
    min_score: float | None = None,
) -> int:
    """How many neurons `export_catalogue` would write with these arguments (a progress total)."""
    selection = _selection(
        catalogue, fmt=fmt, model=model, layers=layers, status=status, min_score=min_score
    )
    return store.count_neurons(catalogue, selection)


def import_catalogue(
    catalogue: Catalogue,
    path: Path,
    *,
    on_progress: Callable[[int], None] | None = None,
    annotator: str | None = None,
) -> ImportReport:
    """Merge the `json` export at `path` into `catalogue` (see `labeller.exchange.importer`);
    `annotator` is who the history names for the changes the import decides itself."""
    from labeller.exchange.importer import IMPORTER
    from labeller.exchange.importer import import_catalogue as run

    return run(catalogue, Path(path), on_progress=on_progress, annotator=annotator or IMPORTER)


def export_header(path: Path) -> ExportHeader:
    """The header of a `json` export (models, scans, `neuron_count` for a progress total)."""
    from labeller.exchange.json_format import read_export

    with read_export(Path(path)) as reader:
        return reader.header


def __getattr__(name: str) -> Any:
    if name == "ImportReport":
        from labeller.exchange.importer import ImportReport

        return ImportReport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
