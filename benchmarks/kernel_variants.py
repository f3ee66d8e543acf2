"""Builds of the scan's compiled kernels side by side, in one process.

Each given copy of `labeller/scan/kernels.c` (the source with one change) is built and loaded,
and a scanner per build updates its statistics from the same batches of a model's activations,
the builds taking turns batch by batch (in alternating order), so the machine's drift falls on
every build alike: on a shared machine, whole processes a minute apart differ by more than most
kernel changes. Prints each build's median time of a batch's kernel call (the `update_layers`
call, Python included), and checks that every build kept the same histograms, moments, top
windows and band samples as the first. Each build says its BLOCK (neurons a task), which the
Python side sizes its arrays by; the builds come before the model loads, so a source that does
not build stops the run at once.

    sed 's/^#define BLOCK .*/#define BLOCK 128/' labeller/scan/kernels.c > /tmp/block128.c
    python benchmarks/kernel_variants.py --model demo-gelu-1l labeller/scan/kernels.c \\
        /tmp/block128.c
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from labeller.corpus import iter_documents, iter_windows
from labeller.model.activations import keep_freed_memory
from labeller.model.loading import load_model
from labeller.records import ScanParams
from labeller.scan import kernels
from labeller.scan.runner import Scanner


def built(source: Path, folder: Path) -> ctypes.CDLL:
    """`source` compiled with the scan's own compiler and flags, and loaded."""
    target = folder / f"{len(list(folder.iterdir()))}-{source.stem}.so"
    original = kernels.SOURCE
    kernels.SOURCE = source
    try:
        kernels._build(target)
    except kernels.KernelsUnavailable as error:
        raise SystemExit(f"error: {error}") from None
    finally:
        kernels.SOURCE = original
    try:
        return kernels._loaded(target)
    except AttributeError:  # a C file, but not the scan's kernels
        raise SystemExit(
            f"error: {source} has no scan_layers and block_neurons: give copies of kernels.c"
        ) from None


UPDATE_LAYERS = kernels.update_layers


@contextmanager
def using(library: ctypes.CDLL, calls: list[float]) -> Iterator[None]:
    """The scan's kernel calls go to `library`; each call's seconds are appended to `calls`."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return UPDATE_LAYERS(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - start)

    original_library = kernels._library
    kernels._library = lambda: library  # type: ignore[assignment]
    kernels.update_layers = timed
    try:
        yield
    finally:
        kernels._library = original_library
        kernels.update_layers = UPDATE_LAYERS


def kept(state: object, name: str = "") -> Iterator[tuple[str, object]]:
    """Everything a scanner's layers keep (what a checkpoint holds), by name."""
    if isinstance(state, dict):
        for key, value in state.items():
            yield from kept(value, f"{name} {key}".strip())
    else:
        yield name, state


def same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and bool(
                ((a == b) | (a.isnan() & b.isnan()) if a.is_floating_point() else a == b).all()
            )
        )
    return a == b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path, help="copies of kernels.c to compare")
    parser.add_argument("--model", default="demo-gelu-1l")
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--skip", type=int, default=30, help="first batches left out (top-k fill)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if not 0 <= args.skip < args.batches:
        parser.error("--skip must be at least 0 and less than --batches")
    with tempfile.TemporaryDirectory() as folder:
        libraries = [built(source, Path(folder)) for source in args.sources]
        torch.set_num_threads(os.cpu_count() or 1)  # as a CPU scan runs
        keep_freed_memory()
        model = load_model(args.model, "cpu")
        windows = list(
            itertools.islice(
                iter_windows(iter_documents(args.dataset), model.encode, 64),
                args.batches * args.batch_size,
            )
        )
        batches = [
            windows[i : i + args.batch_size] for i in range(0, len(windows), args.batch_size)
        ]
        params = ScanParams(
            model=args.model, dataset=args.dataset, layers=list(range(model.n_layers)), ctx=64
        )
        scanners = [Scanner(model, params) for _ in libraries]
        calls: list[list[float]] = [[] for _ in libraries]
        order = list(range(len(libraries)))
        for i, batch in enumerate(batches):
            for b in order if i % 2 == 0 else order[::-1]:
                with using(libraries[b], calls[b] if i >= args.skip else []):
                    scanners[b].process(batch)
        blocks = [library.block_neurons() for library in libraries]
    print(
        f"{args.model}: {len(batches) - args.skip} batches of {args.batch_size} x 64 tokens "
        f"each build, taking turns ({torch.get_num_threads()} threads)"
    )
    for source, block, times in zip(args.sources, blocks, calls, strict=True):
        low, median, high = (q * 1e3 for q in statistics.quantiles(times))
        print(
            f"  {source} (BLOCK {block}): median {median:.2f} ms a call, "
            f"quartiles {low:.2f}-{high:.2f} ms"
        )
    first = dict(kept({layer: s.state() for layer, s in scanners[0].layers.items()}))
    for source, scanner in zip(args.sources[1:], scanners[1:], strict=True):
        for name, value in kept({layer: s.state() for layer, s in scanner.layers.items()}):
            if not same(value, first[name]):
                raise SystemExit(f"{source} kept a different layer {name} from {args.sources[0]}")
    print("every build kept the same histograms, moments, top windows and band samples")


if __name__ == "__main__":
    main()
