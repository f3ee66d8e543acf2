"""Simulators: from a label alone, predict 0-10 for every token of held-out windows.

`Simulator` is the interface the service runs (after neuron-explainer's `NeuronSimulator`);
`LLMSimulator` asks an LLM one window at a time. Every reply must reprint the window's tokens in
order: a mismatch is an error for that window, never silent zeros.

Each score has one `PredictionKind`, never a mix: with logprobs every value is the expected value
over "0".."10" (renormalised over those eleven tokens), read at the value's position found by the
tokens' bytes; a window whose logprobs cannot give that is retried, then recorded as failed, like
a misaligned reply, never filled in with the written integers. Without logprobs every value is the
written integer. Whether the endpoint gives logprobs is settled by the run's first reply, before
any other window is sent. The offline simulator is in `baseline`.
"""

from __future__ import annotations

import asyncio
import bisect
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
from labeller.records import ChatRequest, ChatResponse, PredictionKind, TokenLogprob
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
    prediction: PredictionKind  # what its predictions are (an LLM's may change at run start)

    @abstractmethod
    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """One prediction per token of every window; raises `NotScorable` or
        `SimulationFailed`."""

    async def simulation(self, explanation: str, windows: Sequence[Sequence[str]]) -> Simulation:
        """The predictions with the one kind they all are: what the service records."""
        return Simulation(await self.simulate(explanation, windows), self.prediction)

    def run_notes(self) -> list[str]:
        """What the run must say once (e.g. that the endpoint gives no logprobs)."""
        return []

    @abstractmethod
    def dry_run(self, jobs: Iterable[Job]) -> DryRun:
        """What simulating these labels on their windows would send, without sending it."""


@dataclass(frozen=True)
class Simulation:
    """Predictions for every window of one label, all of one kind."""

    values: list[list[float]]
    prediction: PredictionKind


@dataclass(frozen=True)
class WindowSimulation:
    values: list[float] | None
    raw: str
    error: str | None
    attempts: int


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


def parse_simulation(
    response: ChatResponse, tokens: Sequence[str], prediction: PredictionKind
) -> list[float]:
    """Predicted values per token, all of `prediction`'s kind (expected values or integers)."""
    text = response.text
    start = text.find("<start>")
    body_from = start + len("<start>") if start >= 0 else 0
    end = text.find("<end>", body_from)
    body_to = end if end >= 0 else len(text)
    lines: list[tuple[str, str, int]] = []  # token text, value text, offset of the value in text
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
        lines.append((token_text, value_text.strip(), value_at))
    if len(lines) != len(tokens):
        raise ReplyError(f"reply has {len(lines)} token lines for {len(tokens)} tokens", text)
    for index, ((token_text, _, _), token) in enumerate(zip(lines, tokens, strict=True)):
        if token_text.strip() != visible_token(token).strip():
            raise ReplyError(
                f"token {index} misaligned: expected {visible_token(token)!r}, got {token_text!r}",
                text,
            )
    if prediction is PredictionKind.INTEGER:
        return [float(VALUES[value]) for _, value, _ in lines]
    if prediction is not PredictionKind.EXPECTED_VALUE:
        raise ValueError(f"an LLM reply cannot give {prediction} predictions")
    if not response.logprobs:
        raise ReplyError("reply has no logprobs, so no expected values", text)
    return _expected_values(response.logprobs, text, [(v, at) for _, v, at in lines])


def _token_bytes(token: TokenLogprob) -> bytes:
    """The token's bytes as sent; its string's UTF-8 when the server sent no bytes."""
    return bytes(token.bytes) if token.bytes is not None else token.token.encode()


def _expected_values(
    logprobs: list[TokenLogprob], text: str, values: list[tuple[str, int]]
) -> list[float]:
    """Expected value over "0".."10" at each written value (its text, its offset in `text`).

    Aligned by bytes, not strings: a token ending inside a multi-byte character (the visible
    markers for spaces and newlines) has a lossy string but exact bytes. Raises `ReplyError`
    when the tokens do not spell the reply, a value shares a token with other text or spans
    two tokens, or no digit is among its alternatives.
    """
    pieces = [_token_bytes(t) for t in logprobs]
    data = text.encode()
    if b"".join(pieces) != data:
        raise ReplyError("the logprob tokens do not spell the reply", text)
    starts = []
    position = 0
    for piece in pieces:
        starts.append(position)
        position += len(piece)
    expected = []
    for index, (written, offset) in enumerate(values):
        at = len(text[:offset].encode())
        k = bisect.bisect_right(starts, at) - 1
        head, piece = data[starts[k] : at], pieces[k]
        if head.strip() or piece.decode(errors="replace").strip() != written:
            raise ReplyError(f"value {index} ({written!r}) is not one token of its own", text)
        weights: dict[int, float] = {}
        for alternative in logprobs[k].top_logprobs or []:
            key = alternative.token.strip()
            if key in VALUES:
                weights[VALUES[key]] = weights.get(VALUES[key], 0.0) + math.exp(alternative.logprob)
        if not weights:
            raise ReplyError(f"value {index}: no 0-10 token among its logprobs", text)
        total = sum(weights.values())
        expected.append(sum(v * w for v, w in weights.items()) / total)
    return expected


async def simulate_window(
    client: ChatClient,
    model: str,
    explanation: str,
    tokens: Sequence[str],
    *,
    prediction: PredictionKind,
    temperature: float = TEMPERATURE,
    max_attempts: int = 3,
    probing: bool = False,
) -> WindowSimulation:
    """Up to `max_attempts` replies until one gives `prediction`'s values for every token.

    `probing`: this reply settles whether the endpoint gives logprobs at all, so a reply
    without them raises `LogprobsUnsupported` (an endpoint that ignores the parameter).
    """
    logprobs = prediction is PredictionKind.EXPECTED_VALUE
    base = simulator_request(model, explanation, tokens, logprobs=logprobs, temperature=temperature)
    raw, error = "", ""
    for attempt in range(max_attempts):
        response = await client.complete(base.model_copy(update={"attempt": attempt}))
        raw = response.text
        if probing and logprobs and response.logprobs is None:
            raise LogprobsUnsupported(
                f"{model} sent a reply without the logprobs it was asked for",
                attempts=attempt + 1,
                status=None,
            )
        try:
            values = parse_simulation(response, tokens, prediction)
        except ReplyError as exc:
            error = str(exc)
            continue
        return WindowSimulation(values, raw, None, attempt + 1)
    return WindowSimulation(None, raw, error, max_attempts)


class _NoLogprobs:
    """A window's signal that the endpoint gives no logprobs (internal)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class LLMSimulator(Simulator):
    """All windows of a label at once, one request each.

    Asks for logprobs (unless told not to). The run's first window goes alone and settles
    whether the endpoint gives them; if not, the run says so once (`run_notes`) and predicts
    integers from then on. Should an endpoint refuse logprobs later, the label being simulated
    is redone with integers, so its score is still of one kind.
    """

    def __init__(self, client: ChatClient, model: str, *, logprobs: bool = True) -> None:
        self.client = client
        self.name = self.producer_model = model
        self.prompt_version = load_template("simulator").version
        self.prediction = PredictionKind.EXPECTED_VALUE if logprobs else PredictionKind.INTEGER
        self._settled = not logprobs  # whether the endpoint's logprobs are known
        self._probe: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._notes: list[str] = []

    @property
    def logprobs(self) -> bool:
        return self.prediction is PredictionKind.EXPECTED_VALUE

    def run_notes(self) -> list[str]:
        return list(self._notes)

    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        return (await self.simulation(explanation, windows)).values

    async def simulation(self, explanation: str, windows: Sequence[Sequence[str]]) -> Simulation:
        while True:
            prediction = self.prediction
            results: list[list[float] | Failure | _NoLogprobs] = []
            rest = list(windows)
            if not self._settled and rest:
                async with self._probe_lock():  # the first window of the run goes alone
                    if not self._settled:
                        first = await self._window(explanation, rest[0], probing=True)
                        if isinstance(first, _NoLogprobs):
                            self._drop_logprobs(first.reason)
                            continue
                        self._settled = not isinstance(first, Failure)
                        results.append(first)
                        rest.pop(0)
                if self.prediction is not prediction:  # settled by another label: redo
                    continue
            results += await asyncio.gather(*(self._window(explanation, w) for w in rest))
            refused = [r for r in results if isinstance(r, _NoLogprobs)]
            if refused:
                self._drop_logprobs(refused[0].reason)
                continue
            if self.prediction is not prediction:  # another label found none meanwhile
                continue
            failures = [r for r in results if isinstance(r, Failure)]
            if failures:
                raise SimulationFailed(failures)
            return Simulation([r for r in results if isinstance(r, list)], prediction)

    def _probe_lock(self) -> asyncio.Lock:
        """One lock per event loop (each `Resolver.run` has its own)."""
        loop = asyncio.get_running_loop()
        if self._probe is None or self._probe[0] is not loop:
            self._probe = (loop, asyncio.Lock())
        return self._probe[1]

    def _drop_logprobs(self, reason: str) -> None:
        """From now on, integers; said once per run."""
        if self.prediction is PredictionKind.INTEGER:
            return
        self.prediction = PredictionKind.INTEGER
        self._settled = True
        self._notes.append(
            f"{self.name} gives no logprobs ({reason}): every score of this run predicts with "
            "the integers the model wrote (prediction: integer), not expected values"
        )

    async def _window(
        self, explanation: str, tokens: Sequence[str], probing: bool = False
    ) -> list[float] | Failure | _NoLogprobs:
        prediction = self.prediction
        try:
            result = await simulate_window(
                self.client,
                self.name,
                explanation,
                tokens,
                prediction=prediction,
                probing=probing,
            )
        except LogprobsUnsupported as exc:
            return _NoLogprobs(str(exc))
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
