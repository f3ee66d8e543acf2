"""neuron-explainer's "all at once" simulator, exactly, so scores compare with the paper's.

One prompt per window (`prompts/all_at_once.toml`: the reference's system text, its ORIGINAL
few-shot examples and layout, instruction-following format) in which every token's value is
`unknown`. It goes to `/v1/completions` with `echo`, `max_tokens=0` and `logprobs=15`, so nothing
is generated: the reply is the prompt's own tokens, each with its top 15 alternatives, and the
prediction for a token is read at its `unknown`, where the model was about to write a value.

The reading follows the reference's `parse_simulation_response` rule for rule:
- The window's `unknown`s are the tokens "unknown" right after a "\\t" token, after the last
  "<start>" of the echoed text, one per window token, in order (a tokenizer that merges the tab
  with its neighbour gives too few: the window fails, where the reference misaligns).
- The expected value is over the tokens "0".."10" among the alternatives, exactly those strings
  (" 7" does not count), their probabilities renormalised to sum to 1. With no such token among
  the top 15 the prediction is 0, as in the reference.
- When the simulator's tokenizer joins a window token to the line break before it (one token
  spans both, e.g. a "\\n" token after the "\\n" that ends the previous line), the prediction is
  0, as in the reference ("newline folded into the token"). A window token split over several
  simulator tokens is read as usual.
Both zero rules are counted and said once at the end of the run (`run_notes`). All predictions are
`expected_value`; the score's simulator is `<model>:all-at-once`.

Tokens are written raw, as the reference writes them (no visible markers for newlines and tabs),
so a window of newline tokens reads the way it did for the paper.

Before its first window, a run sends one tiny probe with the same parameters: a server that
returns no prompt logprobs (llama.cpp's) or refuses echo stops the run there, with one line
saying to use the chat mode or a vLLM server.
"""

from __future__ import annotations

import asyncio
import math
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from labeller.explain.client import (
    CompletionClient,
    DryRun,
    LLMCallError,
    LLMFatal,
)
from labeller.explain.prompts import prompts_dir
from labeller.explain.scoring import normalise_for_prompt
from labeller.explain.simulator import Failure, Job, Simulation, SimulationFailed, Simulator
from labeller.records import (
    CompletionRequest,
    CompletionResponse,
    PredictionKind,
    PromptToken,
    SimulatorMode,
)

TOP_LOGPROBS = 15  # the reference's `logprobs=15`
UNKNOWN = "unknown"
DIGITS = {str(v): v for v in range(11)}
NAME_SUFFIX = f":{SimulatorMode.ALL_AT_ONCE}"
# The probe: the tail of a real prompt, a few tokens long.
PROBE_PROMPT = "Neuron 1\nActivations: \n<start>\nprobe\tunknown\n<end>\n"
FIX = "score with --simulator-mode chat, or serve the model with vLLM"
PROBE_NOTE = (
    "first, 1 probe call (a few tokens) checks that the endpoint returns prompt logprobs with "
    "echo; llama.cpp's server does not, and the run stops there"
)


@dataclass(frozen=True)
class FewShotRecord:
    tokens: tuple[str, ...]
    activations: tuple[float, ...]


@dataclass(frozen=True)
class FewShotExample:
    explanation: str
    records: tuple[FewShotRecord, ...]
    first_revealed: tuple[int, ...]  # per record, the first index shown with its value


@dataclass(frozen=True)
class AllAtOncePrompt:
    version: str
    system: str
    explanation_prefix: str
    end_of_prompt: str
    few_shot: tuple[FewShotExample, ...]


@cache
def load_prompt(name: str = "all_at_once") -> AllAtOncePrompt:
    data: dict[str, Any] = tomllib.loads((prompts_dir() / f"{name}.toml").read_text("utf-8"))
    examples = []
    for shot in data["few_shot"]:
        records = tuple(
            FewShotRecord(tuple(r["tokens"]), tuple(float(a) for a in r["activations"]))
            for r in shot["records"]
        )
        if any(len(r.tokens) != len(r.activations) for r in records):
            raise ValueError(f"{name}.toml: a record's tokens and activations differ in length")
        examples.append(FewShotExample(shot["explanation"], records, tuple(shot["first_revealed"])))
    return AllAtOncePrompt(
        version=data["version"],
        system=data["system"],
        explanation_prefix=data["explanation_prefix"],
        end_of_prompt=data["end_of_prompt"],
        few_shot=tuple(examples),
    )


def _records(lines: Sequence[Sequence[str]]) -> str:
    """The reference's record block: each record's lines between <start> and <end>."""
    return "\n<start>\n" + "\n<end>\n<start>\n".join("\n".join(r) for r in lines) + "\n<end>\n"


def _example_lines(example: FewShotExample) -> list[list[str]]:
    """Values 0-10 by the largest relu(activation) over the example's records, "unknown"
    before each record's first revealed index."""
    max_activation = max(max(max(0.0, a) for a in r.activations) for r in example.records)
    lines = []
    for record, first in zip(example.records, example.first_revealed, strict=True):
        values = normalise_for_prompt(record.activations, max_activation)
        lines.append(
            [
                f"{token}\t{UNKNOWN if index < first else value}"
                for index, (token, value) in enumerate(zip(record.tokens, values, strict=True))
            ]
        )
    return lines


def simulation_prompt(
    template: AllAtOncePrompt, explanation: str, tokens: Sequence[str]
) -> tuple[str, int]:
    """The prompt for one window, and the offset of its record's "<start>"."""
    prefix = template.explanation_prefix
    parts = [template.system]
    for number, example in enumerate(template.few_shot, start=1):
        parts.append(
            f"\n\nNeuron {number}\nExplanation of neuron {number} behavior: {prefix} "
            f"{example.explanation}"
        )
        parts.append(f"\nActivations: {_records(_example_lines(example))}\n")
    number = len(template.few_shot) + 1
    parts.append(
        f"\n\nNeuron {number}\nExplanation of neuron {number} behavior: {prefix} "
        f"{explanation.strip()}{template.end_of_prompt}"
    )
    parts.append("\nActivations: ")
    start = len("".join(parts)) + 1
    parts.append(_records([[f"{token}\t{UNKNOWN}" for token in tokens]]))
    return "".join(parts), start


def simulation_request(model: str, explanation: str, tokens: Sequence[str]) -> CompletionRequest:
    prompt, _ = simulation_prompt(load_prompt(), explanation, tokens)
    return CompletionRequest(model=model, prompt=prompt, logprobs=TOP_LOGPROBS)


class WindowUnreadable(Exception):
    """The echoed tokens do not give one prediction per window token (recorded as failed)."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class Reading:
    """One window's predictions, and how many were 0 by the reference's two zero rules."""

    values: list[float]
    no_digit: int = 0
    folded: int = 0


def expected_value(alternatives: Sequence[tuple[str, float]] | None) -> float | None:
    """Over the tokens "0".."10" among the alternatives, renormalised; None with none."""
    probabilities = [
        (DIGITS[token], math.exp(logprob))
        for token, logprob in alternatives or []
        if token in DIGITS
    ]
    if not probabilities:
        return None
    total = sum(p for _, p in probabilities)
    return sum(value * (p / total) for value, p in probabilities)


def _piece(tokens: Sequence[PromptToken], index: int) -> tuple[str, int]:
    """The text of token `index`, merging the "bytes:\\xNN" tokens before it until they decode
    (the legacy API's form for tokens that end inside a character); and the index reached."""
    token = tokens[index].token
    if not token.startswith("bytes:"):
        return token, index
    data = b""
    while True:
        data = _byte_string(tokens[index].token) + data
        try:
            return data.decode("utf-8"), index
        except UnicodeDecodeError:
            index -= 1
            if index < 0 or not tokens[index].token.startswith("bytes:"):
                raise WindowUnreadable("byte tokens that do not decode", "") from None


def _byte_string(token: str) -> bytes:
    text, out = token[len("bytes:") :], bytearray()
    while text:
        if text.startswith("\\x") and len(text) >= 4:
            out.append(int(text[2:4], 16))
            text = text[4:]
        else:
            out.extend(text[0].encode())
            text = text[1:]
    return bytes(out)


def _tokens_covering(tokens: Sequence[PromptToken], last: int, token: str) -> int:
    """How many echoed tokens, ending at `last`, it takes to spell at least `token`."""
    merged, index = "", last
    while len(merged) < len(token):
        if index < 0:
            raise WindowUnreadable(f"{token!r} is not in the echoed prompt", "")
        piece, index = _piece(tokens, index)
        merged = piece + merged
        index -= 1
    if not merged.endswith(token):
        raise WindowUnreadable(f"the echoed tokens before a tab do not spell {token!r}", "")
    return last - index


def read_window(response: CompletionResponse, tokens: Sequence[str]) -> Reading:
    """One prediction per window token from the echoed prompt's logprobs (module docstring)."""
    echoed = response.tokens
    if not echoed:
        raise NoPromptLogprobs()
    offsets, offset = [], 0
    for item in echoed:
        offsets.append(offset)
        offset += len(item.token)
    scoring_start = "".join(t.token for t in echoed).rfind("<start>")
    positions = [
        i
        for i in range(2, len(echoed))
        if offsets[i] >= scoring_start
        and echoed[i].token == UNKNOWN
        and echoed[i - 1].token == "\t"
    ]
    # What a failure keeps: the echoed window's tokens, as the simulator's tokenizer split it.
    raw = "|".join(
        t.token for t, at in zip(echoed, offsets, strict=True) if at >= max(scoring_start, 0)
    )
    if scoring_start < 0 or len(positions) != len(tokens):
        raise WindowUnreadable(
            f"the echoed window has {len(positions)} tab-then-unknown positions for "
            f"{len(tokens)} tokens (the simulator's tokenizer merges a tab with its neighbour)",
            raw,
        )
    values: list[float] = []
    no_digit = folded = 0
    for position, token in zip(positions, tokens, strict=True):
        last = position - 2  # the window token's last echoed token, before the tab
        try:
            whole = echoed[last].token == token or _tokens_covering(echoed, last, token) > 1
        except WindowUnreadable as exc:
            raise WindowUnreadable(str(exc), raw) from None
        if not whole:
            if "\n" not in echoed[last].token:
                raise WindowUnreadable(f"token {len(values)} is misaligned: {token!r}", raw)
            folded += 1
            values.append(0.0)
            continue
        value = expected_value(echoed[position].top_logprobs)
        if value is None:
            no_digit += 1
            value = 0.0
        values.append(value)
    return Reading(values, no_digit, folded)


class NoPromptLogprobs(LLMFatal):
    """The endpoint echoed no prompt logprobs: every window would fail the same way."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "the endpoint returned no logprobs for the prompt it was asked to echo "
            f"(/v1/completions with echo{detail}; llama.cpp's server never does): {FIX}"
        )


class AllAtOnceSimulator(Simulator):
    """One `/v1/completions` call per window; a probe call first in every run (module)."""

    def __init__(self, client: CompletionClient, model: str) -> None:
        self.client = client
        self.producer_model = model
        self.name = f"{model}{NAME_SUFFIX}"
        self.prompt_version = load_prompt().version
        self.prediction = PredictionKind.EXPECTED_VALUE
        self._probed = False
        self._probe: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._predicted = self._no_digit = self._folded = 0

    async def simulate(
        self, explanation: str, windows: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        return (await self.simulation(explanation, windows)).values

    async def simulation(self, explanation: str, windows: Sequence[Sequence[str]]) -> Simulation:
        await self._check_endpoint()
        results = await asyncio.gather(*(self._window(explanation, w) for w in windows))
        failures = [r for r in results if isinstance(r, Failure)]
        if failures:
            raise SimulationFailed(failures)
        readings = [r for r in results if isinstance(r, Reading)]
        for reading in readings:
            self._predicted += len(reading.values)
            self._no_digit += reading.no_digit
            self._folded += reading.folded
        return Simulation([r.values for r in readings], self.prediction)

    async def _check_endpoint(self) -> None:
        """The run's probe, once, before any window is sent (other labels wait for it)."""
        if self._probed:
            return
        loop = asyncio.get_running_loop()
        if self._probe is None or self._probe[0] is not loop:
            self._probe = (loop, asyncio.Lock())
        async with self._probe[1]:
            if self._probed:
                return
            request = CompletionRequest(
                model=self.producer_model or "", prompt=PROBE_PROMPT, logprobs=TOP_LOGPROBS
            )
            try:
                response = await self.client.completion(request)
            except LLMCallError as exc:
                raise LLMFatal(
                    f"the endpoint refused an echo completion with logprobs={TOP_LOGPROBS} "
                    f"({exc}): {FIX}"
                ) from None
            echoed = response.tokens or []
            if not any(t.top_logprobs for t in echoed[1:]):
                raise NoPromptLogprobs()
            if "<start>" not in "".join(t.token for t in echoed):
                raise NoPromptLogprobs(": the logprobs are not the prompt's")
            self._probed = True

    async def _window(self, explanation: str, tokens: Sequence[str]) -> Reading | Failure:
        request = simulation_request(self.producer_model or "", explanation, tokens)
        try:
            response = await self.client.completion(request)
        except LLMCallError as exc:
            return Failure(str(exc), "", exc.cause)
        try:
            return read_window(response, tokens)
        except WindowUnreadable as exc:
            return Failure(str(exc), exc.raw)

    def run_notes(self) -> list[str]:
        zeros = []
        if self._no_digit:
            zeros.append(
                f"{self._no_digit:,} had no 0-10 token among their top {TOP_LOGPROBS} logprobs"
            )
        if self._folded:
            zeros.append(
                f"{self._folded:,} were joined to the line break before them by the "
                "simulator's tokenizer"
            )
        if not zeros:
            return []
        return [
            f"{self.name}: of {self._predicted:,} tokens predicted, {' and '.join(zeros)}; "
            "as in neuron-explainer, they were predicted 0"
        ]

    def dry_run(self, jobs: Iterable[Job]) -> DryRun:
        model = self.producer_model or ""
        return DryRun.of(
            (
                simulation_request(model, explanation, tokens)
                for explanation, windows in jobs
                for tokens in windows
            ),
            notes=(PROBE_NOTE,),
        )
