"""What the explainer and simulator need from an LLM: one async call. They are handed a client
that satisfies this (the real one in `labeller.llm.client`, or another backend); they never
build one."""

from __future__ import annotations

from typing import Protocol

from labeller.records import ChatRequest, ChatResponse


class ChatClient(Protocol):
    async def complete(self, request: ChatRequest) -> ChatResponse: ...


class ReplyError(Exception):
    """The LLM answered, but not in the form asked for (retried, then recorded as failed)."""

    def __init__(self, message: str, raw: str) -> None:
        super().__init__(message)
        self.raw = raw
