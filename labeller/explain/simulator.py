"""Simulators: from a label alone, predict 0-10 for every token of held-out windows.

`Simulator` is the interface the service runs (after neuron-explainer's `NeuronSimulator`);
`LLMSimulator` asks an LLM one window at a time. With logprobs, each prediction is the expected
value over "0".."10" (renormalised over those eleven tokens); without, the integer the model
wrote. Every reply must reprint the window's tokens in order: a mismatch is an error for that
window, never silent zeros. The offline simulator is in `baseline`.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from labeller.explain.client import (
    Cause,
    ChatClient,
    DryRun,
    LLMCallError,
    LogprobsUnsupported,
    ReplyError,
)
from labeller.explain.prompts import load_template, simulator_messages
from labeller.records import ChatRequest, ChatResponse, TokenLogprob
from labeller.render import visible_token

VALUES = {str(v): v for v in range(11)}
TOP_LOGPROBS = 15
TEMPERATURE = 0.0  # predictions, not samples

# What a simulator is asked about: one label and the tokens of each window to predict.
Job = tuple[str, Sequence[Sequence[str]]]


class NotScorable(Exception):
    """The simulator cannot work from this label; the message is the reason stored with the
    null scores."""


@dataclass(frozen=True)
class Failure:
    """Why one window got no prediction, and the raw reply if there was one."""

    error: str
    raw: str
    cause: Cause = Cause.UNPARSEABLE


class SimulationFailed(Exception):
    """Some window got no prediction (a partial score would mislead); the service keeps each
    failure in failed_attempts."""

    def __init__(self, failures: Sequence[Failure]) -> None:
        super().__init__("; ".join(f.error for f in failures))
        self.failures = list(failures)


class Simulator(ABC):
    """Predicts a neuron's activations from a label, and says what the service records."""

    name: str  # each score's simulator
    prompt_version: str
    producer_model: str | None  # the LLM that predicts; None when none does

    @abstractmethod
    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """One prediction per token of every window; raises `NotScorable` or
        `SimulationFailed`."""

    @abstractmethod
    def dry_run(self, jobs: Iterable[Job]) -> DryRun:
        """What simulating these labels on their windows would send, without sending it."""


@dataclass(frozen=True)
class WindowSimulation:
    values: list[float] | None
    raw: str
    error: str | None
    attempts: int
    used_logprobs: bool


def simulator_request(
    model: str, explanation: str, tokens: Sequence[str], *, logprobs: bool, temperature: float
) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=simulator_messages(load_template("simulator"), explanation, tokens),
        temperature=temperature,
        max_tokens=16 * len(tokens) + 32,
        logprobs=logprobs,
        top_logprobs=TOP_LOGPROBS if logprobs else None,
    )


def parse_simulation(response: ChatResponse, tokens: Sequence[str]) -> tuple[list[float], bool]:
    """Predicted values per token, and whether they came from logprobs."""
    text = response.text
    start = text.find("<start>")
    body_from = start + len("<start>") if start >= 0 else 0
    end = text.find("<end>", body_from)
    body_to = end if end >= 0 else len(text)
    lines: list[tuple[str, int, int]] = []  # token text, value, offset of the value in text
    offset = body_from
    for line in text[body_from:body_to].split("\n"):
        line_start = offset
        offset += len(line) + 1
        if not line.strip():
            continue
        if "\t" not in line:
            raise ReplyError(f"line {len(lines) + 1} has no tab: {line[:40]!r}", text)
        token_text, value_text = line.rsplit("\t", 1)
        if value_text.strip() not in VALUES:
            raise ReplyError(f"line {len(lines) + 1}: {value_text[:20]!r} is not 0-10", text)
        value_at = line_start + len(token_text) + 1 + (len(value_text) - len(value_text.lstrip()))
        lines.append((token_text, VALUES[value_text.strip()], value_at))
    if len(lines) != len(tokens):
        raise ReplyError(f"reply has {len(lines)} token lines for {len(tokens)} tokens", text)
    for index, ((token_text, _, _), token) in enumerate(zip(lines, tokens, strict=True)):
        if token_text.strip() != visible_token(token).strip():
            raise ReplyError(
                f"token {index} misaligned: expected {visible_token(token)!r}, got {token_text!r}",
                text,
            )
    integers = [float(value) for _, value, _ in lines]
    if not response.logprobs:
        return integers, False
    expected = _expected_values(response.logprobs, text, [at for _, _, at in lines])
    if expected is None:
        return integers, False
    return expected, True


def _expected_values(
    logprobs: list[TokenLogprob], text: str, offsets: list[int]
) -> list[float] | None:
    """Expected value over "0".."10" at each value's position; None if the logprob tokens do
    not spell the reply (then the written integers are used)."""
    if "".join(t.token for t in logprobs) != text:
        return None
    starts: dict[int, TokenLogprob] = {}
    position = 0
    for token in logprobs:
        starts[position] = token
        position += len(token.token)
    values = []
    for offset in offsets:
        at = starts.get(offset)
        if at is None:
            return None
        weights: dict[int, float] = {}
        for alternative in at.top_logprobs or []:
            key = alternative.token.strip()
            if key in VALUES:
                weights[VALUES[key]] = weights.get(VALUES[key], 0.0) + math.exp(alternative.logprob)
        if not weights:
            return None
        total = sum(weights.values())
        values.append(sum(v * w for v, w in weights.items()) / total)
    return values


async def simulate_window(
    client: ChatClient,
    model: str,
    explanation: str,
    tokens: Sequence[str],
    *,
    logprobs: bool,
    temperature: float = TEMPERATURE,
    max_attempts: int = 3,
) -> WindowSimulation:
    base = simulator_request(model, explanation, tokens, logprobs=logprobs, temperature=temperature)
    raw, error = "", ""
    for attempt in range(max_attempts):
        response = await client.complete(base.model_copy(update={"attempt": attempt}))
        raw = response.text
        try:
            values, used_logprobs = parse_simulation(response, tokens)
        except ReplyError as exc:
            error = str(exc)
            continue
        return WindowSimulation(values, raw, None, attempt + 1, used_logprobs)
    return WindowSimulation(None, raw, error, max_attempts, False)


class LLMSimulator(Simulator):
    """All windows of a label at once, one request each. Asks for logprobs (unless told not to)
    until the endpoint refuses them, then uses the written values for the rest of the run."""

    def __init__(self, client: ChatClient, model: str, *, logprobs: bool = True) -> None:
        self.client = client
        self.name = self.producer_model = model
        self.prompt_version = load_template("simulator").version
        self.logprobs = logprobs

    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        results = await asyncio.gather(*(self._window(explanation, w) for w in windows))
        failures = [r for r in results if isinstance(r, Failure)]
        if failures:
            raise SimulationFailed(failures)
        return [r for r in results if not isinstance(r, Failure)]

    async def _window(self, explanation: str, tokens: Sequence[str]) -> list[float] | Failure:
        while True:
            try:
                result = await simulate_window(
                    self.client, self.name, explanation, tokens, logprobs=self.logprobs
                )
            except LogprobsUnsupported:
                self.logprobs = False  # this endpoint has none: use the written values
                continue
            except LLMCallError as exc:
                return Failure(str(exc), "", exc.cause)
            if result.values is None:
                return Failure(result.error or "", result.raw)
            return result.values

    def dry_run(self, jobs: Iterable[Job]) -> DryRun:
        return DryRun.of(
            simulator_request(
                self.name, explanation, tokens, logprobs=self.logprobs, temperature=TEMPERATURE
            )
            for explanation, windows in jobs
            for tokens in windows
        )
