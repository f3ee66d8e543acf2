"""How fast `labeller detect` scores every built-in detector on every neuron of a demo model.

Goal: all built-in detectors on all neurons of a demo model in under a minute. Runs the scoring
(`detect_neurons`, what the command calls, with --force) on a copy of the demo catalogue twice,
side by side: as shipped (each distinct window run through each detector once, reused across the
neurons that keep it) and with no reuse (every neuron's windows recomputed), and prints both
times, their ratio, and whether the goal is met.

    labeller demo --no-tui                      # builds db/demo.db once
    python benchmarks/detect_throughput.py      # demo-gelu-1l, all neurons
    python benchmarks/detect_throughput.py --model demo-solu-1l
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from labeller.catalogue import Catalogue
from labeller.detect.registry import builtins
from labeller.detect.service import CACHED_WINDOWS, detect_neurons

GOAL_S = 60.0


def timed(db: Path, model: str, cached_windows: int) -> tuple[float, int, int]:
    """Seconds to score every built-in on every neuron, the neurons and the scores written."""
    with Catalogue.open(db) as catalogue:
        refs = catalogue.neuron_refs(model, None, None)
        start = time.perf_counter()
        report = detect_neurons(
            catalogue, refs, builtins(), force=True, cached_windows=cached_windows
        )
        return time.perf_counter() - start, len(refs), report.written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("db") / "demo.db")
    parser.add_argument("--model", default="demo-gelu-1l")
    args = parser.parse_args()
    if not args.db.exists():
        raise SystemExit(f"{args.db} not found: run `labeller demo --no-tui` first")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "demo.db"
        shutil.copy(args.db, db)
        shipped, neurons, written = timed(db, args.model, CACHED_WINDOWS)
        naive, _, _ = timed(db, args.model, 0)
    print(
        f"{args.model}: {len(builtins())} built-in detectors x {neurons:,} neurons "
        f"({written:,} scores)"
    )
    print(f"  windows reused: {shipped:6.2f} s  ({neurons / shipped:,.0f} neurons/s)")
    print(f"  no reuse:       {naive:6.2f} s  ({neurons / naive:,.0f} neurons/s)")
    print(f"  reuse speed-up: {naive / shipped:.2f}x")
    verdict = "met" if shipped < GOAL_S else "NOT met"
    print(f"  goal (< {GOAL_S:.0f} s for all neurons): {verdict}")


if __name__ == "__main__":
    main()
