"""Requests and tokens per minute: the limiter on a fake clock, then the client against a real
local server that enforces the limits as a provider does (counted on the server's side)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply, format_duration

from labeller.llm.client import LLMClient
from labeller.llm.config import LLMConfig
from labeller.llm.ratelimit import (
    BURST_S,
    RateLimiter,
    estimated_tokens,
    header_reset,
    parse_duration,
    run_estimate,
)
from labeller.records import ChatMessage, ChatRequest, ChatResponse


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-ratelimit")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


class FakeClock:
    """A clock that only moves when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def limiter(clock: FakeClock, **limits: Any) -> RateLimiter:
    return RateLimiter(**limits, clock=clock, sleep=clock.sleep)


def spend(rl: RateLimiter, clock: FakeClock, costs: Sequence[int]) -> list[float]:
    """Acquire each cost from concurrent callers; the clock time at which each was granted."""
    granted: list[float] = []

    async def one(cost: int) -> None:
        await rl.acquire(cost)
        granted.append(clock())

    async def run() -> None:
        await asyncio.gather(*(one(c) for c in costs))

    asyncio.run(run())
    return granted


def most_in_window(times: Sequence[float], weights: Sequence[float], width: float) -> float:
    """The largest total weight of events within any `width` seconds."""
    events = sorted(zip(times, weights, strict=True))
    return max(sum(w for t, w in events if start <= t <= start + width) for start, _ in events)


# --- the limiter, on a fake clock ---------------------------------------------------------


def test_durations_in_openai_format() -> None:
    assert parse_duration("1s") == 1.0
    assert parse_duration("6m0s") == 360.0
    assert parse_duration("20ms") == pytest.approx(0.02)
    assert parse_duration("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration("0.5") == 0.5
    assert parse_duration("soon") is None
    assert parse_duration("5s later") is None
    assert parse_duration(None) is None
    for seconds in (0.02, 1.5, 360.0):  # the fake server writes what the client reads
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, rel=0.01)


def test_tokens_per_minute_hold_in_every_window() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=6_000)  # 100 tokens/s, bursts of 100
    granted = spend(rl, clock, [30] * 50)
    rate, burst = 100, 100 * BURST_S
    for width in (0.5, 1.0, 5.0):
        assert most_in_window(granted, [30] * 50, width) <= rate * width + burst
    # 1,500 tokens: the first 100 at once, the rest at 100 a second, and no slower.
    assert max(granted) == pytest.approx((1_500 - burst) / rate, abs=0.31)


def test_requests_per_minute_and_tokens_together() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=120, tokens_per_minute=60_000)  # 2 req/s binds
    granted = spend(rl, clock, [10] * 20)
    assert most_in_window(granted, [1] * 20, 2.0) <= 2 * 2.0 + 2 * BURST_S
    assert max(granted) == pytest.approx((20 - 2) / 2, abs=0.01)


def test_a_request_over_the_bucket_waits_for_a_full_one_and_leaves_debt() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=6_000)
    granted = spend(rl, clock, [250, 10])
    assert granted[0] == 0.0
    assert granted[1] == pytest.approx(1.6)  # 150 in debt, then 10: 1.6 s at 100/s


def test_usage_corrects_the_estimate() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=6_000)
    spend(rl, clock, [100])
    rl.settle(100, 20)  # the reply used 20: 80 come back
    assert spend(rl, clock, [80]) == [0.0]
    rl.settle(80, 180)  # it used 100 more than estimated: a second's debt
    assert spend(rl, clock, [1]) == [pytest.approx(1.01)]


def test_estimate_is_prompt_chars_over_4_plus_max_tokens() -> None:
    request = ChatRequest(
        model="m", messages=[ChatMessage(role="user", content="x" * 400)], max_tokens=50
    )
    assert estimated_tokens(request) == 150
    assert estimated_tokens(request.model_copy(update={"max_tokens": None})) == 100


def test_remaining_headers_lower_the_bucket() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=6_000)
    rl.observe({"x-ratelimit-remaining-tokens": "10", "x-ratelimit-remaining-requests": "99"})
    assert spend(rl, clock, [50]) == [pytest.approx(0.4)]
    rl.observe({"x-ratelimit-remaining-tokens": "5000"})  # never raises it above its own view
    assert spend(rl, clock, [100]) == [pytest.approx(1.4)]


def test_limits_are_learned_from_headers_when_not_configured() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    rl.observe(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "1s",
        }
    )
    assert rl.limit("requests") == 60 and rl.limit("tokens") is None
    assert spend(rl, clock, [10, 10]) == [pytest.approx(1.0), pytest.approx(2.0)]


def test_nothing_remaining_without_a_limit_pauses_until_the_reset() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    rl.observe({"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "250ms"})
    assert spend(rl, clock, [10]) == [pytest.approx(0.25)]


def test_a_429_without_retry_after_waits_for_the_exhausted_reset() -> None:
    headers = {
        "x-ratelimit-remaining-requests": "40",
        "x-ratelimit-reset-requests": "20ms",
        "x-ratelimit-remaining-tokens": "0",
        "x-ratelimit-reset-tokens": "6m0s",
    }
    assert header_reset(headers) == 300.0  # capped
    headers["x-ratelimit-reset-tokens"] = "1.5s"
    assert header_reset(headers) == 1.5
    assert header_reset({"x-ratelimit-reset-requests": "2s"}) == 2.0
    assert header_reset({}) is None


def test_run_estimate_line() -> None:
    line = run_estimate(
        6_500,
        3_500_000,
        600_000,
        requests_per_minute=None,
        tokens_per_minute=150_000,
        price_per_million_input=0.15,
        price_per_million_output=0.60,
    )
    assert line == (
        "6,500 calls, 4.1 M tokens (3.5 M prompt + at most 0.6 M reply), "
        "about 27 min at 150,000 tokens/min, cost $0.89"
    )
    line = run_estimate(
        6_500,
        3_500_000,
        0,
        requests_per_minute=500,
        tokens_per_minute=1_000_000,
        price_per_million_input=None,
        price_per_million_output=None,
    )
    assert line == "6,500 calls, 3.5 M tokens, about 13 min at 500 requests/min"
    line = run_estimate(
        3,
        900,
        0,
        requests_per_minute=None,
        tokens_per_minute=None,
        price_per_million_input=None,
        price_per_million_output=None,
    )
    assert "time not estimated" in line


# --- the client against a rate-limited server ---------------------------------------------


def config_for(server: FakeOpenAI, **overrides: Any) -> LLMConfig:
    values: dict[str, Any] = {
        "base_url": server.base_url,
        "timeout_s": 5.0,
        "max_retries": 5,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
        "max_concurrency": 16,
    }
    values.update(overrides)
    return LLMConfig(**values)


def chat(i: int, chars: int = 400, max_tokens: int | None = 20) -> ChatRequest:
    content = f"{i:04d}" + "x" * (chars - 4)
    return ChatRequest(
        model="test-model",
        messages=[ChatMessage(role="user", content=content)],
        max_tokens=max_tokens,
    )


def complete(config: LLMConfig, requests: Sequence[ChatRequest]) -> tuple[LLMClient, list[Any]]:
    async def run() -> tuple[LLMClient, list[Any]]:
        async with LLMClient(config) as client:
            results = await asyncio.gather(
                *(client.complete(r) for r in requests), return_exceptions=True
            )
        return client, results

    return asyncio.run(run())


def test_a_run_stays_under_the_tokens_per_minute_limit() -> None:
    tpm = 60_000  # 1,000 tokens a second
    # The server's bucket holds 3 s, the client's 1 s: the slack absorbs scheduling jitter.
    with FakeOpenAI(tokens_per_minute=tpm, burst_s=3) as server:
        client, results = complete(
            config_for(server, max_tokens_per_minute=tpm), [chat(i) for i in range(40)]
        )
    assert all(isinstance(r, ChatResponse) for r in results)
    assert server.limited == 0 and client.stats.retries == 0
    times = [t for t, _ in server.accepted]
    tokens = [n for _, n in server.accepted]
    rate = tpm / 60
    cost = max(tokens) + 20
    for width in (0.5, 1.0):
        # What the client's bucket allows (a burst plus the rate), with half a second of slack.
        assert most_in_window(times, tokens, width) <= rate * (width + BURST_S + 0.5) + cost
    # It did wait: everything past the first burst came at the limit, no faster (unlimited, all
    # 40 arrive within ~0.1 s). Half a second of slack: on a loaded machine the server stamps
    # the first arrivals late, which shortens the span it sees (a CI run fell 0.17 s short).
    assert max(times) - min(times) >= (sum(tokens) - rate * (BURST_S + 0.5) - 2 * cost) / rate


def test_a_run_stays_under_the_requests_per_minute_limit() -> None:
    rpm = 1_200  # 20 a second
    with FakeOpenAI(requests_per_minute=rpm, burst_s=3) as server:
        start = time.monotonic()
        _client, results = complete(
            config_for(server, max_requests_per_minute=rpm), [chat(i, 40) for i in range(50)]
        )
        elapsed = time.monotonic() - start
    assert all(isinstance(r, ChatResponse) for r in results)
    assert server.limited == 0
    times = [t for t, _ in server.accepted]
    assert most_in_window(times, [1] * len(times), 0.5) <= 20 * (0.5 + BURST_S + 0.5)
    # Unlimited, the 50 would all be answered within ~0.1 s; limited, the 30 past the bucket
    # take 1.5 s. Timed by the client: the server's stamps are no lower bound, since a loaded
    # machine stamps the first arrivals late (a CI run saw them span 0.95 s).
    assert elapsed >= (50 - 20 * BURST_S) / 20


def test_without_limits_the_server_429s_and_retry_after_paces_the_run() -> None:
    tpm = 60_000
    with FakeOpenAI(tokens_per_minute=tpm, burst_s=1) as server:
        client, results = complete(config_for(server, max_retries=20), [chat(i) for i in range(20)])
    assert all(isinstance(r, ChatResponse) for r in results)
    assert server.limited > 0 and client.stats.retries == server.limited
    assert sum(n for _, n in server.accepted) == sum(
        r.prompt_tokens + r.completion_tokens for r in results
    )


def test_retry_after_ms_delays_the_retry(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(status=429, headers={"retry-after-ms": "300"})
    _client, [response] = complete(config_for(fake_openai), [chat(0)])
    assert isinstance(response, ChatResponse)
    first, retry = fake_openai.arrivals
    assert retry - first >= 0.3  # the backoff alone would have waited ~10 ms


def test_a_429_with_only_reset_headers_delays_the_retry(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(
        status=429,
        headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "300ms"},
    )
    _client, [response] = complete(config_for(fake_openai), [chat(0)])
    assert isinstance(response, ChatResponse)
    first, retry = fake_openai.arrivals
    assert retry - first >= 0.3


def test_nothing_remaining_on_a_success_holds_the_next_request(fake_openai: FakeOpenAI) -> None:
    exhausted = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "300ms"}
    replies = iter([Reply(headers=exhausted), Reply()])
    fake_openai.responder = lambda request: next(replies)

    async def run() -> None:
        async with LLMClient(config_for(fake_openai)) as client:
            await client.complete(chat(0))
            await client.complete(chat(1))

    asyncio.run(run())
    first, second = fake_openai.arrivals
    assert second - first >= 0.3
    assert fake_openai.limited == 0 and time.monotonic() >= second
