"""Async client for OpenAI-compatible chat completions: bounded, retried, cached, accounted.

Works with OpenAI, vLLM, Ollama, llama.cpp server and OpenRouter through the `openai` package.
It also speaks the legacy `/v1/completions` endpoint (`completion`), which the all-at-once
simulator needs for prompt logprobs (`echo`), under the same rules below.
The package's own retries are off (`max_retries=0`) so that one place decides: 429, 5xx, timeouts,
dropped connections and unparsable bodies are retried with exponential backoff and jitter, and a
Retry-After header wins (and pauses every request, since the limit is shared). A request keeps its
concurrency slot through its retries, so they are not queued behind every request not yet sent.
Every attempt also waits for the requests- and tokens-per-minute limits (`max_requests_per_minute`,
`max_tokens_per_minute`, and the provider's `x-ratelimit-*` headers): see `labeller.llm.ratelimit`.
Successful replies are cached by the full request, so a re-run never pays twice.

Failures that every other call would repeat raise `LLMFatal` at once (401, 403, 404) or when the
retries run out on an endpoint that cannot be reached; the run stops there with one line.

The API key is read from `OPENAI_API_KEY` here and kept out of every message this module makes.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import openai
from pydantic import ValidationError

from labeller.errors import UserError
from labeller.explain.client import Cause, LLMCallError, LLMFatal, LogprobsUnsupported
from labeller.llm.config import LLMConfig
from labeller.llm.ratelimit import RateLimiter, estimated_tokens, header_reset
from labeller.records import (
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
    PromptToken,
    TokenLogprob,
    TopLogprob,
)

log = logging.getLogger(__name__)

# The openai package refuses to start without a key; local servers (vLLM, Ollama, llama.cpp) do
# not need one.
NO_KEY = "not-needed"
# Never sleep longer than this on a server's say-so, whatever its Retry-After claims.
MAX_RETRY_AFTER_S = 300.0
# Error bodies end up in messages; keep them to one readable line.
MAX_DETAIL_CHARS = 200
# A server that has not accepted a connection in this time is not there (the per-request
# timeout may be minutes, for long generations).
CONNECT_TIMEOUT_S = 10.0

Request = ChatRequest | CompletionRequest
R = TypeVar("R", ChatResponse, CompletionResponse)


class ResponseCache(Protocol):
    """Where replies are kept between runs (the catalogue's llm_cache table satisfies it)."""

    def cached_response(self, key: str) -> str | None: ...

    def cache_response(self, key: str, request: str, response: str) -> None: ...


class _Retryable(Exception):
    """One failed attempt worth another try (internal)."""

    def __init__(
        self,
        detail: str,
        *,
        cause: Cause,
        status: int | None = None,
        retry_after: float | None = None,
        unreachable: bool = False,
    ):
        super().__init__(detail)
        self.cause = cause
        self.status = status
        self.retry_after = retry_after
        self.unreachable = unreachable  # no connection at all: fatal once the retries run out


@dataclass
class LLMStats:
    """What a run cost: `calls` are requests that went over HTTP, `retries` the extra attempts."""

    calls: int = 0
    retries: int = 0
    last_retry: str | None = None  # why the latest retry happened (for the progress bar)
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def canonical_request(request: Request, base_url: str) -> str:
    """The exact text the cache key hashes (and the cache row stores): request + endpoint.

    A completions request also names its path, so it can never share a key with a chat one."""
    document: dict[str, Any] = {
        "base_url": base_url.rstrip("/"),
        "request": request.model_dump(mode="json"),
    }
    if isinstance(request, CompletionRequest):
        document["path"] = "/completions"
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(request: Request, base_url: str) -> str:
    """sha256 of the canonical request and endpoint; the API key never takes part."""
    return hashlib.sha256(canonical_request(request, base_url).encode()).hexdigest()


def is_openai_host(base_url: str) -> bool:
    return (urlsplit(base_url).hostname or "").lower() == "api.openai.com"


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date), if present."""
    if headers is None:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, min(float(millis) / 1000, MAX_RETRY_AFTER_S))
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, min(seconds, MAX_RETRY_AFTER_S))


def _reply_json(body: str) -> Any:
    """The reply's JSON; `_Retryable` when it is not JSON, or when it is an error object sent
    with status 200 (some gateways, e.g. OpenRouter and proxies, report upstream failures so)."""
    try:
        data = json.loads(body)
    except ValueError:
        raise _Retryable(
            f"reply is not valid JSON ({len(body)} bytes)", cause=Cause.MALFORMED
        ) from None
    if isinstance(data, dict) and "choices" not in data and data.get("error"):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise _Retryable(
            f"reply carries an error: {_one_line(str(message))}", cause=Cause.SERVER_ERROR
        )
    return data


def parse_completion(body: str) -> tuple[str, list[TokenLogprob] | None, int, int, str | None]:
    """(text, logprobs, prompt tokens, completion tokens, model) from a reply body.

    Raises `_Retryable` for bodies that are not a chat completion: truncated or garbled replies
    happen on busy servers and usually come right on the next try.
    """
    data = _reply_json(body)
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise TypeError("content is not a string")
        logprobs = _parse_logprobs(choice.get("logprobs"))
        usage = data.get("usage") or {}
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        model = data.get("model")
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, ValidationError) as exc:
        raise _Retryable(
            f"reply is not a chat completion ({type(exc).__name__}: {exc})", cause=Cause.MALFORMED
        ) from None
    return (
        text,
        logprobs,
        prompt_tokens,
        completion_tokens,
        model if isinstance(model, str) else None,
    )


def _token_bytes(value: Any) -> list[int] | None:
    """OpenAI's per-token `bytes` (what aligns multi-byte tokens with the reply); None when the
    server sent none or something else."""
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return value
    return None


def _parse_logprobs(block: Any) -> list[TokenLogprob] | None:
    """`choice.logprobs.content` as records; None when the server sent none."""
    if not block or block.get("content") is None:
        return None
    return [
        TokenLogprob(
            str(item["token"]),
            float(item["logprob"]),
            [
                TopLogprob(str(top["token"]), float(top["logprob"]))
                for top in item.get("top_logprobs") or []
            ],
            _token_bytes(item.get("bytes")),
        )
        for item in block["content"]
    ]


def parse_text_completion(body: str) -> CompletionResponse:
    """A `/v1/completions` reply: its text and, when the server sent them, its tokens with their
    offsets and top logprobs (`choices[0].logprobs` with `tokens`, `text_offset` and
    `top_logprobs`, a list of {token: logprob} dicts, None for the first echoed token).

    Raises `_Retryable` for bodies that are not a completion, as `parse_completion` does.
    """
    data = _reply_json(body)
    try:
        choice = data["choices"][0]
        text = choice.get("text") or ""
        if not isinstance(text, str):
            raise TypeError("text is not a string")
        tokens = _parse_prompt_tokens(choice.get("logprobs"))
        usage = data.get("usage") or {}
        model = data.get("model")
        return CompletionResponse.model_construct(
            text=text,
            tokens=tokens,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=model if isinstance(model, str) else None,
            cached=False,
        )
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise _Retryable(
            f"reply is not a completion ({type(exc).__name__}: {exc})", cause=Cause.MALFORMED
        ) from None


def _parse_prompt_tokens(block: Any) -> list[PromptToken] | None:
    """Legacy-format logprobs as records; None when the server sent no tokens (llama.cpp's
    server sends none for the prompt)."""
    if not block or not block.get("tokens"):
        return None
    tokens = block["tokens"]
    offsets = block.get("text_offset") or []
    tops = block.get("top_logprobs") or []
    if len(offsets) != len(tokens):  # offsets as the sum of the token strings before
        offsets = [sum(len(str(t)) for t in tokens[:i]) for i in range(len(tokens))]
    return [
        PromptToken(
            str(token),
            int(offset),
            None
            if i >= len(tops) or tops[i] is None
            else [TopLogprob(str(k), float(v)) for k, v in tops[i].items()],
        )
        for i, (token, offset) in enumerate(zip(tokens, offsets, strict=True))
    ]


class LLMClient:
    """Sends chat requests with bounded concurrency; the explainer and simulator receive one.

    Use `async with LLMClient(config, cache) as client:` (or `await client.aclose()`) so that
    connections close. The HTTP client is bound to the event loop that first uses it; a later
    `asyncio.run` gets a fresh one.
    """

    def __init__(self, config: LLMConfig, cache: ResponseCache | None = None) -> None:
        key = os.environ.get("OPENAI_API_KEY") or None
        if key is None and is_openai_host(config.base_url):
            raise UserError("set OPENAI_API_KEY (or OPENAI_BASE_URL / base_url for a local server)")
        self.config = config
        self.cache = cache
        self.stats = LLMStats()
        self._key = key or NO_KEY
        self._secrets = [key] if key else []
        self._logprobs_supported = config.logprobs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._openai: openai.AsyncOpenAI | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self.limiter = self._new_limiter()
        self._fatal: LLMFatal | None = None  # once one is raised, no request of this run is sent

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self.config.base_url!r})"

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._openai is not None and self._loop is asyncio.get_running_loop():
            await self._openai.close()
        self._openai = None
        self._loop = None

    def _new_limiter(self) -> RateLimiter:
        return RateLimiter(self.config.max_requests_per_minute, self.config.max_tokens_per_minute)

    def _bind(self) -> tuple[openai.AsyncOpenAI, asyncio.Semaphore]:
        """The HTTP client and semaphore for the running loop (made on first use per loop)."""
        loop = asyncio.get_running_loop()
        if self._openai is None or self._semaphore is None or self._loop is not loop:
            self._loop = loop
            self.limiter = self._new_limiter()
            self._fatal = None
            self._semaphore = asyncio.Semaphore(self.config.max_concurrency)
            self._openai = openai.AsyncOpenAI(
                api_key=self._key,
                base_url=self.config.base_url,
                timeout=openai.Timeout(
                    self.config.timeout_s, connect=min(self.config.timeout_s, CONNECT_TIMEOUT_S)
                ),
                max_retries=0,
            )
        return self._openai, self._semaphore

    async def complete(self, request: ChatRequest) -> ChatResponse:
        """The reply to `request`: from the cache if it was ever answered, else over HTTP.

        Raises `LogprobsUnsupported` when the endpoint refuses logprobs, `LLMCallError` when the
        request fails for good, `LLMFatal` when no other request can succeed either.
        """
        if request.logprobs and self._logprobs_supported is False:
            key = request_key(request, self.config.base_url)
            if self._from_cache(key, ChatResponse) is None:
                raise LogprobsUnsupported(
                    f"{self.config.base_url} does not return logprobs", attempts=0, status=None
                )
        return await self._send(request, ChatResponse, lambda c: self._attempt(c, request))

    async def completion(self, request: CompletionRequest) -> CompletionResponse:
        """The `/v1/completions` reply to `request`, cached, retried and refused like
        `complete`'s (a 400 is an `LLMCallError`: the caller knows what it asked for)."""
        return await self._send(
            request, CompletionResponse, lambda c: self._text_attempt(c, request)
        )

    async def _send(
        self,
        request: Request,
        kind: type[R],
        attempt: Callable[[openai.AsyncOpenAI], Awaitable[R]],
    ) -> R:
        """From the cache, else `attempt` with its retries in one concurrency slot; cached."""
        key = request_key(request, self.config.base_url)
        cached = self._from_cache(key, kind)
        if cached is not None:
            self.stats.cache_hits += 1
            return cached
        client, semaphore = self._bind()
        async with semaphore:
            if self._fatal is not None:  # queued behind the request that hit it: the same answer
                raise self._fatal
            self.stats.calls += 1
            try:
                response = await self._attempts(request, lambda: attempt(client))
            except LLMFatal as exc:
                self._fatal = exc
                raise
        self.stats.prompt_tokens += response.prompt_tokens
        self.stats.completion_tokens += response.completion_tokens
        if self.cache is not None:
            self.cache.cache_response(
                key, canonical_request(request, self.config.base_url), response.model_dump_json()
            )
        return response

    async def _attempts(self, request: Request, attempt: Callable[[], Awaitable[R]]) -> R:
        """The first attempt and its retries, all in the one concurrency slot."""
        attempts = 0
        estimate = estimated_tokens(request)
        while True:
            attempts += 1
            try:
                await self.limiter.acquire(estimate)
                response = await attempt()
                self.limiter.settle(estimate, response.prompt_tokens + response.completion_tokens)
                return response
            except _Retryable as exc:
                detail = self._redact(str(exc))
                if attempts > self.config.max_retries:
                    self.stats.failures += 1
                    if exc.unreachable:
                        raise LLMFatal(
                            f"cannot reach the endpoint at {self.config.base_url} ({detail}, "
                            f"{attempts} attempts); check --base-url / OPENAI_BASE_URL and that "
                            "the server is running"
                        ) from None
                    raise LLMCallError(
                        f"{request.model} at {self.config.base_url}: {detail} "
                        f"(gave up after {attempts} attempts)",
                        attempts=attempts,
                        status=exc.status,
                        cause=exc.cause,
                    ) from None
                delay = self._delay(attempts - 1, exc.retry_after)
                if exc.retry_after is not None:
                    self.limiter.pause_until(self.limiter.clock() + delay)
                self.stats.retries += 1
                self.stats.last_retry = str(exc.cause)
                log.info("LLM attempt %d failed (%s); retrying in %.1fs", attempts, detail, delay)
                await asyncio.sleep(delay)
            except LLMCallError as exc:
                exc.attempts = attempts
                self.stats.failures += 1
                raise
            except LLMFatal:
                self.stats.failures += 1
                raise

    def _from_cache(self, key: str, kind: type[R]) -> R | None:
        if self.cache is None:
            return None
        stored = self.cache.cached_response(key)
        if stored is None:
            return None
        try:
            return kind.model_validate_json(stored).model_copy(update={"cached": True})
        except ValidationError:
            log.warning("ignoring an unreadable cached LLM reply (key %s)", key[:12])
            return None

    def _delay(self, retry: int, retry_after: float | None) -> float:
        """Retry-After when the server gave one, else capped exponential backoff with jitter."""
        if retry_after is not None:
            return retry_after
        backoff = min(self.config.backoff_cap_s, self.config.backoff_base_s * 2**retry)
        return backoff * random.uniform(0.5, 1.5)

    async def _attempt(self, client: openai.AsyncOpenAI, request: ChatRequest) -> ChatResponse:
        """One HTTP request; failures become `_Retryable` or `LLMCallError`."""
        kwargs: dict[str, Any] = {
            "model": request.model,
            "messages": [m.model_dump() for m in request.messages],
            "temperature": request.temperature,
        }
        if request.max_tokens is not None:
            kwargs["max_tokens"] = request.max_tokens
        if request.seed is not None:
            kwargs["seed"] = request.seed
        if request.logprobs:
            kwargs["logprobs"] = True
            if request.top_logprobs is not None:
                kwargs["top_logprobs"] = request.top_logprobs
        # The generic POST skips the SDK's per-call typed transform of every message, which
        # costs milliseconds of event-loop time per request at our prompt sizes.
        body = await self._post(client, "/chat/completions", kwargs, request)
        text, logprobs, prompt_tokens, completion_tokens, model = parse_completion(body)
        # Built without re-validating the logprobs that parse_completion just typed.
        return ChatResponse.model_construct(
            text=text,
            logprobs=logprobs,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            model=model,
            cached=False,
        )

    async def _text_attempt(
        self, client: openai.AsyncOpenAI, request: CompletionRequest
    ) -> CompletionResponse:
        """One `/v1/completions` request (prompt logprobs: `echo` with `logprobs`)."""
        body = {
            "model": request.model,
            "prompt": request.prompt,
            "max_tokens": request.max_tokens,
            "echo": request.echo,
            "logprobs": request.logprobs,
            "temperature": request.temperature,
        }
        return parse_text_completion(await self._post(client, "/completions", body, request))

    async def _post(
        self, client: openai.AsyncOpenAI, path: str, body: dict[str, Any], request: Request
    ) -> str:
        """The reply body of one POST; failures become `_Retryable` or `LLMCallError`."""
        try:
            raw = await client.post(path, cast_to=httpx.Response, body=body)
            self.limiter.observe(raw.headers)
            return raw.text
        except openai.APIStatusError as exc:
            self.limiter.observe(exc.response.headers)
            raise self._status_error(exc, request) from None
        except openai.APITimeoutError as exc:
            if _never_connected(exc.__cause__):
                raise _Retryable(
                    f"no connection within {CONNECT_TIMEOUT_S:g}s",
                    cause=Cause.CONNECTION,
                    unreachable=True,
                ) from None
            raise _Retryable(
                f"no reply within {self.config.timeout_s:g}s", cause=Cause.TIMEOUT
            ) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__
            reason = f"{type(cause).__name__}: {cause}" if cause else "connection failed"
            raise _Retryable(
                f"connection error ({_one_line(reason)})",
                cause=Cause.CONNECTION,
                # Refused or unresolvable, as opposed to a connection dropped mid-reply.
                unreachable=_never_connected(cause),
            ) from None
        except openai.OpenAIError as exc:
            raise LLMCallError(
                f"{request.model} at {self.config.base_url}: {self._redact(_one_line(str(exc)))}",
                attempts=1,
            ) from None

    def _status_error(self, exc: openai.APIStatusError, request: Request) -> Exception:
        status = exc.status_code
        detail = f"HTTP {status}: {self._redact(_one_line(_error_message(exc)))}"
        if status == 429 or status >= 500 or status == 408:
            retry_after = parse_retry_after(exc.response.headers)
            if retry_after is None and status == 429:  # when the exhausted limit resets
                retry_after = header_reset(exc.response.headers)
            return _Retryable(
                detail,
                cause={429: Cause.RATE_LIMITED, 408: Cause.TIMEOUT}.get(status, Cause.SERVER_ERROR),
                status=status,
                retry_after=retry_after,
            )
        endpoint = f"the endpoint at {self.config.base_url}"
        if status == 401:
            return LLMFatal(
                f"{endpoint} refused the API key ({detail}); check OPENAI_API_KEY", status=status
            )
        if status == 403:
            return LLMFatal(
                f"{endpoint} does not let this API key use {request.model} ({detail}); "
                "check OPENAI_API_KEY and the key's permissions",
                status=status,
            )
        if status == 404 and isinstance(request, CompletionRequest):
            return LLMFatal(
                f"{endpoint} has no completions model {request.model}, or no /v1/completions "
                f"({detail}); check the model name (--simulator) and --base-url, or use "
                "--simulator-mode chat",
                status=status,
            )
        if status == 404:
            return LLMFatal(
                f"{endpoint} has no model {request.model} ({detail}); check the model name "
                "(--explainer / --simulator) and --base-url",
                status=status,
            )
        where = f"{request.model} at {self.config.base_url}"
        if isinstance(request, ChatRequest) and request.logprobs and status in (400, 422):
            if "logprob" in detail.lower():
                self._logprobs_supported = False
            return LogprobsUnsupported(
                f"{where} refused a logprobs request ({detail})", attempts=1, status=status
            )
        return LLMCallError(f"{where}: {detail}", attempts=1, status=status)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def summary_line(self) -> str:
        """The line every run ends with: calls, retries, cache hits, failures, tokens, cost."""
        s = self.stats
        line = (
            f"LLM: {s.calls:,} calls, {s.retries:,} retries, {s.cache_hits:,} cache hits, "
            f"{s.failures:,} failed, {s.prompt_tokens:,} tokens in / {s.completion_tokens:,} out"
        )
        cost = self.cost()
        if cost is None:
            return f"{line}, cost unknown (set price_per_million_input/output)"
        return (
            f"{line}, cost ${cost:,.2f}"
            if cost >= 0.01 or cost == 0
            else f"{line}, cost ${cost:.4f}"
        )

    def cost(self) -> float | None:
        """USD spent over HTTP this run (cache hits are free); None without both prices."""
        price_in = self.config.price_per_million_input
        price_out = self.config.price_per_million_output
        if price_in is None or price_out is None:
            return None
        s = self.stats
        return (s.prompt_tokens * price_in + s.completion_tokens * price_out) / 1_000_000


def _error_message(exc: openai.APIStatusError) -> str:
    """The server's own words (OpenAI-style `error.message` or the body), shortened."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if message:
            return str(message)
    try:
        text = exc.response.text
    except Exception:  # a streamed or closed body: the status says enough
        text = ""
    return text or exc.message


def _never_connected(error: BaseException | None) -> bool:
    """Refused, unresolvable or no answer to connect, as opposed to dropped mid-reply. By class
    name, since the openai package may bundle its own copy of httpx (`httpx2`)."""
    names = {cls.__name__ for cls in type(error).__mro__} if error is not None else set()
    return bool(names & {"ConnectError", "ConnectTimeout"})


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"
