"""LLM client throughput against a local OpenAI-compatible server that adds latency to each call.

Simulates explaining and scoring N neurons: per neuron one "explain" request, then one "score"
request (logprobs) that quotes the explanation, all neurons at once through one client with
bounded concurrency. Prints achieved vs ideal time (calls x latency / concurrency) and the ratio,
then re-runs with the same response cache (a temporary catalogue) and prints how many HTTP calls
the server saw: a re-run must make none. Calls are counted by the server, which runs in its own
process so its threads do not share the client's interpreter.

    python benchmarks/llm_throughput.py                      # 500 neurons, 200 ms, concurrency 32

Exits non-zero if the ratio is under --min-ratio or the re-run made any call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from labeller.catalogue import Catalogue
from labeller.llm.client import LLMClient
from labeller.llm.config import LLMConfig
from labeller.records import ChatMessage, ChatRequest, ChatResponse

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = ROOT / "tests" / "llm" / "fake_openai.py"


def explain_request(layer: int, neuron: int) -> ChatRequest:
    records = "\n".join(f"tok{i}\t{(neuron * 7 + i) % 11}" for i in range(64))
    prompt = f"Neuron {layer}.{neuron}\n<start>\n{records}\n<end>\nExplanation of the neuron:"
    return ChatRequest(
        model="explainer",
        messages=[ChatMessage(role="user", content=prompt)],
        temperature=1.0,
        max_tokens=60,
    )


def score_request(layer: int, neuron: int, explanation: str) -> ChatRequest:
    tokens = "\n".join(f"tok{i}\tunknown" for i in range(64))
    prompt = f"Neuron {layer}.{neuron}: {explanation}\n<start>\n{tokens}\n<end>"
    return ChatRequest(
        model="simulator",
        messages=[ChatMessage(role="user", content=prompt)],
        logprobs=True,
        top_logprobs=15,
        max_tokens=1,
    )


class TimedCache:
    """The catalogue's cache, timed: its writes run on the event loop and show in throughput."""

    def __init__(self, catalogue: Catalogue) -> None:
        self.catalogue = catalogue
        self.seconds = 0.0
        self.writes = 0

    def cached_response(self, key: str) -> str | None:
        start = time.perf_counter()
        try:
            return self.catalogue.cached_response(key)
        finally:
            self.seconds += time.perf_counter() - start

    def cache_response(self, key: str, request: str, response: str) -> None:
        start = time.perf_counter()
        try:
            self.catalogue.cache_response(key, request, response)
        finally:
            self.seconds += time.perf_counter() - start
            self.writes += 1


async def explain_and_score(client: LLMClient, neuron: int) -> ChatResponse:
    explanation = await client.complete(explain_request(0, neuron))
    return await client.complete(score_request(0, neuron, explanation.text))


async def run_all(config: LLMConfig, cache: TimedCache, neurons: int) -> tuple[float, LLMClient]:
    async with LLMClient(config, cache) as client:
        start = time.perf_counter()
        await asyncio.gather(*(explain_and_score(client, n) for n in range(neurons)))
        return time.perf_counter() - start, client


def server_calls(base_url: str) -> int:
    stats_url = base_url.removesuffix("/v1") + "/_fake/stats"
    with urllib.request.urlopen(stats_url, timeout=10) as response:
        return int(json.load(response)["calls"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added per call")
    parser.add_argument("--min-ratio", type=float, default=0.8)
    args = parser.parse_args()

    server = subprocess.Popen(
        [sys.executable, str(FAKE_SERVER), "--port", "0", "--latency", str(args.latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().split()[-1]
        os.environ.setdefault("OPENAI_API_KEY", "benchmark-key-not-secret")
        config = LLMConfig(base_url=base_url, max_concurrency=args.concurrency, timeout_s=30)
        with (
            tempfile.TemporaryDirectory() as tmp,
            Catalogue.open(Path(tmp) / "c.db", create=True) as catalogue,
        ):
            cache = TimedCache(catalogue)
            elapsed, client = asyncio.run(run_all(config, cache, args.neurons))
            first_calls = server_calls(base_url)
            ideal = first_calls * args.latency / args.concurrency
            ratio = ideal / elapsed
            print(
                f"first run: {args.neurons} neurons, {first_calls:,} HTTP calls at concurrency "
                f"{args.concurrency} with {args.latency * 1000:.0f} ms latency: "
                f"{elapsed:.2f} s achieved vs {ideal:.2f} s ideal -> {ratio:.1%} of ideal "
                f"throughput ({first_calls / elapsed:.1f} calls/s)"
            )
            print(f"  {client.summary_line()}")
            print(
                f"  response cache: {cache.writes:,} writes, {cache.seconds:.2f} s of the event "
                f"loop in the catalogue ({cache.seconds / max(cache.writes, 1) * 1000:.2f} ms each)"
            )
            elapsed, client = asyncio.run(run_all(config, TimedCache(catalogue), args.neurons))
            rerun_calls = server_calls(base_url) - first_calls
            print(f"re-run: {rerun_calls} HTTP calls seen by the server in {elapsed:.2f} s")
            print(f"  {client.summary_line()}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    expected = 2 * args.neurons
    ok = ratio >= args.min_ratio and rerun_calls == 0 and first_calls == expected
    print(
        "PASS" if ok else f"FAIL (need >= {args.min_ratio:.0%}, 0 re-run calls, {expected} calls)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
