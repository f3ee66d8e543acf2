"""The LLM client against a real local OpenAI-compatible server (HTTP on 127.0.0.1, no mocks)."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAI, Reply

from labeller.catalogue import Catalogue
from labeller.errors import UserError
from labeller.explain.client import Cause, LLMFatal
from labeller.llm.client import (
    LLMCallError,
    LLMClient,
    LogprobsUnsupported,
    parse_retry_after,
    request_key,
)
from labeller.llm.config import LLMConfig, load_llm_config
from labeller.records import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    CompletionRequest,
    CompletionResponse,
)

KEY = "sk-test-SENTINEL-4f9c2b7d1e"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    return KEY


def config_for(server: FakeOpenAI, **overrides: Any) -> LLMConfig:
    """Short timeouts and tiny backoffs, so failure tests take milliseconds."""
    values: dict[str, Any] = {
        "base_url": server.base_url,
        "timeout_s": 2.0,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_cap_s": 0.05,
    }
    values.update(overrides)
    return LLMConfig(**values)


def chat(content: str = "hello", **fields: Any) -> ChatRequest:
    return ChatRequest(
        model="test-model", messages=[ChatMessage(role="user", content=content)], **fields
    )


def complete(config: LLMConfig, *requests: ChatRequest, cache: Any = None) -> Any:
    """Run requests concurrently through one client; returns (client, results or exceptions)."""

    async def run() -> tuple[LLMClient, list[Any]]:
        async with LLMClient(config, cache) as client:
            results = await asyncio.gather(
                *(client.complete(r) for r in requests), return_exceptions=True
            )
        return client, results

    return asyncio.run(run())


def test_normal_reply(fake_openai: FakeOpenAI) -> None:
    fake_openai.responder = lambda request: Reply(content="a neuron for Python keywords")
    request = chat("explain this", temperature=0.7, max_tokens=50, seed=3)
    client, [response] = complete(config_for(fake_openai), request)
    assert isinstance(response, ChatResponse)
    assert response.text == "a neuron for Python keywords"
    assert response.logprobs is None
    assert response.cached is False
    assert response.model == "test-model"
    assert response.prompt_tokens == len("explain this") // 4
    assert response.completion_tokens > 0
    [sent] = fake_openai.requests
    assert sent["model"] == "test-model"
    assert sent["messages"] == [{"role": "user", "content": "explain this"}]
    assert (sent["temperature"], sent["max_tokens"], sent["seed"]) == (0.7, 50, 3)
    assert "logprobs" not in sent
    assert fake_openai.authorizations == [f"Bearer {KEY}"]
    assert client.stats.calls == 1
    assert client.stats.prompt_tokens == response.prompt_tokens


def test_concurrency_is_bounded_and_used(fake_openai: FakeOpenAI) -> None:
    fake_openai.latency_s = 0.1
    requests = [chat(f"prompt {i}") for i in range(12)]
    start = time.perf_counter()
    _client, results = complete(config_for(fake_openai, max_concurrency=4), *requests)
    elapsed = time.perf_counter() - start
    assert all(isinstance(r, ChatResponse) for r in results)
    assert fake_openai.calls == 12
    assert 1 < fake_openai.max_in_flight <= 4
    assert elapsed >= 3 * 0.1  # 12 calls, 4 at a time, 0.1 s each
    assert elapsed < 12 * 0.1  # and not one at a time


def test_429_retry_after_is_honoured(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(status=429, headers={"Retry-After": "1"}, error="slow down")
    start = time.perf_counter()
    client, [response] = complete(config_for(fake_openai), chat())
    elapsed = time.perf_counter() - start
    assert isinstance(response, ChatResponse)
    assert elapsed >= 1.0  # the backoff alone would have waited ~10 ms
    assert fake_openai.calls == 2
    assert (client.stats.calls, client.stats.retries, client.stats.failures) == (1, 1, 0)


def test_retry_after_formats() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_a_while = parse_retry_after({"retry-after": formatdate(time.time() + 30, usegmt=True)})
    assert in_a_while is not None and 25 <= in_a_while <= 31
    assert parse_retry_after({"retry-after": "100000"}) == 300.0
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_500_is_retried(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(status=500)
    fake_openai.fail_next(status=503)
    client, [response] = complete(config_for(fake_openai), chat())
    assert isinstance(response, ChatResponse)
    assert fake_openai.calls == 3
    assert client.stats.retries == 2


def test_timeout_is_retried(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(delay=3.0)
    start = time.perf_counter()
    client, [response] = complete(config_for(fake_openai, timeout_s=0.3), chat())
    assert isinstance(response, ChatResponse)
    assert time.perf_counter() - start < 2.0
    assert fake_openai.calls == 2
    assert client.stats.retries == 1


@pytest.mark.parametrize(
    "failure",
    [
        Reply(raw=b'{"choices": ['),  # truncated JSON, complete HTTP message
        Reply(raw=b"<html>Bad Gateway</html>"),
        Reply(raw=b'{"object": "chat.completion"}'),  # no choices
        Reply(content="x" * 200, truncate=40),  # connection dropped mid-body
        Reply(raw=b'{"error": {"message": "upstream overloaded", "code": 502}}'),
    ],
    ids=["truncated-json", "not-json", "no-choices", "cut-connection", "error-with-200"],
)
def test_malformed_replies_are_retried(fake_openai: FakeOpenAI, failure: Reply) -> None:
    fake_openai.fail_next(failure)
    _client, [response] = complete(config_for(fake_openai), chat())
    assert isinstance(response, ChatResponse)
    assert response.text.startswith("fake reply")
    assert fake_openai.calls == 2


def test_exhausted_retries_raise_with_attempts(fake_openai: FakeOpenAI) -> None:
    fake_openai.responder = lambda request: Reply(status=500, error="overloaded")
    client, [error] = complete(config_for(fake_openai, max_retries=2), chat())
    assert isinstance(error, LLMCallError)
    assert error.attempts == 3
    assert error.status == 500
    assert fake_openai.calls == 3
    assert "\n" not in str(error)
    assert "HTTP 500" in str(error) and "3 attempts" in str(error)
    assert error.cause is Cause.SERVER_ERROR
    assert (client.stats.calls, client.stats.retries, client.stats.failures) == (1, 2, 1)


def test_exhausted_timeouts_say_timeout(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_always(delay=1.0)
    _client, [error] = complete(config_for(fake_openai, timeout_s=0.1, max_retries=1), chat())
    assert type(error) is LLMCallError and error.cause is Cause.TIMEOUT


@pytest.mark.parametrize("status", [400, 422])
def test_client_errors_are_not_retried(fake_openai: FakeOpenAI, status: int) -> None:
    fake_openai.fail_next(status=status, error="context too long")
    _client, [error] = complete(config_for(fake_openai), chat())
    assert type(error) is LLMCallError
    assert error.status == status and error.attempts == 1 and error.cause is Cause.REFUSED
    assert "context too long" in str(error)
    assert fake_openai.calls == 1


@pytest.mark.parametrize(
    ("status", "cause", "fix"),
    [
        (401, "refused the API key", "check OPENAI_API_KEY"),
        (403, "does not let this API key use test-model", "check OPENAI_API_KEY"),
        (404, "has no model test-model", "check the model name"),
    ],
)
def test_key_and_model_errors_are_fatal_at_once(
    fake_openai: FakeOpenAI, status: int, cause: str, fix: str
) -> None:
    fake_openai.fail_always(status=status, error="the server's words")
    _client, [error] = complete(config_for(fake_openai), chat())
    assert isinstance(error, LLMFatal) and isinstance(error, UserError)
    assert not isinstance(error, LLMCallError)  # explainers and simulators let it through
    assert error.status == status
    message = str(error)
    assert "\n" not in message
    assert f"the endpoint at {fake_openai.base_url} {cause}" in message
    assert f"HTTP {status}: the server's words" in message and fix in message
    assert fake_openai.calls == 1  # never retried


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_endpoint_is_fatal_after_the_retry_budget() -> None:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    config = LLMConfig(base_url=url, max_retries=2, backoff_base_s=0.01, backoff_cap_s=0.02)
    client, [error] = complete(config, chat())
    assert isinstance(error, LLMFatal)
    assert str(error).startswith(f"cannot reach the endpoint at {url} (connection error")
    assert "3 attempts" in str(error) and "check --base-url / OPENAI_BASE_URL" in str(error)
    assert (client.stats.retries, client.stats.last_retry) == (2, "connection error")


def test_a_request_keeps_its_slot_through_its_retries(fake_openai: FakeOpenAI) -> None:
    """Retries are not queued behind requests not yet sent (else, with an endpoint down, the
    first failure surfaces only after every queued request has had its first try)."""
    fake_openai.fail_next(status=500)
    fake_openai.fail_next(status=503)
    config = config_for(fake_openai, max_concurrency=1)
    _client, results = complete(config, chat("first"), chat("second"), chat("third"))
    assert all(isinstance(r, ChatResponse) for r in results)
    sent = [r["messages"][0]["content"] for r in fake_openai.requests]
    assert sent == ["first", "first", "first", "second", "third"]


def test_logprobs_are_requested_and_parsed(fake_openai: FakeOpenAI) -> None:
    scripted = [
        {"token": "3", "logprob": -0.2, "top_logprobs": [{"token": "3", "logprob": -0.2}]},
        {"token": "\t", "logprob": -1.5, "top_logprobs": []},  # misaligned tokens pass through
        {
            "token": "10",
            "logprob": -0.1,
            "top_logprobs": [{"token": "10", "logprob": -0.1}, {"token": "9", "logprob": -2.4}],
        },
    ]
    fake_openai.responder = lambda request: Reply(content="3\t10", logprobs=scripted)
    _client, [response] = complete(config_for(fake_openai), chat(logprobs=True, top_logprobs=2))
    [sent] = fake_openai.requests
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2
    assert response.logprobs is not None
    assert [t.token for t in response.logprobs] == ["3", "\t", "10"]
    assert response.logprobs[2].top_logprobs[1].token == "9"
    assert response.logprobs[2].top_logprobs[1].logprob == -2.4
    assert response.logprobs[1].top_logprobs == []


def test_logprobs_missing_from_reply_are_none() -> None:
    with FakeOpenAI(logprobs="ignore") as server:
        _client, [response] = complete(config_for(server), chat(logprobs=True, top_logprobs=5))
    assert isinstance(response, ChatResponse)
    assert response.logprobs is None


def test_400_on_logprobs_raises_unsupported_once() -> None:
    with FakeOpenAI(logprobs=False) as server:
        requests = [chat(logprobs=True, top_logprobs=5)]

        async def run() -> tuple[list[Any], LLMClient]:
            async with LLMClient(config_for(server)) as client:
                first = await asyncio.gather(client.complete(requests[0]), return_exceptions=True)
                again = await asyncio.gather(
                    client.complete(chat("other", logprobs=True)), return_exceptions=True
                )
                plain = await client.complete(chat("other"))
            return [*first, *again, plain], client

        (first, again, plain), _client = asyncio.run(run())
        assert isinstance(first, LogprobsUnsupported) and first.status == 400
        assert isinstance(again, LogprobsUnsupported) and again.attempts == 0
        assert isinstance(plain, ChatResponse)
        assert server.calls == 2  # the refused request and the plain one; none for `again`


def test_logprobs_off_in_config_makes_no_call(fake_openai: FakeOpenAI) -> None:
    _client, [error] = complete(config_for(fake_openai, logprobs=False), chat(logprobs=True))
    assert isinstance(error, LogprobsUnsupported)
    assert fake_openai.calls == 0


def test_cache_rerun_makes_no_calls(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = config_for(fake_openai)
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        _, [first] = complete(config, chat("same prompt", logprobs=True), cache=catalogue)
        client, [second] = complete(config, chat("same prompt", logprobs=True), cache=catalogue)
        assert fake_openai.calls == 1
        assert second.cached is True and first.cached is False
        assert second.model_copy(update={"cached": False}) == first
        assert (client.stats.calls, client.stats.cache_hits) == (0, 1)

        _, [other_sample] = complete(
            config, chat("same prompt", logprobs=True, n_sample=1), cache=catalogue
        )
        assert other_sample.cached is False
        assert fake_openai.calls == 2


def test_failures_are_not_cached(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    config = config_for(fake_openai, max_retries=0)
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        fake_openai.fail_next(status=500)
        _, [error] = complete(config, chat(), cache=catalogue)
        assert isinstance(error, LLMCallError)
        _, [response] = complete(config, chat(), cache=catalogue)
        assert isinstance(response, ChatResponse) and not response.cached
    assert fake_openai.calls == 2


def test_request_key_covers_request_and_endpoint() -> None:
    base = "http://127.0.0.1:1/v1"
    key = request_key(chat("a"), base)
    assert key == request_key(chat("a"), base + "/")
    assert (
        len(
            {
                key,
                request_key(chat("b"), base),
                request_key(chat("a", n_sample=1), base),
                request_key(chat("a", temperature=1.0), base),
                request_key(chat("a", logprobs=True), base),
                request_key(chat("a"), "http://127.0.0.1:2/v1"),
            }
        )
        == 6
    )


def test_summary_line(fake_openai: FakeOpenAI) -> None:
    fake_openai.responder = lambda request: Reply(
        content="ok", prompt_tokens=1_500_000, completion_tokens=100_000
    )
    fake_openai.fail_next(status=500)
    client, _ = complete(config_for(fake_openai), chat("a"), chat("b"))
    assert client.summary_line() == (
        "LLM: 2 calls, 1 retries, 0 cache hits, 0 failed, 3,000,000 tokens in / 200,000 out, "
        "cost unknown (set price_per_million_input/output)"
    )
    priced = config_for(fake_openai, price_per_million_input=0.15, price_per_million_output=0.65)
    client, _ = complete(priced, chat("c"))
    assert client.summary_line().endswith("1,500,000 tokens in / 100,000 out, cost $0.29")


def test_api_key_never_leaks(
    fake_openai: FakeOpenAI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config = config_for(fake_openai, max_retries=1)
    messages: list[str] = [repr(config), config.model_dump_json()]
    with Catalogue.open(tmp_path / "c.db", create=True) as catalogue:
        # A server that echoes the key back in its error messages, as some proxies do.
        failures = {
            0: Reply(status=500, error=f"upstream rejected {KEY}"),
            1: Reply(status=400, error=f"logprobs refused for {KEY}"),
            3: Reply(
                status=401, error=f"Incorrect API key provided: {KEY}"
            ),  # last: it ends the run
        }
        requests = [chat("a"), chat("b", logprobs=True), chat("c"), chat("d")]

        async def run() -> tuple[LLMClient, list[Any]]:
            results = []
            async with LLMClient(config, catalogue) as client:
                for index, request in enumerate(requests):
                    if index == 0:  # fails on both attempts
                        fake_openai.fail_next(failures[0])
                    if index in failures:
                        fake_openai.fail_next(failures[index])
                    try:
                        results.append(await client.complete(request))
                    except (LLMCallError, LLMFatal) as exc:
                        results.append(exc)
            return client, results

        client, results = asyncio.run(run())
        errors = [r for r in results if isinstance(r, Exception)]
        assert [type(e) for e in errors] == [LLMCallError, LogprobsUnsupported, LLMFatal]
        assert isinstance(results[2], ChatResponse)
        messages += [str(e) for e in errors] + [repr(e) for e in errors]
        messages += [client.summary_line(), repr(client)]
    messages += [record.getMessage() for record in caplog.records]
    assert any("***" in m for m in messages)  # the echoed keys were there, and redacted
    assert all(KEY not in m for m in messages)
    for path in tmp_path.iterdir():
        assert KEY.encode() not in path.read_bytes()
    assert all(auth == f"Bearer {KEY}" for auth in fake_openai.authorizations)


def test_key_required_for_openai_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UserError, match="set OPENAI_API_KEY"):
        LLMClient(LLMConfig())
    with FakeOpenAI() as server:
        _client, [response] = complete(config_for(server), chat())
        assert isinstance(response, ChatResponse)
        assert server.authorizations == ["Bearer not-needed"]


def test_client_survives_two_event_loops(fake_openai: FakeOpenAI) -> None:
    client = LLMClient(config_for(fake_openai))
    assert asyncio.run(client.complete(chat("a"))).text.startswith("fake reply")
    assert asyncio.run(client.complete(chat("b"))).text.startswith("fake reply")
    assert client.stats.calls == 2


def test_load_llm_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:11434/v1")
    assert LLMConfig().base_url == "http://localhost:11434/v1"
    path = tmp_path / "labeller.toml"
    path.write_text(
        '[llm]\nbase_url = "http://localhost:8000/v1"\nexplainer_model = "qwen"\n'
        "max_concurrency = 16\nprice_per_million_input = 0.5\n"
    )
    config = load_llm_config(path, explainer_model=None, simulator_model="llama", timeout_s=5)
    assert config.base_url == "http://localhost:8000/v1"
    assert config.explainer_model == "qwen"  # a None flag leaves the file's value
    assert config.simulator_model == "llama" and config.timeout_s == 5
    assert config.max_concurrency == 16 and config.price_per_million_input == 0.5
    assert load_llm_config(None).base_url == "http://localhost:11434/v1"

    path.write_text('[llm]\nexplainer_modle = "qwen"\n')
    with pytest.raises(UserError, match="explainer_modle"):
        load_llm_config(path)
    path.write_text(f'[llm]\napi_key = "{KEY}"\n')
    with pytest.raises(UserError, match="OPENAI_API_KEY") as info:
        load_llm_config(path)
    assert KEY not in str(info.value)
    path.write_text("[llm]\nmax_concurrency = 0\n")
    with pytest.raises(UserError, match="max_concurrency"):
        load_llm_config(path)
    with pytest.raises(UserError, match="does not exist"):
        load_llm_config(tmp_path / "missing.toml")


# --- /v1/completions (the all-at-once simulator's endpoint) --------------------------------------


def text_request(prompt: str = "<start>\n a\tunknown\n<end>\n") -> CompletionRequest:
    return CompletionRequest(model="test-model", prompt=prompt)


def completion(config: LLMConfig, *requests: CompletionRequest, cache: Any = None) -> Any:
    async def run() -> tuple[LLMClient, list[Any]]:
        async with LLMClient(config, cache) as client:
            results = await asyncio.gather(
                *(client.completion(r) for r in requests), return_exceptions=True
            )
        return client, results

    return asyncio.run(run())


def test_completion_echoes_the_prompt_with_its_logprobs(tmp_path: Path) -> None:
    with (
        FakeOpenAI(bos="<s>") as server,
        Catalogue.open(tmp_path / "c.db", create=True) as catalogue,
    ):
        _, [response] = completion(config_for(server), text_request(), cache=catalogue)
        client, [again] = completion(config_for(server), text_request(), cache=catalogue)
    (sent,) = server.requests
    assert sent == {
        "model": "test-model",
        "prompt": "<start>\n a\tunknown\n<end>\n",
        "max_tokens": 0,
        "echo": True,
        "logprobs": 15,
        "temperature": 0.0,
    }
    assert isinstance(response, CompletionResponse) and response.text == sent["prompt"]
    tokens = response.tokens
    assert tokens is not None and [t.token for t in tokens][:4] == ["<s>", "<", "start", ">"]
    assert tokens[0].top_logprobs is None  # nothing predicts the first token
    assert [t.offset for t in tokens][:3] == [0, 3, 4]
    unknown = next(t for t in tokens if t.token == "unknown")
    assert unknown.top_logprobs is not None
    assert {"0", "1", "unknown"} <= {top.token for top in unknown.top_logprobs}
    assert again == response.model_copy(update={"cached": True})  # cached as chat replies are
    assert (client.stats.calls, client.stats.cache_hits) == (0, 1)


def test_completion_without_prompt_logprobs_has_no_tokens() -> None:
    with FakeOpenAI(prompt_logprobs=False) as server:  # as llama.cpp's server answers
        _, [response] = completion(config_for(server), text_request())
    assert isinstance(response, CompletionResponse) and response.tokens is None


def test_completion_retries_and_fatal_errors_follow_the_chat_rules(fake_openai: FakeOpenAI) -> None:
    fake_openai.fail_next(status=429, headers={"Retry-After": "0"})
    fake_openai.fail_next(status=503)
    client, [response] = completion(config_for(fake_openai), text_request())
    assert isinstance(response, CompletionResponse) and client.stats.retries == 2

    fake_openai.reset()
    fake_openai.fail_next(status=400, error="echo is not supported")
    _, [error] = completion(config_for(fake_openai), text_request())
    assert type(error) is LLMCallError and error.status == 400  # the caller knows what it asked

    for status, words in [(401, "refused the API key"), (404, "no /v1/completions")]:
        fake_openai.reset()
        fake_openai.fail_always(status=status)
        _, [error] = completion(config_for(fake_openai), text_request())
        assert isinstance(error, LLMFatal) and words in str(error)
        assert fake_openai.calls == 1
    assert "--simulator-mode chat" in str(error)


def test_completion_and_chat_requests_never_share_a_cache_key() -> None:
    base = "http://127.0.0.1:1/v1"
    assert request_key(text_request("a"), base) != request_key(text_request("b"), base)
    assert request_key(text_request("a"), base) != request_key(chat("a"), base)
