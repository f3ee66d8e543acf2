"""Explain and score N neurons through labeller's own services against a local
OpenAI-compatible server that adds latency to every call.

A demo model is scanned into a temporary catalogue; then `explain_neurons` (one explainer call
per neuron) and `score_neurons` (one simulator call, with logprobs, per held-out window of each
label) run through one LLM client with bounded concurrency. Prints achieved vs ideal time
(calls x latency / concurrency) and the ratio, then runs both stages again with --force on the
same catalogue and prints how many HTTP calls the server saw: a re-run must make none. Calls are
counted by the server, which runs in its own process so its threads do not share the client's
interpreter.

    python benchmarks/llm_throughput.py              # 500 neurons, 200 ms latency, concurrency 32

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

from labeller.catalogue import Catalogue, NeuronRef
from labeller.explain.service import explain_neurons, score_neurons
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
    catalogue: Catalogue, refs: list[NeuronRef], config: LLMConfig, force: bool
) -> tuple[float, str]:
    async with LLMClient(config, TimedCache(catalogue)) as client:
        start = time.perf_counter()
        await explain_neurons(catalogue, refs, explainer=MODEL, client=client, force=force)
        await score_neurons(catalogue, refs, simulator=MODEL, client=client, force=force)
        return time.perf_counter() - start, client.summary_line()


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
        [
            sys.executable,
            str(FAKE_SERVER),
            "--port",
            "0",
            "--latency",
            str(args.latency),
            "--responder",
            "neuron",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().split()[-1]
        os.environ.setdefault("OPENAI_API_KEY", "benchmark-key-not-secret")
        config = LLMConfig(base_url=base_url, max_concurrency=args.concurrency, timeout_s=30)
        with tempfile.TemporaryDirectory() as tmp:
            catalogue, refs = scanned_catalogue(Path(tmp) / "c.db", args.neurons)
            with catalogue:
                elapsed, summary = asyncio.run(explain_and_score(catalogue, refs, config, False))
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
                elapsed, summary = asyncio.run(explain_and_score(catalogue, refs, config, True))
                rerun_calls = server_calls(base_url) - first_calls
                print(
                    f"re-run (--force): {rerun_calls} HTTP calls seen by the server in "
                    f"{elapsed:.2f} s"
                )
                print(f"  {summary}")
    finally:
        server.terminate()
        server.wait(timeout=10)
    ok = ratio >= args.min_ratio and rerun_calls == 0
    print("PASS" if ok else f"FAIL (need >= {args.min_ratio:.0%} and 0 re-run calls)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
