"""Best-of-K without inflation: candidates are chosen on calibration, the chosen one reports its
valid score, test stays sealed until `--split test`, and exports say which split did what."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from builders import run_cli as run
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue
from labeller.explain.client import DryRun
from labeller.explain.service import score_neurons
from labeller.explain.simulator import Job, Simulator
from labeller.records import PredictionKind, Split

SOURCE = "some-llm"


class SplitAwareSimulator(Simulator):
    """Predicts the true activations (a perfect score) for a label on the splits it is `good`
    on, and their reverse (a negative score) elsewhere; records every split it was shown."""

    name = "fake-sim"
    prompt_version = "fake-v1"
    producer_model = None
    prediction = PredictionKind.RULE

    def __init__(self, truth: dict[tuple[str, ...], tuple[Split, list[float]]]) -> None:
        self.truth = truth
        self.good = {"chosen on calibration": Split.CALIBRATION, "lucky on valid": Split.VALID}
        self.seen: set[Split] = set()

    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        out = []
        for tokens in windows:
            if tuple(tokens) not in self.truth:  # another neuron's window: the null control
                out.append([0.0] * len(tokens))
                continue
            split, true = self.truth[tuple(tokens)]
            self.seen.add(split)
            good = self.good.get(explanation) in (split, "any") or explanation == "alone"
            out.append(list(true) if good else [-a for a in true])
        return out

    def dry_run(self, jobs: Iterable[Job]) -> DryRun:
        return DryRun(offline=True)


@pytest.fixture()
def db(tmp_path, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, top_k=8, random=6)
    return scanned_catalogue(tmp_path / "c.db", tiny_model, params)


def candidates(db: Path) -> tuple[SplitAwareSimulator, int]:
    """Neuron 1.3 with two LLM candidates and a lone human label."""
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref(None, 1, 3)
        for text in ("lucky on valid", "chosen on calibration"):
            catalogue.add_explanation(
                ref, text, source=SOURCE, prompt_version="p", producer_model=SOURCE
            )
        catalogue.add_explanation(
            ref, "alone", source="human", prompt_version=None, producer_model=None
        )
        view = catalogue.neuron_view(None, 1, 3)
    truth = {
        tuple(e.tokens): (e.split, e.activations)
        for e in (*view.top_examples, *view.random_examples)
    }
    return SplitAwareSimulator(truth), ref.id


def test_best_of_k_is_chosen_on_calibration_and_reports_valid(db):
    simulator, neuron_id = candidates(db)
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref(None, 1, 3)
        report = asyncio.run(score_neurons(catalogue, [ref], simulator))
        labels = {e.text: e for e in catalogue.explanations_of(neuron_id)}
    assert report.written == 3  # labels scored on valid; calibration scores only choose
    chosen, lucky, alone = (
        labels["chosen on calibration"],
        labels["lucky on valid"],
        labels["alone"],
    )
    valid = {
        t: next(s.score for s in e.scores if (s.split, s.method) == ("valid", "top_and_random"))
        for t, e in labels.items()
    }
    assert valid["lucky on valid"] > valid["chosen on calibration"]  # choosing on valid would err
    assert chosen.best and not lucky.best
    assert (chosen.chosen_on, chosen.reported_on) == (Split.CALIBRATION, Split.VALID)
    assert alone.best and (alone.chosen_on, alone.reported_on) == (None, Split.VALID)
    assert {s.split for s in alone.scores} == {Split.VALID}  # nothing to choose between
    assert {s.split for s in chosen.scores} == {Split.CALIBRATION, Split.VALID}
    assert Split.TEST not in simulator.seen  # test stays sealed

    simulator.seen.clear()
    with Catalogue.open(db) as catalogue:
        ref = catalogue.neuron_ref(None, 1, 3)
        asyncio.run(score_neurons(catalogue, [ref], simulator, split=Split.TEST))
        after = {e.text: e for e in catalogue.explanations_of(neuron_id)}
    assert simulator.seen == {Split.TEST}  # asked for: test only, and it chooses nothing
    assert after["chosen on calibration"].best and not after["lucky on valid"].best

    exported = Path(db).with_suffix(".json")
    run("export", "--db", db, "--format", "json", "-o", exported, "--layers", "1")
    (neuron,) = [
        json.loads(line.rstrip(",\n"))
        for line in exported.read_text().splitlines()[1:-1]
        if '"neuron": 3,' in line
    ]
    marks = {
        e["text"]: (e["best"], e["chosen_on"], e["reported_on"]) for e in neuron["explanations"]
    }
    assert marks == {
        "chosen on calibration": (True, "calibration", "valid"),
        "lucky on valid": (False, None, None),
        "alone": (True, None, "valid"),
    }
