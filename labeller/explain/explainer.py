"""Explainers: a neuron's train-split top windows -> label candidates.

`Explainer` is the interface the service runs (after neuron-explainer's `NeuronExplainer`);
`LLMExplainer` asks an LLM in the Bills et al. format. The offline one is in `baseline`.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labeller.explain.client import Cause, ChatClient, DryRun, LLMCallError, ReplyError
from labeller.explain.prompts import activation_records, explainer_messages, load_template
from labeller.records import ChatRequest

PREFIX = re.compile(
    r"^\s*(explanation[^:]*:\s*)?(the main thing this neuron does is find)\s*", re.I
)
MAX_LENGTH = 400

Windows = Sequence[tuple[Sequence[str], Sequence[float]]]


@dataclass(frozen=True)
class Candidate:
    """One sample of best-of-K: a label, or the raw reply of a failed attempt and why."""

    sample: int
    text: str | None
    raw: str
    error: str | None
    attempts: int
    cause: Cause | None = None  # set when text is None: how the run's summary counts it


class Explainer(ABC):
    """Proposes labels for one neuron at a time, and says what the service records with them."""

    name: str  # each label's source
    prompt_version: str
    producer_model: str | None  # the LLM that writes the labels; None when none does

    @abstractmethod
    async def explain(self, windows: Windows) -> list[Candidate]:
        """Candidates for one neuron; a failure is a candidate without text (never raised), so
        the service keeps it in failed_attempts."""

    @abstractmethod
    def dry_run(self, neurons: Iterable[Windows]) -> DryRun:
        """What explaining these neurons would send, without sending it."""


def parse_explanation(reply: str) -> str:
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    if not lines:
        raise ReplyError("empty reply", reply)
    text = PREFIX.sub("", lines[0]).strip().strip('"').strip()
    if "<start>" in text or "\t" in text:
        raise ReplyError("reply repeats the activation records instead of explaining", reply)
    if len(text) < 3:
        raise ReplyError("reply too short to be an explanation", reply)
    if len(text) > MAX_LENGTH:
        raise ReplyError(f"reply longer than {MAX_LENGTH} characters", reply)
    return text


def explainer_request(model: str, windows: Windows, temperature: float) -> ChatRequest:
    template = load_template("explainer")
    return ChatRequest(
        model=model,
        messages=explainer_messages(template, activation_records(windows)),
        temperature=temperature,
        max_tokens=100,
    )


class LLMExplainer(Explainer):
    """Best-of-K: `candidates` samples at once. An unparseable reply is retried with a fresh
    sample, then kept as a failed candidate with its raw reply (never as a label); a failed call
    fails the neuron's whole batch, as one failed candidate."""

    def __init__(
        self,
        client: ChatClient,
        model: str,
        *,
        candidates: int = 1,
        temperature: float = 1.0,
        max_attempts: int = 3,
    ) -> None:
        self.client = client
        self.name = self.producer_model = model
        self.prompt_version = load_template("explainer").version
        self.candidates = candidates
        self.temperature = temperature
        self.max_attempts = max_attempts

    async def explain(self, windows: Windows) -> list[Candidate]:
        base = explainer_request(self.name, windows, self.temperature)

        async def sample(index: int) -> Candidate:
            raw, error = "", ""
            for attempt in range(self.max_attempts):
                request = base.model_copy(update={"n_sample": index, "attempt": attempt})
                raw = (await self.client.complete(request)).text
                try:
                    return Candidate(index, parse_explanation(raw), raw, None, attempt + 1)
                except ReplyError as exc:
                    error = str(exc)
            return Candidate(index, None, raw, error, self.max_attempts, Cause.UNPARSEABLE)

        try:
            return list(await asyncio.gather(*(sample(i) for i in range(self.candidates))))
        except LLMCallError as exc:
            return [Candidate(0, None, "", str(exc), exc.attempts, exc.cause)]

    def dry_run(self, neurons: Iterable[Windows]) -> DryRun:
        return DryRun.of(
            request
            for windows in neurons
            for request in [explainer_request(self.name, windows, self.temperature)]
            * self.candidates
        )
