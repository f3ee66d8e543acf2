"""What the explainer and simulator need from an LLM: one async call, and the errors it may
raise. They are handed a client that satisfies this (the real one in `labeller.llm.client`, or
another backend); they never build one."""

from __future__ import annotations

from typing import Protocol

from labeller.records import ChatRequest, ChatResponse


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
