"""What explainers and simulators need from an LLM: one async call, and the errors it may raise.

They are handed a client that satisfies `ChatClient` (the real one in `labeller.llm.client`, or
another backend); they never build one. `DryRun` is what they would send, counted unsent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from labeller.records import ChatRequest, ChatResponse

CHARS_PER_TOKEN = 4


class ChatClient(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResponse: ...


class LLMCallError(Exception):
    """A request that failed for good: not retryable, or out of retries. One-line message."""

    def __init__(self, message: str, *, attempts: int, status: int | None = None) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status


class LogprobsUnsupported(LLMCallError):
    """The endpoint refused a logprobs request; the simulator falls back to the reprint prompt."""


class ReplyError(Exception):
    """The LLM answered, but not in the form asked for (retried, then recorded as failed)."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw


@dataclass(frozen=True)
class DryRun:
    """What a run would send, without sending it: one example request, and the calls and prompt
    tokens (about 4 characters a token) it needs at most, without retries. `offline` says the
    run makes no LLM calls at all."""

    offline: bool = False
    example: ChatRequest | None = None
    calls: int = 0
    tokens: int = 0

    @classmethod
    def of(cls, requests: Iterable[ChatRequest]) -> DryRun:
        example: ChatRequest | None = None
        calls = tokens = 0
        for request in requests:
            example = example or request
            calls += 1
            tokens += sum(len(m.content) for m in request.messages) // CHARS_PER_TOKEN
        return cls(example=example, calls=calls, tokens=tokens)
