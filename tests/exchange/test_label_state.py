"""One label state: every surface names the same label for a neuron (issue 9 item 3).

Neuron 0.0: its highest-scoring label is rejected by bob and carol accepted another: the label is
carol's. Neuron 0.2: its highest-scoring label is rejected and nothing is accepted: the label is
the best-scoring proposed one. Neither a rejected label nor a withdrawn one is ever "best".
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from exchange_factory import build_catalogue
from exchange_helpers import export_text

from labeller.catalogue import Catalogue, labels
from labeller.catalogue.browse import neuron_page
from labeller.exchange import export_neuronpedia
from labeller.records import PRIMARY_METHOD, LabelStatus, Split


def _valid(e) -> float:
    return next(s.score for s in e.scores if s.method is PRIMARY_METHOD and s.split is Split.VALID)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, str]]:
    path = build_catalogue(tmp_path_factory.mktemp("state") / "c.db")
    expected: dict[int, str] = {}
    with Catalogue.open(path) as catalogue:
        for neuron, accept in ((0, True), (2, False)):
            ref = catalogue.neuron_ref("tiny", 0, neuron)
            ranked = sorted(catalogue.explanations_of(ref.id), key=_valid, reverse=True)
            top, other = ranked[0], ranked[1]
            labels.set_status(
                catalogue, ref, top.id, LabelStatus.REJECTED, annotator="bob",
                expected_version=None,
            )  # fmt: skip
            if accept:
                labels.set_status(
                    catalogue, ref, other.id, LabelStatus.ACCEPTED, annotator="carol",
                    expected_version=None,
                )  # fmt: skip
            expected[neuron] = other.text
    return path, expected


def test_every_surface_names_the_same_label(db, tmp_path: Path):
    path, expected = db
    with Catalogue.open(path) as catalogue:
        for neuron, text in expected.items():
            view = catalogue.neuron_view("tiny", 0, neuron)
            (label,) = [e for e in view.explanations if e.id == view.label]
            assert label.text == text  # show (JSON carries `label`), TUI header and table
            assert not any(e.best for e in view.explanations if e.status == "rejected")
        rows, _ = neuron_page(catalogue, "tiny", layer=0)
        listed = {r.neuron: r.label for r in rows}
        ranked = {r.neuron: r.label for r in catalogue.rank("tiny", layers=[0])}
    for neuron, text in expected.items():
        assert listed[neuron] == text  # the TUI list
        assert ranked[neuron] == text  # rank
    document = json.loads(export_text(path))["neurons"]
    for neuron in document:
        if neuron["layer"] == 0 and neuron["neuron"] in expected:
            chosen = neuron["explanations"][neuron["label"]]
            assert chosen["text"] == expected[neuron["neuron"]]  # json export
            assert not any(e["best"] for e in neuron["explanations"] if e["status"] == "rejected")
    with Catalogue.open(path) as catalogue:
        export_neuronpedia(
            catalogue, tmp_path / "np", model=None, layers=[0], status="all", min_score=None,
            on_progress=None,
        )  # fmt: skip
    with gzip.open(tmp_path / "np" / "tiny" / "0" / "explanations" / "batch-0.jsonl.gz") as f:
        rows_np = [json.loads(line) for line in f]
    marked = {
        (int(r["index"]), r["description"]) for r in rows_np if "the neuron's label" in r["notes"]
    }
    assert {(n, t) for n, t in expected.items()} <= marked  # neuronpedia export


def test_rank_status_keeps_neurons_whose_label_has_it(db):
    path, _ = db
    with Catalogue.open(path) as catalogue:
        accepted = catalogue.rank("tiny", status="accepted")
        rejected = catalogue.rank("tiny", status="rejected")
    assert {(r.layer, r.neuron) for r in accepted} == {(0, 0), (0, 1)}
    assert rejected == []  # a rejected label is never the neuron's label
