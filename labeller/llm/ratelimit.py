"""Requests and tokens per minute: one limiter shared by every call of an `LLMClient`.

A provider's limits are per minute, not only per connection, so the client spends from two token
buckets before each attempt (first tries and retries alike, since the provider counts both):

- `max_requests_per_minute`: one per attempt.
- `max_tokens_per_minute`: the prompt's characters / 4 (`CHARS_PER_TOKEN`, a cheap estimate that
  needs no tokenizer) plus the request's `max_tokens` (its reply can be no longer, and OpenAI
  counts it against the limit up front). When the reply comes, its `usage` (prompt + completion
  tokens) replaces the estimate: the difference goes back to the bucket, or is taken from it.
  A failed attempt keeps its estimate spent (the provider may have counted it).

Each bucket refills continuously at limit / 60 per second and holds at most `BURST_S` seconds of
it, so a run starts at once but never sends more than about a second's worth in a burst: providers
enforce "per minute" over shorter windows too. A request bigger than the bucket waits for a full
bucket and leaves it in debt, which the following requests wait out, so the long-run rate holds.
Waiters are served first come, first served.

Rate-limit headers, when the provider sends them, correct this view (`observe`):
`x-ratelimit-limit-requests` / `-tokens` set the limit the config left open,
`x-ratelimit-remaining-requests` / `-tokens` lower a bucket that believes it holds more, and,
with no limit known, remaining 0 pauses every request until `x-ratelimit-reset-requests` /
`-tokens` (durations such as "1s", "6m0s", "20ms"). A 429's `retry-after-ms` / `Retry-After`
pauses every request (`pause_until`); without them, the reset of the exhausted limit does.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labeller.explain.client import CHARS_PER_TOKEN, prompt_chars
from labeller.records import ChatRequest, CompletionRequest

# The most a bucket holds, in seconds of its rate (and so the largest burst).
BURST_S = 1.0
# Never pause longer than this on a header's say-so.
MAX_PAUSE_S = 300.0
KINDS = ("requests", "tokens")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Seconds from OpenAI's reset durations ("1s", "6m0s", "20ms", "1h2m3.5s") or a bare
    number of seconds; None for anything else."""
    if value is None:
        return None
    text = value.strip().lower()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    return sum(float(n) * scale[u] for n, u in parts)


def estimated_tokens(request: ChatRequest | CompletionRequest) -> int:
    """What an attempt is counted as before its reply: prompt characters / 4, plus the reply's
    `max_tokens` when the request sets one."""
    return prompt_chars(request) // CHARS_PER_TOKEN + (request.max_tokens or 0)


def _number(headers: Mapping[str, Any], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def header_reset(headers: Mapping[str, Any] | None) -> float | None:
    """On a 429 without Retry-After: seconds until the exhausted limit resets (the longest of
    those with nothing remaining; of all given when none says which), capped."""
    if headers is None:
        return None
    resets = {kind: parse_duration(headers.get(f"x-ratelimit-reset-{kind}")) for kind in KINDS}
    exhausted = [
        reset
        for kind, reset in resets.items()
        if reset is not None and _number(headers, f"x-ratelimit-remaining-{kind}") == 0
    ]
    given: list[float] = exhausted or [r for r in resets.values() if r is not None]
    return min(max(given), MAX_PAUSE_S) if given else None


@dataclass
class Bucket:
    """`level` units available now, refilled at `rate` a second up to `capacity`; may go
    negative (debt) when a request costs more than the bucket holds."""

    rate: float
    capacity: float
    level: float
    updated: float

    @classmethod
    def per_minute(cls, limit: float, now: float, burst_s: float = BURST_S) -> Bucket:
        rate = limit / 60.0
        capacity = max(rate * burst_s, 1.0)
        return cls(rate=rate, capacity=capacity, level=capacity, updated=now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def wait(self, cost: float, now: float) -> float:
        """Seconds until `cost` may be taken (a cost over capacity waits for a full bucket)."""
        self.refill(now)
        need = min(cost, self.capacity)
        if self.level >= need - 1e-6:  # float dust is no reason to wait
            return 0.0
        return (need - self.level) / self.rate


class RateLimiter:
    """Both buckets (either may be absent: no limit) and the shared pause; see the module.

    `clock` and `sleep` are injectable so tests can run it on a fake clock."""

    def __init__(
        self,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        burst_s: float = BURST_S,
    ) -> None:
        self.clock = clock
        self.sleep = sleep
        self.burst_s = burst_s
        now = clock()
        self.buckets: dict[str, Bucket | None] = {
            "requests": None
            if requests_per_minute is None
            else Bucket.per_minute(requests_per_minute, now, burst_s),
            "tokens": None
            if tokens_per_minute is None
            else Bucket.per_minute(tokens_per_minute, now, burst_s),
        }
        self.paused_until = 0.0
        self.waited_s = 0.0  # time spent waiting on the limits or a pause, all callers together
        self._lock: asyncio.Lock | None = None

    def limit(self, kind: str) -> float | None:
        """The per-minute limit in force for "requests" or "tokens" (configured or learned)."""
        bucket = self.buckets[kind]
        return None if bucket is None else bucket.rate * 60.0

    def pause_until(self, when: float) -> None:
        """No attempt starts before `when` (clock time), whoever asks."""
        self.paused_until = max(self.paused_until, when)

    async def acquire(self, tokens: int) -> None:
        """Wait for the pause to end and for one request and `tokens` tokens, then spend them."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            while True:
                now = self.clock()
                wait = self.paused_until - now
                for kind, cost in (("requests", 1), ("tokens", tokens)):
                    bucket = self.buckets[kind]
                    if bucket is not None:
                        wait = max(wait, bucket.wait(cost, now))
                if wait <= 0:
                    break
                wait = max(wait, 1e-3)  # a wait the clock can see
                self.waited_s += wait
                await self.sleep(wait)
            for kind, cost in (("requests", 1), ("tokens", tokens)):
                bucket = self.buckets[kind]
                if bucket is not None:
                    bucket.level -= cost

    def settle(self, estimated: int, used: int) -> None:
        """The reply's usage replaces the estimate spent (`used` 0: the server reported none)."""
        bucket = self.buckets["tokens"]
        if bucket is None or used <= 0:
            return
        bucket.refill(self.clock())
        bucket.level = min(bucket.capacity, bucket.level + estimated - used)

    def observe(self, headers: Mapping[str, Any] | None) -> None:
        """Correct the buckets from a reply's rate-limit headers (see the module)."""
        if headers is None:
            return
        now = self.clock()
        for kind in KINDS:
            limit = _number(headers, f"x-ratelimit-limit-{kind}")
            remaining = _number(headers, f"x-ratelimit-remaining-{kind}")
            bucket = self.buckets[kind]
            if bucket is None and limit:
                bucket = Bucket.per_minute(limit, now, self.burst_s)
                self.buckets[kind] = bucket
            if remaining is None:
                continue
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)
            elif remaining == 0:
                reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset is not None:
                    self.pause_until(now + min(reset, MAX_PAUSE_S))


def run_estimate(
    calls: int,
    prompt_tokens: int,
    reply_tokens: int,
    *,
    requests_per_minute: float | None,
    tokens_per_minute: float | None,
    price_per_million_input: float | None,
    price_per_million_output: float | None,
) -> str:
    """The dry run's line: calls, tokens, the time the limits allow at best, and the cost.

    Replies are counted at their `max_tokens` (an upper bound), as the limiter first counts
    them, so the time and cost lean high."""
    tokens = prompt_tokens + reply_tokens
    line = f"{calls:,} calls, {_millions(tokens)} tokens"
    if reply_tokens:
        line += f" ({_millions(prompt_tokens)} prompt + at most {_millions(reply_tokens)} reply)"
    minutes = []
    if requests_per_minute:
        minutes.append((calls / requests_per_minute, f"{requests_per_minute:,.0f} requests/min"))
    if tokens_per_minute:
        minutes.append((tokens / tokens_per_minute, f"{tokens_per_minute:,.0f} tokens/min"))
    if minutes:
        duration, limit = max(minutes)
        line += f", about {_duration(duration)} at {limit}"
    else:
        line += ", time not estimated (no max_requests_per_minute or max_tokens_per_minute)"
    if price_per_million_input is not None and price_per_million_output is not None:
        cost = prompt_tokens * price_per_million_input + reply_tokens * price_per_million_output
        line += f", cost ${cost / 1_000_000:,.2f}"
    return line


def _millions(tokens: int) -> str:
    if tokens >= 100_000:
        return f"{tokens / 1_000_000:.1f} M"
    return f"{tokens:,}"


def _duration(minutes: float) -> str:
    if minutes < 1:
        return f"{max(1, round(minutes * 60))} s"
    if minutes < 120:
        return f"{round(minutes)} min"
    return f"{minutes / 60:.1f} h"
