"""Explainers and simulators by name, and the one LLM client they share.

"baseline" names the offline pair; any other name is an LLM model at the configured endpoint,
which simulates in one of the `SimulatorMode`s: labeller's chat prompt, or neuron-explainer's
all-at-once prompt on /v1/completions. Another kind (a detector) is one class and one entry here:
the service runs whatever it is handed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from labeller.errors import UserError
from labeller.explain.all_at_once import AllAtOnceSimulator
from labeller.explain.baseline import SOURCE, BaselineExplainer, BaselineSimulator
from labeller.explain.client import ChatClient, CompletionClient
from labeller.explain.explainer import Explainer, LLMExplainer
from labeller.explain.simulator import LLMSimulator, Simulator
from labeller.records import (
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    SimulatorMode,
)

if TYPE_CHECKING:
    from labeller.llm.client import LLMClient, LLMStats, ResponseCache
    from labeller.llm.config import LLMConfig

BASELINE = SOURCE

T = TypeVar("T")


class LLMUnavailable(UserError):
    """The LLM client could not be opened (no API key for the endpoint); says what to set."""


class Resolver:
    """Builds explainers and simulators by name and owns the LLM client the LLM ones share.

    `async with` (or `run`) opens the client only if something built needs it, reading the LLM
    settings and the API key the first time, and closes its connections after. Not opened, the
    resolver serves dry runs: nothing is read, nothing is sent.
    """

    def __init__(
        self, settings: Callable[[], LLMConfig], cache: ResponseCache | None = None
    ) -> None:
        self._settings = settings
        self._cache = cache
        self._needs_llm = False
        self._client: LLMClient | None = None

    def explainer(self, name: str, *, candidates: int = 1, temperature: float = 1.0) -> Explainer:
        """The offline baseline, or the LLM `name` sampling `candidates` labels per neuron."""
        if name == BASELINE:
            return BaselineExplainer()
        return LLMExplainer(
            self.chat_client(), name, candidates=candidates, temperature=temperature
        )

    def simulator(
        self, name: str, *, logprobs: bool = True, mode: SimulatorMode = SimulatorMode.CHAT
    ) -> Simulator:
        """The offline baseline, or the LLM `name` in `mode`: chat (asking for logprobs unless
        told not to), or all-at-once (which reads nothing but logprobs)."""
        if name == BASELINE:
            if mode is not SimulatorMode.CHAT:
                raise UserError(f"--simulator-mode {mode} needs an LLM model, not the baseline")
            return BaselineSimulator()
        if mode is SimulatorMode.ALL_AT_ONCE:
            if not logprobs:
                raise UserError(
                    f"--simulator-mode {mode} reads only logprobs: drop --no-logprobs, or use "
                    "--simulator-mode chat"
                )
            return AllAtOnceSimulator(self.completion_client(), name)
        return LLMSimulator(self.chat_client(), name, logprobs=logprobs)

    def chat_client(self) -> ChatClient:
        """The shared LLM client, also for LLM work that is neither explaining nor simulating
        (suggested tests); it sends once the resolver is open."""
        self._needs_llm = True
        return self

    def completion_client(self) -> CompletionClient:
        """The shared LLM client's `/v1/completions` side; it sends once the resolver is open."""
        self._needs_llm = True
        return self

    async def complete(self, request: ChatRequest) -> ChatResponse:
        if self._client is None:
            raise RuntimeError("LLM requests are sent inside `async with` the resolver")
        return await self._client.complete(request)

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        if self._client is None:
            raise RuntimeError("LLM requests are sent inside `async with` the resolver")
        return await self._client.completion(request)

    async def __aenter__(self) -> Resolver:
        if self._needs_llm and self._client is None:
            from labeller.llm.client import LLMClient

            config = self._settings()
            try:
                self._client = LLMClient(config, cache=self._cache)
            except UserError as exc:
                raise LLMUnavailable(str(exc)) from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.aclose()

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()` in a new event loop with the LLM client open around it: how synchronous
        callers (commands, TUI worker threads) run a stage."""

        async def main() -> T:
            async with self:
                return await work()

        return asyncio.run(main())

    def stats(self) -> LLMStats | None:
        """The LLM client's running counters (a progress bar polls the retries); None before
        the client opens or when the run needs no LLM."""
        return None if self._client is None else self._client.stats

    def summary_line(self) -> str | None:
        """The LLM client's calls, tokens and cost; None when the run used no LLM."""
        return None if self._client is None else self._client.summary_line()
