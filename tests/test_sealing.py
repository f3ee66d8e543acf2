"""Sealing's count of held-out windows on a scanned catalogue that keeps every example kind,
corpus-subset top windows included (their splits interleave within each subset, as top windows)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from builders import scan_params, scanned_catalogue, synthetic_documents

from labeller.catalogue import Catalogue
from labeller.records import ExampleKind, Split
from labeller.sealing import HELD_OUT, held_out_count, visible


@pytest.fixture(scope="module")
def every_kind_db(tmp_path_factory, tiny_model, tiny_model_dir) -> Path:
    """Top, random, band, per-subset top and DLA windows of the tiny model's neurons."""
    folder = tmp_path_factory.mktemp("sealing")
    corpus = folder / "docs.jsonl"
    with corpus.open("w") as handle:
        for i, text in enumerate(synthetic_documents(30, seed=7)):
            handle.write(json.dumps({"text": text, "source": ("code", "prose")[i % 2]}) + "\n")
    params = scan_params(
        tiny_model_dir, corpus, layers=[0], subset_field="source", subset_top_k=4, dla=True
    )
    return scanned_catalogue(folder / "c.db", tiny_model, params)


def test_held_out_count_counts_every_kind_with_subset_windows(every_kind_db):
    with Catalogue.open(every_kind_db, read_only=True) as catalogue:
        views = [catalogue.neuron_view(None, 0, n) for n in range(8)]
    subset_held_out = 0
    for view in views:
        dumped = view.model_dump(mode="json")
        lists = [key for key in dumped if key.endswith("_examples")]
        held_out = sum(
            e["split"] in {s.value for s in HELD_OUT} for key in lists for e in dumped[key]
        )
        assert held_out_count(view) == held_out
        # what sealing hides is what the count says it hides
        assert held_out_count(view) == sum(
            len(getattr(view, key)) - len(visible(getattr(view, key), sealed=True)) for key in lists
        )
        subset_held_out += sum(e.split in HELD_OUT for e in view.subset_examples)
        assert {e.kind for e in view.examples()} == set(ExampleKind)
    assert subset_held_out > 0  # the catalogue does exercise held-out subset windows


def test_subset_windows_split_within_each_subset(every_kind_db):
    """Each subset's windows interleave train / calibration / valid / test by their place in
    the subset, so four windows a subset hold out two (the README's Splits)."""
    with Catalogue.open(every_kind_db, read_only=True) as catalogue:
        view = catalogue.neuron_view(None, 0, 0)
    for subset in ("code", "prose"):
        splits = [e.split for e in view.subset_examples if e.subset == subset]
        assert splits == [Split.TRAIN, Split.CALIBRATION, Split.VALID, Split.TEST]
