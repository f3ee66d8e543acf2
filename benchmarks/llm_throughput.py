"""Explain and score N neurons through labeller's own services against a local
OpenAI-compatible server that adds latency to every call.

A demo model is scanned into a temporary catalogue; then `explain_neurons` (one explainer call
per neuron) and `score_neurons` (one simulator call, with logprobs, per held-out window of each
label) run through one LLM client with bounded concurrency. Prints achieved vs ideal time
(calls x latency / concurrency) and the ratio, then runs both stages again with --force on the
same catalogue and prints how many HTTP calls the server saw: a re-run must make none. Calls are
counted by the server, which runs in its own process so its threads do not share the client's
interpreter.

Then, at a real rate limit: a second server enforces a tokens-per-minute limit as a provider does
(a token bucket holding --burst-s seconds of it; a request it cannot pay is answered 429 with
retry-after-ms and x-ratelimit-* headers), set so the first run's tokens take about
--limited-seconds at it. Both stages run again (--force, no cache) with `max_tokens_per_minute` at
that limit, and the tokens the server accepted per minute are reported as a share of the limit.

    python benchmarks/llm_throughput.py              # 500 neurons, 200 ms latency, concurrency 32

Exits non-zero if the ratio is under --min-ratio, the re-run made any call, or the rate-limited
run reached under --min-share of its limit.
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
from typing import Any

from labeller.catalogue import Catalogue, NeuronRef
from labeller.explain.explainer import LLMExplainer
from labeller.explain.service import explain_neurons, score_neurons
from labeller.explain.simulator import LLMSimulator
from labeller.llm.client import LLMClient
from labeller.llm.config import LLMConfig
from labeller.model.loading import load_model
from labeller.records import ScanParams
from labeller.scan.runner import run_scan

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = ROOT / "tests" / "llm" / "fake_openai.py"
MODEL = "fake-model"


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


async def explain_and_score(
    catalogue: Catalogue, refs: list[NeuronRef], config: LLMConfig, force: bool, cached: bool = True
) -> tuple[float, LLMClient]:
    async with LLMClient(config, TimedCache(catalogue) if cached else None) as client:
        start = time.perf_counter()
        await explain_neurons(catalogue, refs, LLMExplainer(client, MODEL), force=force)
        await score_neurons(catalogue, refs, LLMSimulator(client, MODEL), force=force)
        return time.perf_counter() - start, client


def scanned_catalogue(path: Path, neurons: int) -> tuple[Catalogue, list[NeuronRef]]:
    model = load_model("demo-gelu-1l", device="cpu")
    params = ScanParams(
        model="demo-gelu-1l",
        dataset="demo",
        layers=[0],
        tokens=30_000,
        ctx=64,
        top_k=20,
        random=20,
        seed=0,
        histogram_bins=64,
    )
    catalogue = Catalogue.open(path, create=True)
    run_scan(catalogue, model, params, batch_size=32)
    return catalogue, catalogue.neuron_refs("demo-gelu-1l", [0], list(range(neurons)))


def server_stats(base_url: str) -> dict[str, Any]:
    stats_url = base_url.removesuffix("/v1") + "/_fake/stats"
    with urllib.request.urlopen(stats_url, timeout=10) as response:
        return dict(json.load(response))


def server_calls(base_url: str) -> int:
    return int(server_stats(base_url)["calls"])


def start_server(*flags: str) -> tuple[subprocess.Popen[str], str]:
    server = subprocess.Popen(
        [sys.executable, str(FAKE_SERVER), "--port", "0", "--responder", "neuron", *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().split()[-1]


def stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    server.wait(timeout=10)


def rate_limited(
    catalogue: Catalogue,
    refs: list[NeuronRef],
    tokens: int,
    args: argparse.Namespace,
) -> float:
    """Both stages again against a server limiting tokens per minute; the share of the limit."""
    tpm = max(1000, round(tokens * 60 / args.limited_seconds))
    flags = ("--latency", str(args.latency), "--tpm", str(tpm), "--burst-s", str(args.burst_s))
    server, base_url = start_server(*flags)
    try:
        config = LLMConfig(
            base_url=base_url,
            max_concurrency=args.concurrency,
            timeout_s=30,
            max_retries=10,
            max_tokens_per_minute=tpm,
        )
        elapsed, client = asyncio.run(explain_and_score(catalogue, refs, config, True, False))
        stats = server_stats(base_url)
    finally:
        stop(server)
    accepted = int(stats["accepted_tokens"])
    per_minute = accepted / elapsed * 60
    share = per_minute / tpm
    print(
        f"rate-limited run: {tpm:,} tokens/min limit (server bucket {args.burst_s:g} s), "
        f"{stats['calls']:,} HTTP calls, {stats['limited']:,} answered 429, {accepted:,} tokens "
        f"accepted in {elapsed:.1f} s -> {per_minute:,.0f} tokens/min = {share:.1%} of the limit"
    )
    print(f"  {client.summary_line()}; waited on the limiter {client.limiter.waited_s:.1f} s")
    return share


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neurons", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds added per call")
    parser.add_argument("--min-ratio", type=float, default=0.8)
    parser.add_argument(
        "--limited-seconds",
        type=float,
        default=60.0,
        help="length of the rate-limited run: its limit is the first run's tokens over this "
        "(0 skips it)",
    )
    parser.add_argument("--burst-s", type=float, default=2.0, help="the limiting server's bucket")
    parser.add_argument("--min-share", type=float, default=0.9)
    args = parser.parse_args()

    share = None
    server, base_url = start_server("--latency", str(args.latency))
    try:
        os.environ.setdefault("OPENAI_API_KEY", "benchmark-key-not-secret")
        config = LLMConfig(base_url=base_url, max_concurrency=args.concurrency, timeout_s=30)
        with tempfile.TemporaryDirectory() as tmp:
            catalogue, refs = scanned_catalogue(Path(tmp) / "c.db", args.neurons)
            with catalogue:
                elapsed, client = asyncio.run(explain_and_score(catalogue, refs, config, False))
                summary = client.summary_line()
                tokens = client.stats.prompt_tokens + client.stats.completion_tokens
                first_calls = server_calls(base_url)
                ideal = first_calls * args.latency / args.concurrency
                ratio = ideal / elapsed
                print(
                    f"first run: explain + score {len(refs)} neurons, {first_calls:,} HTTP calls "
                    f"at concurrency {args.concurrency} with {args.latency * 1000:.0f} ms "
                    f"latency: {elapsed:.2f} s achieved vs {ideal:.2f} s ideal -> {ratio:.1%} of "
                    f"ideal throughput ({first_calls / elapsed:.1f} calls/s)"
                )
                print(f"  {summary}")
                elapsed, client = asyncio.run(explain_and_score(catalogue, refs, config, True))
                summary = client.summary_line()
                rerun_calls = server_calls(base_url) - first_calls
                print(
                    f"re-run (--force): {rerun_calls} HTTP calls seen by the server in "
                    f"{elapsed:.2f} s"
                )
                print(f"  {summary}")
                stop(server)
                if args.limited_seconds > 0:
                    share = rate_limited(catalogue, refs, tokens, args)
    finally:
        stop(server)
    ok = ratio >= args.min_ratio and rerun_calls == 0
    ok = ok and (share is None or share >= args.min_share)
    print(
        "PASS"
        if ok
        else f"FAIL (need >= {args.min_ratio:.0%}, 0 re-run calls and >= {args.min_share:.0%} "
        "of the rate limit)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
