"""The null control every scoring run carries: a seeded sample of its labels scored against a
different neuron's held-out windows, stored, printed, and recomputable from scratch."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pytest
from builders import run_cli as run
from builders import scan_params, scanned_catalogue

from labeller.catalogue import Catalogue
from labeller.explain.baseline import BaselineSimulator
from labeller.explain.client import DryRun
from labeller.explain.scoring import correlation_score
from labeller.explain.service import null_plan, score_neurons, scored_windows
from labeller.explain.simulator import Job, NotScorable, Simulator
from labeller.records import NullControl, PredictionKind, Split


@pytest.fixture()
def db(tmp_path, tiny_model, tiny_model_dir, tiny_corpus) -> Path:
    params = scan_params(tiny_model_dir, tiny_corpus, top_k=8, random=6)
    return scanned_catalogue(tmp_path / "c.db", tiny_model, params)


class Recording(Simulator):
    """An LLM-like simulator (expected values) that predicts a token's length; records calls."""

    name = "fake-llm"
    prompt_version = "fake-v1"
    producer_model = "fake-llm"
    prediction = PredictionKind.EXPECTED_VALUE

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, ...]]]] = []

    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        self.calls.append((explanation, [tuple(w) for w in windows]))
        return [[float(len(t)) for t in w] for w in windows]

    def dry_run(self, jobs: Iterable[Job]) -> DryRun:
        return DryRun(offline=True)


def labelled(db: Path, count: int) -> None:
    """One label per neuron 0..count-1 of layer 1 (text that names no token: any simulator)."""
    with Catalogue.open(db) as catalogue:
        for n in range(count):
            ref = catalogue.neuron_ref(None, 1, n)
            catalogue.add_explanation(
                ref, f"label {n}", source="human", prompt_version=None, producer_model=None
            )


def test_score_prints_the_null_line_equal_to_a_recomputation(db):
    run("explain", "--db", db, "--layer", "1")
    out = run("score", "--db", db, "--layer", "1").stdout
    line = out.splitlines()[-1]
    with Catalogue.open(db) as catalogue:
        refs = catalogue.neuron_refs(None, [1], None)
        plan = null_plan(catalogue, refs, BaselineSimulator(), Split.VALID)
        stored = catalogue.latest_null_control(
            refs[0].model, "baseline", BaselineSimulator.prompt_version, Split.VALID,
            PredictionKind.RULE,
        )  # fmt: skip
    assert len(plan) == 48  # rule-based: every label is in the null sample
    simulator = BaselineSimulator()
    values = []
    for job in plan:
        try:
            sim = asyncio.run(
                simulator.simulate(job.explanation.text, [w.tokens for w in job.windows])
            )
        except NotScorable:  # excluded, and counted
            continue
        r = correlation_score([w.activations for w in job.windows], sim)
        if r is not None:
            values.append(r)
    assert values, "the baseline should score some labels against other neurons"
    r = np.asarray(values)
    expected = (
        f"null: mean r {r.mean():.2f} +/- {r.std():.2f} over {len(values)} labels, "
        f"95th percentile {np.percentile(r, 95):.2f}"
    )
    assert line.startswith(expected)
    assert re.fullmatch(r"null: mean r -?\d\.\d\d \+/- \d\.\d\d over \d+ labels, 95th .*", line)
    assert stored is not None and stored.values == pytest.approx(values, abs=1e-12)
    assert stored.excluded == 48 - len(values)


def test_null_windows_are_always_another_neurons(db):
    labelled(db, 12)
    simulator = Recording()
    with Catalogue.open(db) as catalogue:
        refs = catalogue.neuron_refs(None, [1], None)
        for start in range(0, 12, 3):  # different runs, different seeds
            plan = null_plan(catalogue, refs[start : start + 5], simulator, Split.VALID, 1.0)
            assert plan
            for job in plan:
                assert job.other.id != job.own.id and job.other.layer == 1
                view = catalogue.neuron_view(None, job.other.layer, job.other.neuron)
                own = catalogue.neuron_view(None, job.own.layer, job.own.neuron)
                assert job.windows == scored_windows(view, Split.VALID)
                assert job.windows != scored_windows(own, Split.VALID)
        plan = null_plan(catalogue, refs, simulator, Split.VALID, 1.0)
        report = asyncio.run(score_neurons(catalogue, refs, simulator, null_sample=1.0))
    # the service scored exactly the planned pairs after the labels' own scoring
    null_calls = simulator.calls[12:]
    assert [(j.explanation.text, [tuple(w.tokens) for w in j.windows]) for j in plan] == sorted(
        null_calls, key=lambda c: int(c[0].split()[1])
    )
    assert report.null is not None and report.null.n + report.null.excluded == 12
    with Catalogue.open(db, read_only=True) as catalogue:
        again = null_plan(catalogue, refs, simulator, Split.VALID, 1.0)
    assert [(j.own, j.other) for j in again] == [(j.own, j.other) for j in plan]  # seeded


@pytest.mark.parametrize(("fraction", "labels"), [(0.1, 20), (0.1, 5), (0.5, 7), (0.0, 9)])
def test_an_llm_simulator_samples_its_fraction_of_labels(db, fraction, labels):
    labelled(db, labels)
    with Catalogue.open(db) as catalogue:
        refs = catalogue.neuron_refs(None, [1], None)
        llm = null_plan(catalogue, refs, Recording(), Split.VALID, fraction)
        rule = null_plan(catalogue, refs, BaselineSimulator(), Split.VALID, fraction)
    assert len(llm) == math.ceil(fraction * labels)
    assert len(rule) == labels  # rule-based: all, whatever the fraction


def test_dry_run_counts_the_null_calls(db, tmp_path):
    labelled(db, 20)
    missing = tmp_path / "missing.toml"
    args = ("score", "--db", db, "--layer", "1", "--simulator", "some-llm", "--dry-run")
    out = run(*args, "--llm-config", missing).stdout
    with Catalogue.open(db) as catalogue:
        refs = catalogue.neuron_refs(None, [1], None)
        own = 0
        for ref in refs:
            view = catalogue.neuron_view(None, ref.layer, ref.neuron)
            held = scored_windows(view, Split.VALID)
            own += len(view.explanations) * len(held)
        plan = null_plan(catalogue, refs, Recording(), Split.VALID, 0.1)
    null_calls = sum(len(j.windows) for j in plan)
    assert len(plan) == 2 and null_calls > 0
    assert f"48 neurons, {own + null_calls:,} calls" in out
    assert "null control: 2 labels against other neurons" in out
    assert "estimate: none, the LLM settings are unreadable (config file" in out
    more = run(*args, "--null-sample", "0.5", "--llm-config", missing).stdout
    assert "null control: 10 labels against other neurons" in more


def test_show_and_rank_hold_each_score_to_the_latest_matching_null(db):
    run("explain", "--db", db, "--layer", "1")
    run("score", "--db", db, "--layer", "1")
    ranked = json.loads(run("rank", "--db", db, "--format", "json").stdout)
    scored = sorted(r["score"] for r in ranked if r["score"] is not None)
    p95 = scored[len(scored) // 2]
    with Catalogue.open(db) as catalogue:
        model = catalogue.resolve_model(None).name
        for simulator, cut in (("baseline", p95), ("other-sim", -1.0)):  # latest of each key
            catalogue.save_null_control(
                NullControl(
                    model=model,
                    simulator=simulator,
                    prompt_version=BaselineSimulator.prompt_version,
                    split=Split.VALID,
                    prediction=PredictionKind.RULE,
                    values=[cut],
                    mean=cut,
                    std=0.0,
                    p95=cut,
                )
            )
    ranked = json.loads(run("rank", "--db", db, "--format", "json").stdout)
    assert all(r["above_chance"] is None for r in ranked if r["score"] is None)
    assert {r["above_chance"] for r in ranked if r["score"] is not None} == {True, False}
    for r in ranked:
        if r["score"] is not None:
            assert r["above_chance"] is (r["score"] > p95)
    table = run("rank", "--db", db).stdout
    assert "≈chance" in table

    low = next(r for r in ranked if r["above_chance"] is False)
    target = ("--layer", low["layer"], "--neuron", low["neuron"])
    shown = json.loads(run("show", "--db", db, *target, "--format", "json").stdout)
    verdicts = {
        (s["split"], s["method"]): s["above_chance"]
        for e in shown["explanations"]
        for s in e["scores"]
        if s["simulator"] == "baseline"
    }
    assert verdicts[("valid", "top_and_random")] is False
    text = run("show", "--db", db, *target).stdout
    assert f"(not above chance: null p95 {p95:.2f})" in text

    high = next(r for r in ranked if r["above_chance"] is True)
    shown = run("show", "--db", db, "--layer", high["layer"], "--neuron", high["neuron"])
    assert "not above chance" not in shown.stdout


def test_one_neuron_scoring_without_a_null_keeps_the_batch_runs_null(db):
    labelled(db, 6)
    simulator = Recording()
    with Catalogue.open(db) as catalogue:
        refs = catalogue.neuron_refs(None, [1], None)
        batch = asyncio.run(score_neurons(catalogue, refs, simulator, null_sample=1.0)).null
        report = asyncio.run(
            score_neurons(catalogue, refs[:1], simulator, force=True, null_control=False)
        )
        latest = catalogue.latest_null_control(
            refs[0].model, simulator.name, simulator.prompt_version, Split.VALID,
            PredictionKind.EXPECTED_VALUE,
        )  # fmt: skip
    assert report.null is None and len(simulator.calls) == 6 + 6 + 1
    assert batch is not None and batch.n > 0
    assert latest is not None and latest.values == batch.values
