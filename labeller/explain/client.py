"""What explainers and simulators need from an LLM: one async call, and the errors it may raise.

They are handed a client that satisfies `ChatClient` (or `CompletionClient`, for the legacy
`/v1/completions` endpoint: the real one in `labeller.llm.client` does both, or another backend);
they never build one. `DryRun` is what they would send, counted unsent.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from labeller.errors import UserError
from labeller.records import ChatRequest, ChatResponse, CompletionRequest, CompletionResponse

CHARS_PER_TOKEN = 4


class ChatClient(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResponse: ...


class CompletionClient(Protocol):
    """The legacy `/v1/completions` endpoint (prompt in, text and per-token logprobs out), with
    the same retry and fatal rules as `ChatClient`."""

    async def completion(self, request: CompletionRequest) -> CompletionResponse: ...


class Cause(StrEnum):
    """Why one neuron's work failed, as the end-of-run summary groups it."""

    TIMEOUT = "timeout"
    RATE_LIMITED = "rate limited (HTTP 429)"
    SERVER_ERROR = "server error (HTTP 5xx)"
    CONNECTION = "connection error"
    MALFORMED = "malformed reply"
    REFUSED = "request refused (HTTP 4xx)"
    UNPARSEABLE = "unparseable reply"
    NO_WINDOWS = "no train windows"


class LLMCallError(Exception):
    """A request that failed for good: not retryable, or out of retries. One-line message.

    Only this neuron's work is lost: the service records it and goes on with the others.
    """

    def __init__(
        self,
        message: str,
        *,
        attempts: int,
        status: int | None = None,
        cause: Cause = Cause.REFUSED,
    ) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.status = status
        self.cause = cause


class LLMFatal(UserError):
    """A failure every other call would repeat (key refused, model unknown, endpoint
    unreachable): the run stops at once with this one line, which names the cause and the fix.

    Deliberately not an `LLMCallError`, so explainers and simulators, which record those per
    neuron, let it through.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
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
    run makes no LLM calls at all; `notes` are lines the run's plan must also say (a probe call
    before the others)."""

    offline: bool = False
    example: ChatRequest | CompletionRequest | None = None
    calls: int = 0
    tokens: int = 0
    reply_tokens: int = 0  # the requests' max_tokens summed: the most the replies can be
    notes: tuple[str, ...] = ()

    @classmethod
    def of(
        cls, requests: Iterable[ChatRequest | CompletionRequest], notes: tuple[str, ...] = ()
    ) -> DryRun:
        example: ChatRequest | CompletionRequest | None = None
        calls = tokens = reply_tokens = 0
        for request in requests:
            example = example or request
            calls += 1
            tokens += prompt_chars(request) // CHARS_PER_TOKEN
            reply_tokens += request.max_tokens or 0
        return cls(
            example=example, calls=calls, tokens=tokens, reply_tokens=reply_tokens, notes=notes
        )


def prompt_chars(request: ChatRequest | CompletionRequest) -> int:
    if isinstance(request, CompletionRequest):
        return len(request.prompt)
    return sum(len(m.content) for m in request.messages)
