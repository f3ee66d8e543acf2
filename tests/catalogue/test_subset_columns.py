"""m013: windows and scores gain a corpus subset; a catalogue from before reads as having none,
and the scores' unique key holds one score per subset and still one per other method."""

from __future__ import annotations

import sqlite3

import pytest
from sqlite_utils import Database

from labeller.catalogue import Catalogue
from labeller.catalogue.migrations import migrations


def test_m013_upgrades_an_older_catalogue(tmp_path):
    path = tmp_path / "old.db"
    db = Database(path)
    migrations.apply(db, stop_before="m013_corpus_subsets")
    model = db.table("models").insert({"name": "m", "source": "demo"}).last_pk
    neuron = db.table("neurons").insert({"model_id": model, "layer": 0, "neuron": 0}).last_pk
    explanation = (
        db.table("explanations")
        .insert(
            {
                "neuron_id": neuron,
                "text": "t",
                "source": "human",
                "status": "proposed",
                "created_at": "x",
            }
        )
        .last_pk
    )
    row = {
        "explanation_id": explanation, "method": "top_and_random", "split": "valid",
        "score": 0.5, "simulator": "baseline", "prompt_version": "v1", "created_at": "x",
    }  # fmt: skip
    db.table("scores").insert(row)
    db.close()
    with Catalogue.open(path) as catalogue:
        (score,) = catalogue.explanations_of(neuron)[0].scores
        assert score.subset is None
        scores = catalogue.db.table("scores")
        for subset in ("code", "prose"):  # one score per subset
            scores.insert({**row, "method": "subset_top", "subset": subset})
        with pytest.raises(sqlite3.IntegrityError):  # still one per other method
            scores.insert(row)
        with pytest.raises(sqlite3.IntegrityError):
            scores.insert({**row, "method": "subset_top", "subset": "code"})
