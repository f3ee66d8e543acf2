"""LLM explainer: train-split top windows in the Bills et al. format -> one-sentence labels."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass

from labeller.explain.client import ChatClient, ReplyError
from labeller.explain.prompts import activation_records, explainer_messages, load_template
from labeller.records import ChatRequest

PREFIX = re.compile(
    r"^\s*(explanation[^:]*:\s*)?(the main thing this neuron does is find)\s*", re.I
)
MAX_LENGTH = 400


@dataclass(frozen=True)
class Candidate:
    """One sample of best-of-K: a label, or the raw reply of a failed attempt."""

    sample: int
    text: str | None
    raw: str
    error: str | None
    attempts: int


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


def explainer_request(
    model: str, windows: Sequence[tuple[Sequence[str], Sequence[float]]], temperature: float
) -> ChatRequest:
    template = load_template("explainer")
    return ChatRequest(
        model=model,
        messages=explainer_messages(template, activation_records(windows)),
        temperature=temperature,
        max_tokens=100,
    )


async def explain(
    client: ChatClient,
    model: str,
    windows: Sequence[tuple[Sequence[str], Sequence[float]]],
    *,
    candidates: int,
    temperature: float,
    max_attempts: int = 3,
) -> list[Candidate]:
    """K samples at once; an unparseable reply is retried with a fresh sample, then kept as
    a failed candidate with its raw reply (never as a label)."""
    base = explainer_request(model, windows, temperature)

    async def sample(index: int) -> Candidate:
        raw, error = "", ""
        for attempt in range(max_attempts):
            request = base.model_copy(update={"n_sample": index, "attempt": attempt})
            raw = (await client.complete(request)).text
            try:
                return Candidate(index, parse_explanation(raw), raw, None, attempt + 1)
            except ReplyError as exc:
                error = str(exc)
        return Candidate(index, None, raw, error, max_attempts)

    return list(await asyncio.gather(*(sample(i) for i in range(candidates))))
