"""Shared helpers for the export/import tests."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path
from typing import Any

from labeller.catalogue import Catalogue
from labeller.catalogue import exchange as store
from labeller.exchange import export_catalogue
from labeller.records import LabelState

EXPORTED_AT = re.compile(r'"exported_at": "[^"]*"')


def export_text(
    path: Path,
    fmt: str = "json",
    *,
    model: str | None = None,
    layers: list[int] | None = None,
    status: str = "all",
    min_score: float | None = None,
) -> str:
    out = io.StringIO()
    with Catalogue.open(path) as catalogue:
        export_catalogue(
            catalogue,
            out,
            fmt=fmt,
            model=model,
            layers=layers,
            status=status,
            min_score=min_score,
            on_progress=None,
        )
    return out.getvalue()


def export_file(path: Path, target: Path, **kwargs: Any) -> Path:
    target.write_text(export_text(path, **kwargs), encoding="utf-8")
    return target


def without_exported_at(text: str) -> str:
    head, _, rest = text.partition("\n")
    assert len(EXPORTED_AT.findall(head)) == 1
    return EXPORTED_AT.sub('"exported_at": ""', head) + "\n" + rest


def copy_db(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def state(path: Path) -> dict[str, Any]:
    """Row counts and every history entry, by neuron: what an import may or may not change."""
    with Catalogue.open(path) as catalogue:
        counts = store.table_counts(catalogue)
        history = {
            (r["layer"], r["neuron"]): [
                (h.action, h.annotator, h.at, _plain(h.before), _plain(h.after))
                for h in (s.entry for s in store.our_history(catalogue, r["id"]))
            ]
            for r in catalogue.db.query("select id, layer, neuron from neurons order by id")
        }
        statuses = {
            (r["layer"], r["neuron"], r["source"], r["text"]): r["status"]
            for r in catalogue.db.query(
                "select n.layer, n.neuron, e.source, e.text, e.status from explanations e "
                "join neurons n on n.id = e.neuron_id"
            )
        }
    return {"counts": counts, "history": history, "statuses": statuses}


def _plain(state: LabelState | None) -> tuple[str, str, str] | None:
    return None if state is None else (state.text, state.status, state.source)
