"""Explain and score batches of neurons against the catalogue: what the CLI and the TUI call.

They run any `Explainer` or `Simulator` (see `resolve` for how one is chosen by name) and record
what it reports, never asking which kind it is. Work is written neuron by neuron as it completes,
so an interrupted run keeps what it finished and the next run skips it (unless `force`).

A neuron whose work fails is recorded (failed_attempts) and counted by cause in the `Report`;
an `LLMFatal` error (bad key, unknown model, no endpoint) is not: it cancels every worker and
propagates, since every other neuron would fail the same way.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

from labeller.catalogue import Catalogue, NeuronRef
from labeller.explain.client import Cause, DryRun
from labeller.explain.explainer import Explainer, Windows
from labeller.explain.scoring import correlation_score, null_summary
from labeller.explain.simulator import Job, NotScorable, SimulationFailed, Simulator
from labeller.records import (
    METHOD_KINDS,
    Example,
    ExampleKind,
    Explanation,
    NeuronView,
    NullControl,
    PredictionKind,
    Score,
    ScoreMethod,
    ScoreWindows,
    Split,
    neuron_name,
)
from labeller.sealing import is_blind

NEURON_WORKERS = 64
NULL_SAMPLE = 0.1  # share of an LLM run's labels also scored against another neuron


@dataclass
class Report:
    neurons: int = 0
    skipped: int = 0
    written: int = 0
    failed: int = 0
    not_scorable: int = 0
    notes: list[str] = field(default_factory=list)
    causes: Counter[Cause] = field(default_factory=Counter)
    null: NullControl | None = None

    def fail(self, cause: Cause) -> None:
        """Count one failure under its cause, so the run can end with failures by cause."""
        self.failed += 1
        self.causes[cause] += 1

    def failures_by_cause(self) -> str:
        """E.g. "2 timeout, 1 unparseable reply", most frequent first."""
        return ", ".join(f"{n:,} {cause}" for cause, n in self.causes.most_common())


def train_windows(view_examples: Sequence[Example]) -> Windows:
    return [(e.tokens, e.activations) for e in view_examples if e.split is Split.TRAIN]


def scored_windows(
    view: NeuronView, split: Split, on: ScoreWindows = ScoreWindows.TOP_AND_RANDOM
) -> list[Example]:
    """Held-out windows of one split, of the kinds `on` names (top, random, band windows band
    by band, then each subset's top windows); never a train window (the explainer's)."""
    if split is Split.TRAIN:
        raise ValueError("scoring on the train split would grade the explainer on its own input")
    examples = (
        *view.top_examples,
        *view.random_examples,
        *view.quantile_examples,
        *view.subset_examples,
    )
    return [e for e in examples if e.split is split and e.kind in on.kinds]


async def _for_each(
    refs: Sequence[NeuronRef],
    work: Callable[[NeuronRef], Awaitable[None]],
    on_progress: Callable[[int], None] | None,
) -> None:
    """A fixed pool of neuron workers: enough in flight to keep the LLM client's concurrency
    busy, without one coroutine per neuron for 300,000 neurons.

    Progress is reported once before any work (so a bar can show at once) and after each
    neuron. The first exception a worker lets through cancels the others and propagates.
    """
    pending = iter(refs)
    done = 0
    if on_progress:
        on_progress(0)

    async def worker() -> None:
        nonlocal done
        for ref in pending:
            await work(ref)
            done += 1
            if on_progress:
                on_progress(done)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(NEURON_WORKERS, len(refs)))]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def explain_neurons(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    explainer: Explainer,
    *,
    force: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    """Label each neuron from its train windows, unless this explainer already did (`force`)."""
    report = Report(neurons=len(refs))

    async def one(ref: NeuronRef) -> None:
        if not force and any(e.source == explainer.name for e in catalogue.explanations_of(ref.id)):
            report.skipped += 1
            return
        view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
        windows = train_windows(view.top_examples)
        if not windows:
            where = neuron_name(ref.layer, ref.neuron)
            report.notes.append(f"{where}: no train windows; rescan it")
            report.fail(Cause.NO_WINDOWS)
            return
        for candidate in await explainer.explain(windows):
            if candidate.text is None:
                report.fail(candidate.cause or Cause.UNPARSEABLE)
                catalogue.record_failure(
                    ref.id,
                    stage="explain",
                    producer_model=explainer.producer_model,
                    prompt_version=explainer.prompt_version,
                    error=candidate.error or "unusable reply",
                    raw=candidate.raw,
                )
                continue
            added = catalogue.add_explanation(
                ref,
                candidate.text,
                source=explainer.name,
                prompt_version=explainer.prompt_version,
                producer_model=explainer.producer_model,
            )
            report.written += added is not None

    await _for_each(refs, one, on_progress)
    return report


async def score_neurons(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    simulator: Simulator,
    *,
    split: Split = Split.VALID,
    on: ScoreWindows = ScoreWindows.TOP_AND_RANDOM,
    force: bool = False,
    null_sample: float = NULL_SAMPLE,
    null_control: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    """Score every explanation of each neuron (LLM, baseline or human alike) on `split`'s
    windows of the kinds `on` names, then the run's null control (see `null_plan`) on the
    same kinds, stored and returned in `Report.null`.

    On valid, a source with several candidates (best-of-K) also has them scored on
    calibration: the best is chosen there and reports its valid score, so choosing does not
    inflate what is reported. Test is scored only when asked, and never chooses. Choosing
    reads the primary (top-and-random) score, so a run `on` quantiles only chooses nothing.

    `null_control` False: no null control (the TUI's one-neuron scoring, whose sample of one
    or two labels would replace a batch run's as the latest chance level).
    """
    report = Report(neurons=len(refs))

    chooses = split is Split.VALID and ExampleKind.TOP in on.kinds

    def todo(explanations: list[Explanation], at: Split) -> list[Explanation]:
        return [
            e
            for e in explanations
            if force
            or not catalogue.has_scores(
                e.id or 0, simulator.name, at, simulator.prompt_version, on.methods[0]
            )
        ]

    async def one(ref: NeuronRef) -> None:
        explanations = catalogue.explanations_of(ref.id)
        reported = todo(explanations, split)
        report.skipped += len(explanations) - len(reported)
        sources = Counter(e.source for e in explanations)
        choosing = []
        if chooses:
            candidates = [e for e in explanations if sources[e.source] > 1]
            choosing = todo(candidates, Split.CALIBRATION)
        if not reported and not choosing:
            return
        view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
        for at, labels in ((Split.CALIBRATION, choosing), (split, reported)):
            windows = scored_windows(view, at, on)
            for explanation in labels:
                await _score_one(
                    catalogue,
                    ref,
                    explanation,
                    windows,
                    simulator,
                    at,
                    on,
                    report,
                    counted=at is split,
                )
        if chooses:
            for source, count in sources.items():
                chosen_on = Split.CALIBRATION if count > 1 else None
                catalogue.mark_best(ref.id, source, simulator.name, chosen_on=chosen_on)

    await _for_each(refs, one, on_progress)
    plan = null_plan(catalogue, refs, simulator, split, null_sample, on) if null_control else []
    if plan:
        report.null = await _null_control(catalogue, plan, simulator, split, on)
        catalogue.save_null_control(report.null)
    report.notes[:0] = simulator.run_notes()
    return report


@dataclass(frozen=True)
class NullJob:
    """One label scored against another neuron's held-out windows."""

    explanation: Explanation
    own: NeuronRef
    other: NeuronRef
    windows: list[Example]


def null_plan(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    simulator: Simulator,
    split: Split,
    fraction: float = NULL_SAMPLE,
    on: ScoreWindows = ScoreWindows.TOP_AND_RANDOM,
) -> list[NullJob]:
    """The labels of these neurons a run scores against chance, each paired with a different
    neuron of the same model and layers, chosen at random (never itself).

    All labels for a rule-based simulator (free); `fraction` of them, rounded up, for an LLM.
    Seeded by the simulator, split and neurons, so the same run samples the same pairs.
    """
    labels = [(ref, e) for ref in refs for e in catalogue.explanations_of(ref.id)]
    if not labels:
        return []
    layers = sorted({ref.layer for ref in refs})
    pool = catalogue.neuron_refs(refs[0].model, layers, None)
    if len(pool) < 2:
        return []
    rng = random.Random(f"null:{simulator.name}:{split}:{','.join(str(r.id) for r in refs)}")
    if simulator.prediction is PredictionKind.RULE:
        count = len(labels)
    else:
        count = min(len(labels), math.ceil(max(fraction, 0.0) * len(labels)))
    views: dict[int, list[Example]] = {}
    jobs = []
    for own, explanation in sorted(rng.sample(labels, count), key=lambda p: p[1].id or 0):
        other = rng.choice([r for r in pool if r.id != own.id])
        if other.id not in views:
            view = catalogue.neuron_view(other.model, other.layer, other.neuron)
            views[other.id] = scored_windows(view, split, on)
        jobs.append(NullJob(explanation, own, other, views[other.id]))
    return jobs


async def _null_control(
    catalogue: Catalogue,
    plan: Sequence[NullJob],
    simulator: Simulator,
    split: Split,
    on: ScoreWindows,
) -> NullControl:
    """Each planned label's r against its other neuron's windows, by the same Pearson code.

    A label with no r (constant vectors, not scorable, failed, or predictions of another kind
    than the run settled on) is excluded and counted."""
    gate = asyncio.Semaphore(NEURON_WORKERS)

    async def one(job: NullJob) -> tuple[float | None, PredictionKind | None]:
        async with gate:
            try:
                simulation = await simulator.simulation(
                    job.explanation.text, [w.tokens for w in job.windows]
                )
            except (NotScorable, SimulationFailed):
                return None, None
        true = [w.activations for w in job.windows]
        return correlation_score(true, simulation.values), simulation.prediction

    results = await asyncio.gather(*(one(job) for job in plan))
    kind = simulator.prediction
    values = [r for r, k in results if r is not None and k is kind]
    mean, std, p95 = null_summary(values)
    return NullControl(
        model=plan[0].own.model,
        simulator=simulator.name,
        prompt_version=simulator.prompt_version,
        split=split,
        prediction=kind,
        windows=on,
        values=values,
        excluded=len(results) - len(values),
        mean=mean,
        std=std,
        p95=p95,
    )


def null_line(null: NullControl) -> str:
    """`score`'s line for the run's null control."""
    if null.mean is None or null.std is None or null.p95 is None:
        return f"null: no r over {null.excluded:,} labels (all excluded: no score)"
    line = (
        f"null: mean r {null.mean:.2f} +/- {null.std:.2f} over {null.n:,} labels, "
        f"95th percentile {null.p95:.2f}"
    )
    if null.excluded:
        line += f" ({null.excluded:,} excluded: no score)"
    return line


async def _score_one(
    catalogue: Catalogue,
    ref: NeuronRef,
    explanation: Explanation,
    windows: list[Example],
    simulator: Simulator,
    split: Split,
    on: ScoreWindows,
    report: Report,
    *,
    counted: bool = True,
) -> None:
    """Scores, or null scores with the reason when the simulator cannot read the label, or
    nothing but the failures when it could not predict every window. `counted`: whether a
    success counts as a label scored (calibration scores only choose)."""
    assert explanation.id is not None
    blind = is_blind(explanation.seen, split)
    try:
        simulation = await simulator.simulation(explanation.text, [w.tokens for w in windows])
    except NotScorable as exc:
        report.not_scorable += counted
        catalogue.save_scores(
            explanation.id,
            [
                Score(
                    method=method,
                    split=split,
                    score=None,
                    simulator=simulator.name,
                    prompt_version=simulator.prompt_version,
                    prediction=simulator.prediction,
                    blind=blind,
                    windows=on,
                    details={"reason": str(exc)},
                )
                for method in on.methods
            ],
        )
        return
    except SimulationFailed as exc:
        report.fail(Counter(f.cause for f in exc.failures).most_common(1)[0][0])
        for failure in exc.failures:
            catalogue.record_failure(
                ref.id,
                stage="simulate",
                producer_model=simulator.producer_model,
                prompt_version=simulator.prompt_version,
                error=failure.error,
                raw=failure.raw,
                explanation_id=explanation.id,
            )
        return
    catalogue.save_scores(
        explanation.id,
        build_scores(
            windows,
            simulation.values,
            simulator.name,
            simulator.prompt_version,
            split,
            simulation.prediction,
            on,
            blind=blind,
        ),
    )
    report.written += counted


def build_scores(
    windows: Sequence[Example],
    simulated: Sequence[Sequence[float]],
    simulator: str,
    version: str,
    split: Split,
    prediction: PredictionKind,
    on: ScoreWindows = ScoreWindows.TOP_AND_RANDOM,
    *,
    blind: bool = False,
) -> list[Score]:
    """One score per method `on` gives, each over its kinds of the windows (top-and-random,
    top-only and random-only for the reference's windows; subset_top: one score per corpus
    subset, over that subset's windows); the per-window detail goes on the first, the one
    over all the windows simulated. `blind`: the label's author saw none of `windows` (see
    `labeller.sealing`)."""
    groups: dict[tuple[ScoreMethod, str | None], list[bool]] = {}
    for method in on.methods:
        if method is ScoreMethod.SUBSET_TOP:
            for name in sorted({w.subset for w in windows if w.subset is not None}):
                groups[method, name] = [
                    w.kind is ExampleKind.SUBSET_TOP and w.subset == name for w in windows
                ]
        else:
            groups[method, None] = [w.kind in METHOD_KINDS[method] for w in windows]
    detail = {
        "windows": [
            {
                "kind": w.kind.value,
                "rank": w.rank,
                **({"band": w.band} if w.band is not None else {}),
                **({"subset": w.subset} if w.subset is not None else {}),
                "tokens": w.tokens,
                "true": w.activations,
                "simulated": list(s),
            }
            for w, s in zip(windows, simulated, strict=True)
        ]
    }
    scores: list[Score] = []
    for (method, subset), chosen in groups.items():
        true = [w.activations for w, keep in zip(windows, chosen, strict=True) if keep]
        sim = [list(s) for s, keep in zip(simulated, chosen, strict=True) if keep]
        scores.append(
            Score(
                method=method,
                split=split,
                score=correlation_score(true, sim),
                simulator=simulator,
                prompt_version=version,
                prediction=prediction,
                blind=blind,
                windows=on,
                subset=subset,
                details=detail if not scores else {},
            )
        )
    return scores


def dry_run_explain(
    catalogue: Catalogue, refs: Sequence[NeuronRef], explainer: Explainer
) -> DryRun:
    """What `explain_neurons` would send for these neurons (train windows read only if asked)."""

    def neurons() -> Iterator[Windows]:
        for ref in refs:
            view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
            windows = train_windows(view.top_examples)
            if windows:
                yield windows

    return explainer.dry_run(neurons())


def dry_run_score(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    simulator: Simulator,
    split: Split,
    null_sample: float = NULL_SAMPLE,
    on: ScoreWindows = ScoreWindows.TOP_AND_RANDOM,
) -> DryRun:
    """What `score_neurons` would send to score every label of these neurons on `split`'s
    windows of the kinds `on` names, null control included."""

    def jobs() -> Iterator[Job]:
        for ref in refs:
            view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
            windows = scored_windows(view, split, on)
            for explanation in view.explanations:
                yield explanation.text, [w.tokens for w in windows]
        for job in null_plan(catalogue, refs, simulator, split, null_sample, on):
            yield job.explanation.text, [w.tokens for w in job.windows]

    return simulator.dry_run(jobs())
