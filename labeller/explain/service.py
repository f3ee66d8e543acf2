"""Explain and score batches of neurons against the catalogue: what the CLI (and the TUI) call.

Work is written neuron by neuron as it completes, so an interrupted run keeps what it finished
and the next run skips it (unless `force`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from labeller.catalogue import Catalogue, NeuronRef
from labeller.explain import baseline
from labeller.explain.client import ChatClient, LLMCallError, LogprobsUnsupported
from labeller.explain.explainer import explain, explainer_request
from labeller.explain.prompts import load_template
from labeller.explain.scoring import correlation_score
from labeller.explain.simulator import simulate_window, simulator_request
from labeller.records import ChatRequest, Example, Explanation, Score, Split

BASELINE = "baseline"
NEURON_WORKERS = 64
METHODS = ("top_and_random", "top_only", "random_only")

Windows = list[tuple[list[str], list[float]]]


@dataclass
class Report:
    neurons: int = 0
    skipped: int = 0
    written: int = 0
    failed: int = 0
    not_scorable: int = 0
    notes: list[str] = field(default_factory=list)


def train_windows(view_examples: Sequence[Example]) -> Windows:
    return [(e.tokens, e.activations) for e in view_examples if e.split is Split.TRAIN]


def scored_windows(
    top: Sequence[Example], random: Sequence[Example], split: Split
) -> list[Example]:
    """Held-out windows of one split; never a train window (those are the explainer's)."""
    if split is Split.TRAIN:
        raise ValueError("scoring on the train split would grade the explainer on its own input")
    return [e for e in (*top, *random) if e.split is split]


async def _for_each(
    refs: Sequence[NeuronRef],
    work: Callable[[NeuronRef], Awaitable[None]],
    on_progress: Callable[[int], None] | None,
) -> None:
    """A fixed pool of neuron workers: enough in flight to keep the LLM client's concurrency
    busy, without one coroutine per neuron for 300,000 neurons."""
    pending = iter(refs)
    done = 0

    async def worker() -> None:
        nonlocal done
        for ref in pending:
            await work(ref)
            done += 1
            if on_progress:
                on_progress(done)

    await asyncio.gather(*(worker() for _ in range(min(NEURON_WORKERS, len(refs)))))


async def explain_neurons(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    *,
    explainer: str,
    client: ChatClient | None,
    candidates: int = 1,
    temperature: float = 1.0,
    force: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    report = Report(neurons=len(refs))
    version = baseline.VERSION if explainer == BASELINE else load_template("explainer").version

    async def one(ref: NeuronRef) -> None:
        if not force and any(e.source == explainer for e in catalogue.explanations_of(ref.id)):
            report.skipped += 1
            return
        view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
        windows = train_windows(view.top_examples)
        if not windows:
            report.notes.append(f"{ref.layer}.{ref.neuron}: no train windows; rescan it")
            report.failed += 1
            return
        if explainer == BASELINE:
            texts = [baseline.explain_baseline(windows)]
        else:
            assert client is not None
            try:
                found = await explain(
                    client, explainer, windows, candidates=candidates, temperature=temperature
                )
            except LLMCallError as exc:
                report.failed += 1
                catalogue.record_failure(
                    ref.id,
                    stage="explain",
                    producer_model=explainer,
                    prompt_version=version,
                    error=str(exc),
                    raw="",
                )
                return
            texts = []
            for candidate in found:
                if candidate.text is None:
                    report.failed += 1
                    catalogue.record_failure(
                        ref.id,
                        stage="explain",
                        producer_model=explainer,
                        prompt_version=version,
                        error=candidate.error or "unusable reply",
                        raw=candidate.raw,
                    )
                else:
                    texts.append(candidate.text)
        for text in texts:
            added = catalogue.add_explanation(
                ref,
                text,
                source=explainer,
                prompt_version=version,
                producer_model=None if explainer == BASELINE else explainer,
            )
            report.written += added is not None

    await _for_each(refs, one, on_progress)
    return report


async def score_neurons(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    *,
    simulator: str,
    client: ChatClient | None,
    split: Split = Split.VALID,
    force: bool = False,
    logprobs: bool = True,
    on_progress: Callable[[int], None] | None = None,
) -> Report:
    """Score every explanation of each neuron (LLM, baseline or human alike) on `split`."""
    report = Report(neurons=len(refs))
    version = baseline.VERSION if simulator == BASELINE else load_template("simulator").version
    state = {"logprobs": logprobs}

    async def one(ref: NeuronRef) -> None:
        explanations = catalogue.explanations_of(ref.id)
        todo = [
            e
            for e in explanations
            if force or not catalogue.has_scores(e.id or 0, simulator, split, version)
        ]
        report.skipped += len(explanations) - len(todo)
        if not todo:
            return
        view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
        windows = scored_windows(view.top_examples, view.random_examples, split)
        for explanation in todo:
            await _score_one(
                catalogue,
                ref,
                explanation,
                windows,
                simulator,
                client,
                split,
                version,
                state,
                report,
            )
        if split is Split.VALID:
            for source in {e.source for e in explanations}:
                catalogue.mark_best(ref.id, source, "top_and_random", split)

    await _for_each(refs, one, on_progress)
    return report


async def _score_one(
    catalogue: Catalogue,
    ref: NeuronRef,
    explanation: Explanation,
    windows: list[Example],
    simulator: str,
    client: ChatClient | None,
    split: Split,
    version: str,
    state: dict[str, bool],
    report: Report,
) -> None:
    assert explanation.id is not None
    if simulator == BASELINE:
        try:
            simulated = baseline.simulate_baseline(explanation.text, [w.tokens for w in windows])
        except baseline.NotScorableOffline as exc:
            report.not_scorable += 1
            reason = f"not scorable offline: {exc}"
            catalogue.save_scores(
                explanation.id,
                [
                    Score(
                        method=m,
                        split=split,
                        score=None,
                        simulator=simulator,
                        prompt_version=version,
                        details={"reason": reason},
                    )
                    for m in METHODS
                ],
            )
            return
    else:
        assert client is not None
        simulated_or_none = await _simulate_llm(
            catalogue, ref, explanation, windows, simulator, client, version, state
        )
        if simulated_or_none is None:
            report.failed += 1
            return
        simulated = simulated_or_none
    catalogue.save_scores(
        explanation.id, build_scores(windows, simulated, simulator, version, split)
    )
    report.written += 1


async def _simulate_llm(
    catalogue: Catalogue,
    ref: NeuronRef,
    explanation: Explanation,
    windows: list[Example],
    model: str,
    client: ChatClient,
    version: str,
    state: dict[str, bool],
) -> list[list[float]] | None:
    """All windows simulated, or None after recording why (a partial score would mislead)."""

    async def window(example: Example) -> list[float] | None:
        while True:
            try:
                result = await simulate_window(
                    client, model, explanation.text, example.tokens, logprobs=state["logprobs"]
                )
            except LogprobsUnsupported:
                state["logprobs"] = False  # this endpoint has none: use the written values
                continue
            except LLMCallError as exc:
                catalogue.record_failure(
                    ref.id,
                    stage="simulate",
                    producer_model=model,
                    prompt_version=version,
                    error=str(exc),
                    raw="",
                    explanation_id=explanation.id,
                )
                return None
            if result.values is None:
                catalogue.record_failure(
                    ref.id,
                    stage="simulate",
                    producer_model=model,
                    prompt_version=version,
                    error=result.error or "",
                    raw=result.raw,
                    explanation_id=explanation.id,
                )
            return result.values

    results = await asyncio.gather(*(window(e) for e in windows))
    if any(r is None for r in results):
        return None
    return [r for r in results if r is not None]


def build_scores(
    windows: Sequence[Example],
    simulated: Sequence[Sequence[float]],
    simulator: str,
    version: str,
    split: Split,
) -> list[Score]:
    """Top-and-random (primary), top-only and random-only; per-window detail on the primary."""
    groups = {
        "top_and_random": [True] * len(windows),
        "top_only": [w.kind.value == "top" for w in windows],
        "random_only": [w.kind.value == "random" for w in windows],
    }
    detail = {
        "windows": [
            {
                "kind": w.kind.value,
                "rank": w.rank,
                "tokens": w.tokens,
                "true": w.activations,
                "simulated": list(s),
            }
            for w, s in zip(windows, simulated, strict=True)
        ]
    }
    scores = []
    for method, chosen in groups.items():
        true = [w.activations for w, keep in zip(windows, chosen, strict=True) if keep]
        sim = [list(s) for s, keep in zip(simulated, chosen, strict=True) if keep]
        scores.append(
            Score(
                method=method,
                split=split,
                score=correlation_score(true, sim),
                simulator=simulator,
                prompt_version=version,
                details=detail if method == "top_and_random" else {},
            )
        )
    return scores


def dry_run_requests(
    catalogue: Catalogue,
    refs: Sequence[NeuronRef],
    *,
    stage: str,
    model: str,
    candidates: int = 1,
    split: Split = Split.VALID,
    logprobs: bool = True,
) -> tuple[ChatRequest | None, int, int]:
    """One example request, and the calls and prompt tokens (about 4 characters a token) the
    run would need at most, without retries."""
    example: ChatRequest | None = None
    calls = tokens = 0
    for ref in refs:
        view = catalogue.neuron_view(ref.model, ref.layer, ref.neuron)
        if stage == "explain":
            windows = train_windows(view.top_examples)
            if not windows:
                continue
            request = explainer_request(model, windows, 1.0)
            requests = [request] * candidates
        else:
            windows_held = scored_windows(view.top_examples, view.random_examples, split)
            requests = [
                simulator_request(model, e.text, w.tokens, logprobs=logprobs, temperature=0.0)
                for e in view.explanations
                for w in windows_held
            ]
        for request in requests:
            example = example or request
            calls += 1
            tokens += sum(len(m.content) for m in request.messages) // 4
    return example, calls, tokens
